"""Comparing decoded values exactly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kombu_sidekiq import activejob as aj


def typed(value: Any) -> Any:
    """``value`` with every type spelled out, so 1 != 1.0 != True and Decimal != float != str."""
    if isinstance(value, (list, tuple)):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return ("datetime", value.isoformat())
    if isinstance(value, aj.Duration):
        return ("Duration", value.total_seconds(), value.parts)
    if isinstance(value, aj.Range):
        return ("Range", typed(value.begin), typed(value.end), value.exclude_end)
    return (type(value).__name__, value)
