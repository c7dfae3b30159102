"""Skip-or-fail policy for missing external programs."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def missing_or_fail(what: str) -> NoReturn:
    """Skip locally, but FAIL in CI: interop tests must never skip silently there."""
    hint = "run `make deps` (scripts/install-system-deps.sh)"
    if in_ci():
        pytest.fail(f"{what} is required in CI (CI=true) but missing; {hint}", pytrace=False)
    pytest.skip(f"{what} not available; {hint}")
