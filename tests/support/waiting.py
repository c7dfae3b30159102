"""Polling helper: tests wait on conditions, never on fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition not met",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    Raises AssertionError with ``message`` and the last value on timeout. Exceptions
    propagate at once (a typo should not cost the whole timeout) unless listed in ``ignore``,
    e.g. ``ignore=(redis.ConnectionError,)`` while a server restarts; those count as "not
    yet" and the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (after {timeout:.1f}s; last value: {last!r})")
        time.sleep(interval)
