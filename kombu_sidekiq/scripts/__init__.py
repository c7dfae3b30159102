"""Lua scripts, one per ``.lua`` file beside this module, loaded by name.

>>> "ZREM" in source("promote")
True
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def source(name: str) -> str:
    """The text of ``<name>.lua``."""
    return resources.files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
