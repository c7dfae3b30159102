"""``error_backtrace``: the compressed backtrace Sidekiq stores in a failed job.

Sidekiq 6.0+ stores the backtrace lines as JSON, deflated with zlib (header ``78 9c``) and
Base64-encoded. Up to 7.2.0 it wrote MIME Base64 (a newline every 60 characters); 7.2.1+ writes
strict Base64, and 7.2.1/7.2.2 can read only that, so strict is what we write: every version
reads it. Lines follow Ruby's order and shape, innermost call first, ``path:line:in `name'``,
so the Web UI shows a Python failure the way it shows a Ruby one.

>>> encoded = compress(["app/tasks.py:12:in `charge'", "celery/app/trace.py:453:in `trace_task'"])
>>> decompress(encoded)
["app/tasks.py:12:in `charge'", "celery/app/trace.py:453:in `trace_task'"]
>>> "\\n" in encoded
False
"""

from __future__ import annotations

import base64
import binascii
import json
import traceback
import zlib
from typing import Any


class InvalidBacktrace(ValueError):
    """An ``error_backtrace`` value that is neither Sidekiq's compressed form nor an array."""


def compress(lines: list[str]) -> str:
    """The ``error_backtrace`` value for ``lines``: zlib-deflated JSON, strict Base64."""
    serialized = json.dumps(lines, separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(zlib.compress(serialized.encode("utf-8"))).decode("ascii")


#: The most bytes an ``error_backtrace`` may inflate to. Sidekiq stores a few hundred lines at
#: most; the cap keeps a few kilobytes of Base64 from inflating to gigabytes in a reader.
MAX_INFLATED = 1 << 24


def decompress(value: Any) -> list[str]:
    """The lines of an ``error_backtrace`` written by any Sidekiq version.

    Accepts strict and MIME Base64, and the raw JSON array that Sidekiq < 6 stored. Whatever
    the value, it returns lines that can be written as UTF-8, or raises :class:`InvalidBacktrace`.
    """
    if isinstance(value, list):
        return _lines(value)
    if not isinstance(value, str):
        raise InvalidBacktrace(
            f"error_backtrace is a string or an array, not {type(value).__name__}"
        )
    try:
        # MIME Base64 differs from strict only by its newlines, which b64decode refuses.
        packed = base64.b64decode("".join(value.split()), validate=True)
        inflater = zlib.decompressobj()
        text = inflater.decompress(packed, MAX_INFLATED)
        if inflater.unconsumed_tail:
            raise InvalidBacktrace(f"error_backtrace inflates to more than {MAX_INFLATED} bytes")
        if not inflater.eof:
            raise zlib.error("incomplete or truncated stream")
        lines = json.loads(text)
    except (binascii.Error, zlib.error, ValueError, RecursionError) as exc:
        if isinstance(exc, InvalidBacktrace):
            raise
        raise InvalidBacktrace(f"error_backtrace is not zlib + Base64 JSON: {exc}") from None
    if not isinstance(lines, list):
        raise InvalidBacktrace("error_backtrace does not hold a JSON array")
    return _lines(lines)


def _lines(items: list[Any]) -> list[str]:
    """Each item as a line of text that UTF-8 can carry.

    A JSON string may hold a lone surrogate escape (``"\\ud800"``), which no Sidekiq writes and
    UTF-8 cannot carry: it is replaced, as Sidekiq scrubs invalid bytes. A line that is not a
    string is shown as Python prints it; one nested too deep to print makes the value invalid.
    """
    try:
        lines = [item if isinstance(item, str) else str(item) for item in items]
    except RecursionError:
        raise InvalidBacktrace("error_backtrace holds values nested too deep to print") from None
    return [_scrub(line) for line in lines]


def _scrub(line: str) -> str:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return line.encode("utf-8", "replace").decode("utf-8")
    return line


def lines_of(exc: BaseException, limit: int | None = None) -> list[str]:
    """The backtrace of ``exc`` as Ruby prints one: innermost frame first, at most ``limit``.

    Sidekiq's ``backtrace: N`` keeps the first N lines, i.e. the N frames nearest the raise.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    lines = [f"{frame.filename}:{frame.lineno}:in `{frame.name}'" for frame in reversed(frames)]
    return lines if limit is None else lines[: max(limit, 0)]
