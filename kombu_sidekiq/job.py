"""The Sidekiq job: parse, validate, dump; jids; timestamps.

A job is a JSON object. Sidekiq owns a handful of keys (``class``, ``args``, ``queue``, ``jid``,
``retry``, ``created_at``, ``enqueued_at`` and the failure fields); every other key belongs to
somebody else and must survive every rewrite with its value unchanged. So a job is kept as the
plain ``dict`` that ``json.loads`` gives, key order included, and this module only reads it,
checks it, and sets the keys it owns.

>>> job = parse(b'{"class":"HardJob","args":[1],"queue":"default","jid":"c65c0a","retry":true}')
>>> job["class"], job["args"]
('HardJob', [1])
>>> dumps(job)
'{"class":"HardJob","args":[1],"queue":"default","jid":"c65c0a","retry":true}'
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any, Final

Job = dict[str, Any]
"""A Sidekiq job as a JSON object, in the key order it was read or built."""

#: The Sidekiq version whose formats we write when nothing else is said. 7.x reads and writes
#: float-second timestamps, as 6.x does, so it is the choice that no 6.x or 7.x reader misreads.
DEFAULT_SIDEKIQ_VERSION: Final = 7

#: Keys Sidekiq writes as timestamps. 8.0 made them integer milliseconds; before, float seconds.
TIMESTAMP_KEYS: Final = ("created_at", "enqueued_at", "failed_at", "retried_at", "discarded_at")

#: Timestamps this large are milliseconds whatever their JSON type: 1e11 seconds is the year
#: 5138, while 1e11 milliseconds is 1973. It rescues 8.x values that some writer turned into
#: floats (rusty-sidekiq re-serializes ms as ``1700000000123.0``).
_MS_THRESHOLD: Final = 1e11


class InvalidJob(ValueError):
    """A payload that is not a Sidekiq job; ``reason`` says why, for the dead set and the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_jid() -> str:
    """24 lowercase hex characters, as ``SecureRandom.hex(12)`` makes them."""
    return os.urandom(12).hex()


def jid_for_task_id(task_id: str) -> str:
    """The jid a Celery task id maps to, so ``AsyncResult.id`` finds its Sidekiq job.

    A UUID gives its first 24 hex digits (random in uuid4 but for one version nibble); a task id
    that already is a jid is kept; anything else gets a fresh jid.
    """
    hex_id = task_id.replace("-", "")
    if len(hex_id) >= 24 and _is_hex(hex_id):
        return hex_id[:24].lower()
    return new_jid()


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def now_timestamp(version: int = DEFAULT_SIDEKIQ_VERSION) -> float | int:
    """Now, as the given Sidekiq version writes job timestamps.

    Sidekiq 8 writes integer epoch milliseconds; 6.x and 7.x write float epoch seconds. The float
    is never a whole number printed without a decimal point, which 8.x would read as milliseconds.
    """
    if version >= 8:
        return time.time_ns() // 1_000_000
    return time.time()


def to_epoch_seconds(value: Any) -> float | None:
    """Read a job timestamp written by any Sidekiq version, rusty-sidekiq, or ourselves.

    Sidekiq 8's rule: a JSON float is seconds, a JSON integer is milliseconds. ``None`` (an absent
    key or rusty-sidekiq's explicit ``null``) stays ``None``; anything else is not a timestamp.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            return value / 1000.0
        except OverflowError:  # past a double: no moment anybody meant
            return None
    if isinstance(value, float):
        return value / 1000.0 if value >= _MS_THRESHOLD else value
    return None


#: The deepest nesting of arrays and objects a job may have: Ruby's ``JSON.parse`` refuses
#: more (its ``max_nesting``), so a deeper job could neither run in Ruby nor be read back there.
MAX_NESTING: Final = 100


def parse(raw: bytes | str) -> Job:
    r"""Parse and validate a job from its JSON; raise :class:`InvalidJob` with the reason.

    This is the one door for everything read from Redis (queue items, members of ``retry``,
    ``schedule`` and ``dead``, what the API reads): whatever the bytes, it returns a job that
    can be written back as it was read, or raises :class:`InvalidJob`, and nothing else.

    >>> parse(r'{"class":"A","args":["\ud800"]}')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    kombu_sidekiq.job.InvalidJob: a string holds a lone UTF-16 surrogate (\ud800), which UTF-8 ...
    """
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        job = _decode(text)
    except InvalidJob:
        raise
    except RecursionError:
        raise InvalidJob(f"nested deeper than {MAX_NESTING} arrays or objects") from None
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        raise InvalidJob(f"not JSON: {exc}") from None
    validate(job)
    # Text decoded here from UTF-8 bytes holds no lone surrogate but from an escape.
    _check_writable(job, text, decoded=not isinstance(raw, str))
    return job  # type: ignore[no-any-return]


class NotAJSONNumber(ValueError):
    """NaN, Infinity or a number past a double: JSON has none, and Ruby and serde_json refuse
    them, so whatever holds one could not be written back."""


def refuse_constant(name: str) -> Any:
    """``parse_constant`` for a strict ``json.JSONDecoder``: NaN and Infinity are refused."""
    raise NotAJSONNumber(f"{name} is no JSON number")


def finite_float(text: str) -> float:
    """``parse_float`` for a strict ``json.JSONDecoder``: ``1e400`` is refused, not infinity."""
    value = float(text)
    if not math.isfinite(value):  # 1e400: Python would write it back as Infinity
        raise NotAJSONNumber(f"the number {text[:40]} is out of range")
    return value


#: One decoder for every job (``json.loads`` with options builds a new one per call).
_decode = json.JSONDecoder(parse_constant=refuse_constant, parse_float=finite_float).decode


def _check_writable(job: Job, text: str, decoded: bool) -> None:
    """Refuse what parses here but could not be written back as UTF-8, or read by Ruby.

    Each check walks the job only when a cheap scan of the text says it could fail, so an
    ordinary job costs two ``str.count`` calls and two ``in`` tests.
    """
    if text.count("[") + text.count("{") > MAX_NESTING and depth(job) > MAX_NESTING:
        raise InvalidJob(f"nested deeper than {MAX_NESTING} arrays or objects")
    escaped = "\\ud" in text or "\\uD" in text
    if (escaped or not (decoded or text.isascii())) and _has_lone_surrogate(job):
        raise InvalidJob(
            "a string holds a lone UTF-16 surrogate (\\ud800), which UTF-8 cannot carry"
        )


def _walk(value: Any) -> Iterator[tuple[Any, int]]:
    """Every value inside ``value`` with its depth (1 for ``value``), keys included."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        yield item, depth
        if isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))


def depth(value: Any) -> int:
    """Arrays and objects nested in ``value``, counting itself; a loop, not recursion."""
    return max(depth for item, depth in _walk(value) if isinstance(item, (list, dict)))


def _has_lone_surrogate(value: Any) -> bool:
    for item, _ in _walk(value):
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def validate(job: Any) -> None:
    """Check what a consumer needs; the reason names the first problem found."""
    if not isinstance(job, dict):
        raise InvalidJob(f"a job is a JSON object, not {_json_type(job)}")
    klass = job.get("class")
    if not isinstance(klass, str) or not klass:
        raise InvalidJob("the job has no 'class' string")
    # rusty-sidekiq's periodic jobs carry an explicit "args": null for "no args"; an absent
    # key is no job at all.
    if "args" not in job:
        raise InvalidJob("the job has no 'args' array")
    args = job["args"]
    if args is not None and not isinstance(args, list):
        raise InvalidJob(f"'args' must be a JSON array, not {_json_type(args)}")
    for key in ("queue", "jid"):
        if key in job and not isinstance(job[key], str):
            raise InvalidJob(f"'{key}' must be a string, not {_json_type(job[key])}")
    retry = job.get("retry", True)
    if retry is not None and not isinstance(retry, (bool, int)):
        raise InvalidJob(f"'retry' must be true, false or an integer, not {_json_type(retry)}")
    for key in TIMESTAMP_KEYS:
        value = job.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise InvalidJob(f"'{key}' must be a number, not {_json_type(value)}")


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "number"


#: One encoder for every job: ``json.dumps`` with options builds a new one per call. NaN and
#: infinities are refused (ValueError): JSON has no such numbers, and Ruby cannot read them.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def dumps(job: Job) -> str:
    """Compact JSON, as ``JSON.generate`` and ``serde_json`` write it, UTF-8 left unescaped."""
    return _encode(job)


#: Values ``json`` writes as they are; anything else goes through an encoder's ``default``.
_JSON_SCALARS: Final = (str, int, float, type(None))

#: :func:`is_plain_json` looks at this many values at most (it never loops on a cycle).
_PLAIN_JSON_LIMIT: Final = 10_000


def is_plain_json(value: Any) -> bool:
    """True if ``json`` writes ``value`` with no encoder ``default``: str, int, float, bool, None
    and lists, tuples and dicts of them (keys scalars). False for anything else, a cycle or a
    value too large to check cheaply.

    >>> is_plain_json(([1, "a", {"k": [None, 2.5]}], {}, {}))
    True
    >>> import datetime; is_plain_json([datetime.date(2026, 1, 1)])
    False
    """
    stack = [value]
    budget = _PLAIN_JSON_LIMIT
    while stack:
        budget -= 1
        if budget < 0:
            return False
        item = stack.pop()
        if isinstance(item, _JSON_SCALARS):
            continue
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            if not all(isinstance(key, _JSON_SCALARS) for key in item):
                return False
            stack.extend(item.values())
        else:
            return False
    return True


#: The largest ``retry_for`` Sidekiq's client accepts (it is relative seconds, not a time).
RETRY_FOR_MAX: Final = 1_000_000_000


def retry_for_seconds(value: Any) -> int:
    """``retry_for`` as Sidekiq 7.1+ writes it: whole seconds, from a number or a timedelta.

    >>> import datetime; retry_for_seconds(datetime.timedelta(hours=1))
    3600
    """
    total = value.total_seconds() if hasattr(value, "total_seconds") else value
    if isinstance(total, bool) or not isinstance(total, (int, float)) or not total >= 0:
        raise ValueError(f"retry_for={value!r}: give seconds >= 0 (a number) or a timedelta")
    if total > RETRY_FOR_MAX:
        raise ValueError(f"retry_for={value!r}: a duration in seconds, not a point in time")
    return int(total)


def retry_option(job: Job) -> bool | int:
    """The job's ``retry``: Sidekiq's default ``true`` when absent or null."""
    retry = job.get("retry")
    return True if retry is None else retry


def build(
    klass: str,
    args: list[Any],
    *,
    queue: str = "default",
    jid: str | None = None,
    retry: bool | int = True,
    version: int = DEFAULT_SIDEKIQ_VERSION,
    scheduled: bool = False,
    extra: dict[str, Any] | None = None,
) -> Job:
    """A new job as sidekiq.rb's client writes it.

    ``scheduled`` jobs go to the ``schedule`` ZSET and carry no ``enqueued_at`` (7.1.2+ rule);
    ``extra`` keys (Sidekiq options such as ``backtrace`` or ``tags``, or extension keys) follow
    the standard ones.
    """
    now = now_timestamp(version)
    job: Job = {
        "class": klass,
        "args": args,
        "queue": queue,
        "jid": jid or new_jid(),
        "retry": retry,
        "created_at": now,
    }
    if not scheduled:
        job["enqueued_at"] = now
    if extra:
        job.update(extra)
    return job


def mark_enqueued(job: Job, version: int = DEFAULT_SIDEKIQ_VERSION) -> Job:
    """Stamp ``enqueued_at`` for a push to a queue list, as Sidekiq's client does on every push.

    A job that already carries a timestamp keeps its unit (ms stays ms), so one payload never mixes
    what its original writer chose with what we were configured to write.
    """
    old = job.get("enqueued_at", job.get("created_at"))
    if isinstance(old, int) and not isinstance(old, bool):
        job["enqueued_at"] = now_timestamp(8)
    elif isinstance(old, float):
        job["enqueued_at"] = now_timestamp(7)
    else:
        job["enqueued_at"] = now_timestamp(version)
    return job
