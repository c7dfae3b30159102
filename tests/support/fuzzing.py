"""Hostile hypothesis strategies: what a buggy, old or malicious writer could leave in Redis.

The readers (``job.parse``, the codec, ActiveJob decoding, backtraces, the retry rules) must
turn any of it into a value they can write back, or their documented error. These strategies
aim at the edges: lone UTF-16 surrogates, nesting around Ruby's limit of 100 and far past it,
numbers no double holds (``1e400``, 5,000-digit integers), ``-0.0``, every known key of a job,
of the ``celery`` extension key and of ActiveJob's job data with a value of the wrong type,
bytes that are not UTF-8, and JSON documents that are not objects.

Python values go through :func:`encode` (``json.dumps`` with ``ensure_ascii``, so a lone
surrogate becomes the ``"\\ud800"`` escape Redis would hold, and NaN the ``NaN`` token);
what ``json.dumps`` cannot write (nesting past its recursion limit, integers past 4,300 digits)
is spliced in as text by :func:`raw_jobs`.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from kombu_sidekiq import activejob as aj

#: Every key Sidekiq (or its Pro, Enterprise and our own options) reads from a job.
JOB_KEYS = (
    "class", "args", "queue", "jid", "retry", "retry_count", "created_at", "enqueued_at",
    "failed_at", "retried_at", "error_message", "error_class", "error_backtrace", "backtrace",
    "retry_for", "retry_queue", "dead", "unique_for", "unique_until", "bid", "tags", "wrapped",
)  # fmt: skip

#: Every key of the ``celery`` extension key that the codec reads.
CELERY_KEYS = (
    "id", "kwargs", "root_id", "parent_id", "group", "group_index", "retries", "timelimit",
    "expires", "shadow", "origin", "headers", "callbacks", "errbacks", "chain", "chord",
    "reply_to", "stamped_headers", "stamps", "ignore_result", "replaced_task_nesting",
)  # fmt: skip

#: Every key of ActiveJob's job data (``args[0]`` of a wrapper job).
ACTIVEJOB_KEYS = (
    "job_class", "job_id", "provider_job_id", "queue_name", "priority", "arguments",
    "executions", "exception_executions", "locale", "timezone", "enqueued_at", "scheduled_at",
)  # fmt: skip

SERIALIZERS = (
    aj.SYMBOL_SERIALIZER, aj.TIME_SERIALIZER, aj.TIME_WITH_ZONE_SERIALIZER,
    aj.DATE_TIME_SERIALIZER, aj.DATE_SERIALIZER, aj.DURATION_SERIALIZER,
    aj.BIG_DECIMAL_SERIALIZER, aj.RANGE_SERIALIZER, aj.MODULE_SERIALIZER,
)  # fmt: skip

#: Numbers as JSON text that no double holds exactly, or at all, or that Python refuses.
NUMBER_TEXTS = (
    "1e400", "-1e400", "1e-400", "-0.0", "-0", "0e0", "1E308", "5e-324", "2e-324",
    "9007199254740993", "18446744073709551616", "-9223372036854775809", "1" + "0" * 400,
    "1" + "0" * 4299, "1" + "0" * 5000, "-" + "9" * 5000, "0." + "1" * 5000, "1e99999999999",
    "NaN", "Infinity", "-Infinity", "01", "1.", ".5", "+1", "0x10",
)  # fmt: skip

#: Integers Python holds but no double does (all within json's 4,300-digit limit).
HUGE_INTS = (2**53 + 1, 2**63, -(2**63) - 1, 2**64, 10**400, -(10**400), 10**4299 - 1)

#: Floats at the edges of a double (``1e-400`` already read as ``0.0``).
EDGE_FLOATS = (-0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1e308, 1e-7)

SURROGATES = ("\ud800", "\udfff", "a\udc80b", "\udbff\udbff", "\ud83d")  # lone halves

ODD_TEXT = ("", "\x00", "\u2028\u2029", "\ufeff", "é", "😀", "\u202e", "gid://a/B/1", "\\", '"')


def hostile_text(*, surrogates: bool = True) -> SearchStrategy[str]:
    """Text, with a lone surrogate somewhere in some of it (unless ``surrogates`` is False)."""
    plain = st.text(max_size=12) | st.sampled_from(ODD_TEXT)
    if not surrogates:
        return plain
    with_one = st.tuples(plain, st.sampled_from(SURROGATES), plain).map("".join)
    return plain | with_one


def hostile_scalars(*, writable: bool = False) -> SearchStrategy[Any]:
    """JSON scalars at the edges. ``writable``: only what ``job.parse`` accepts (no lone
    surrogate, NaN or infinity), for readers that are only ever given parsed jobs."""
    floats = st.floats(allow_nan=not writable, allow_infinity=not writable)
    return (
        st.none()
        | st.booleans()
        | st.integers(-(2**64), 2**64)
        | st.sampled_from(HUGE_INTS)
        | floats
        | st.sampled_from(EDGE_FLOATS)
        | hostile_text(surrogates=not writable)
    )


def hostile_values(*, writable: bool = False, leaves: int = 12) -> SearchStrategy[Any]:
    """Any JSON value built of :func:`hostile_scalars`."""
    return st.recursive(
        hostile_scalars(writable=writable),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(hostile_text(surrogates=not writable), inner, max_size=4)
        ),
        max_leaves=leaves,
    )


def nested(depth: int, kind: str = "list") -> Any:
    """A value ``depth`` arrays (or objects) deep, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def deep_values(low: int = 99, high: int = 5000) -> SearchStrategy[Any]:
    """Python values nested ``low`` to ``high`` deep (Ruby refuses more than 100)."""
    depths = st.integers(low, high) | st.sampled_from((99, 100, 101, 1000, high))
    return st.builds(nested, depths, st.sampled_from(("list", "dict")))


def deep_texts(low: int = 99, high: int = 5000) -> SearchStrategy[str]:
    """JSON texts nested ``low`` to ``high`` deep, which ``json.dumps`` could not write."""

    def text(depth: int, kind: str) -> str:
        if kind == "list":
            return "[" * depth + "]" * depth
        return '{"a":' * depth + "1" + "}" * depth

    depths = st.integers(low, high) | st.sampled_from((99, 100, 101, 1000, high))
    return st.builds(text, depths, st.sampled_from(("list", "dict")))


def encode(value: Any) -> str:
    """JSON as a hostile writer leaves it: lone surrogates as escapes, NaN as a token."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


def sometimes(right: SearchStrategy[Any], *, writable: bool) -> SearchStrategy[Any]:
    """The right type for a key, or any hostile value (a wrong type, most often)."""
    return right | hostile_values(writable=writable, leaves=6)


def celery_extensions(*, writable: bool = False) -> SearchStrategy[Any]:
    """The ``celery`` key: an object whose every known key may have a wrong type, or not
    an object at all."""
    rights: dict[str, SearchStrategy[Any]] = {
        "id": st.uuids().map(str),
        "kwargs": st.dictionaries(
            st.text(max_size=5), hostile_values(writable=writable), max_size=3
        ),
        "root_id": st.uuids().map(str),
        "parent_id": st.uuids().map(str),
        "group": st.uuids().map(str),
        "group_index": st.integers(0, 10),
        "retries": st.integers(0, 30),
        "timelimit": st.lists(
            st.none() | st.integers(0, 100) | st.floats(0, 1e6), min_size=2, max_size=2
        ),
        "expires": st.just("2030-01-01T00:00:00+00:00"),
        "headers": st.dictionaries(
            st.sampled_from(("x-trace", "task", "id", "lang", "retries", "eta", "argsrepr")),
            hostile_values(writable=writable),
            max_size=3,
        ),
        "callbacks": st.just([{"task": "t", "args": [], "kwargs": {}, "options": {}}]),
        "chord": st.just({"task": "t", "args": [], "kwargs": {}, "options": {}}),
        "stamped_headers": st.lists(st.text(max_size=4), max_size=2),
        "stamps": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2),
        "ignore_result": st.booleans(),
        "replaced_task_nesting": st.integers(0, 3),
    }
    optional = {
        key: sometimes(rights.get(key, st.text(max_size=8)), writable=writable)
        for key in CELERY_KEYS
    }
    return st.fixed_dictionaries({}, optional=optional) | hostile_values(writable=writable)


#: ISO 8601 times as Rails writes them, and near misses.
TIMES = (
    "2026-11-27T23:45:05.123456000Z", "2026-11-27T23:45:05Z", "2026-11-27T23:45:05+05:30",
    "2026-11-27T23:45:05-23:59", "2026-11-27T23:45:05+24:00", "2026-11-27T23:45:05+00:99",
    "0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999-00:01", "2026-02-30T00:00:00Z",
    "2026-11-27T23:45:05", "2026-11-27T25:61:61Z", "2026-11-27", "2026-11-27T23:45:05."
    + "9" * 500 + "Z",
)  # fmt: skip


def activejob_values(*, writable: bool = False) -> SearchStrategy[Any]:
    """ActiveJob-serialized arguments: plain values, hashes with ActiveJob's markers, GlobalIDs
    and serializer objects, each field of which may have a wrong type."""
    hostile = hostile_values(writable=writable, leaves=4)
    serializer_fields = {
        "value": hostile
        | st.sampled_from(TIMES)
        | st.sampled_from(("1.5", "NaN", "sNaN", "1e999999999", "-0", "1,5")),
        "parts": hostile
        | st.lists(
            st.tuples(st.sampled_from(aj.DURATION_PARTS), st.integers() | st.floats()).map(list),
            max_size=3,
        ),
        "begin": hostile,
        "end": hostile,
        "exclude_end": st.booleans() | hostile,
        "time_zone": st.text(max_size=5),
    }
    serialized = st.fixed_dictionaries(
        {aj.OBJECT_SERIALIZER_KEY: st.sampled_from(SERIALIZERS) | hostile},
        optional=serializer_fields,
    )
    gid = st.fixed_dictionaries(
        {
            aj.GLOBALID_KEY: st.sampled_from(("gid://shop/User/7", "gid://a/B/c?x=1", "User/7"))
            | hostile
        }
    )
    markers = st.sampled_from(
        (aj.SYMBOL_KEYS_KEY, aj.RUBY2_KEYWORDS_KEY, aj.WITH_INDIFFERENT_ACCESS_KEY)
    )
    marked = st.builds(
        lambda base, marker, flag: {**base, marker: flag},
        st.dictionaries(st.text(max_size=4), hostile, max_size=3),
        markers,
        st.lists(st.text(max_size=4), max_size=2) | hostile,
    )
    return st.recursive(
        hostile_scalars(writable=writable) | serialized | gid | marked,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=4) | markers, inner, max_size=3)
        ),
        max_leaves=8,
    )


def activejob_data(*, writable: bool = False) -> SearchStrategy[Any]:
    """ActiveJob's job data, every key of it sometimes of a wrong type; or not an object."""
    rights: dict[str, SearchStrategy[Any]] = {
        "job_class": st.sampled_from(("InvoiceJob", "Admin::Sync")),
        "job_id": st.uuids().map(str),
        "provider_job_id": st.text(min_size=1, max_size=8),
        "queue_name": st.sampled_from(("default", "mailers")),
        "priority": st.none() | st.integers(-5, 5),
        "arguments": st.lists(activejob_values(writable=writable), max_size=4),
        "executions": st.integers(0, 5),
        "exception_executions": st.dictionaries(st.text(max_size=6), st.integers(0, 3), max_size=2),
        "locale": st.just("en"),
        "timezone": st.just("UTC"),
        "enqueued_at": st.sampled_from(TIMES),
        "scheduled_at": st.none() | st.sampled_from(TIMES),
    }
    required = {key: rights[key] for key in ("job_class", "job_id", "arguments")}
    optional = {key: sometimes(rights[key], writable=writable) for key in ACTIVEJOB_KEYS}
    mostly_right = st.fixed_dictionaries(
        required, optional={k: v for k, v in optional.items() if k not in required}
    )
    return (
        mostly_right
        | st.fixed_dictionaries({}, optional=optional)
        | hostile_values(writable=writable)
    )


def jobs_with_wrong_types(*, writable: bool = False) -> SearchStrategy[dict[str, Any]]:
    """Job objects with ``class`` and ``args`` mostly right and every other known key
    sometimes there with a wrong type; the ``celery`` key hostile; ActiveJob wrappers too.

    ``writable``: values ``job.parse`` accepts, wrong types apart (for tests of readers that
    only ever see parsed jobs); else anything, for the parser itself."""
    rights: dict[str, SearchStrategy[Any]] = {
        "queue": st.sampled_from(("default", "low")),
        "jid": st.just("0123456789abcdef01234567"),
        "retry": st.booleans() | st.integers(-1, 30),
        "retry_count": st.integers(-1, 30),
        "created_at": st.floats(1.7e9, 1.8e9) | st.integers(1_700_000_000_000, 1_800_000_000_000),
        "enqueued_at": st.floats(1.7e9, 1.8e9),
        "failed_at": st.floats(1.7e9, 1.8e9),
        "retried_at": st.floats(1.7e9, 1.8e9),
        "error_message": st.text(max_size=10),
        "error_class": st.just("ValueError"),
        "error_backtrace": st.just("eJyLjgUAARUAuQ=="),  # compress([])
        "backtrace": st.booleans() | st.integers(-2, 5),
        "retry_for": st.integers(0, 10_000),
        "retry_queue": st.just("retries"),
        "dead": st.booleans(),
        "unique_for": st.integers(1, 100),
        "unique_until": st.sampled_from(("success", "start")),
        "bid": st.text(max_size=8),
        "tags": st.lists(st.text(max_size=4), max_size=2),
        "wrapped": st.just("InvoiceJob"),
    }
    optional = {key: sometimes(rights[key], writable=writable) for key in rights}
    if writable:
        # The keys job.parse checks get only what it accepts, edges included: a wrong type
        # there would only test the parser again.
        numbers = (
            st.none() | st.integers() | st.sampled_from(HUGE_INTS) | st.sampled_from(EDGE_FLOATS)
        )
        optional.update(
            queue=hostile_text(surrogates=False),
            jid=hostile_text(surrogates=False),
            retry=st.none() | st.booleans() | st.integers() | st.sampled_from(HUGE_INTS),
            **dict.fromkeys(
                ("created_at", "enqueued_at", "failed_at", "retried_at"),
                numbers | st.floats(allow_nan=False, allow_infinity=False),
            ),
        )
    optional["celery"] = celery_extensions(writable=writable)
    klass = st.sampled_from(("HardJob", "Workers::Hard", *aj.WRAPPER_CLASSES)) | hostile_text(
        surrogates=not writable
    ).filter(bool)
    args = st.lists(hostile_values(writable=writable), max_size=3)
    plain = st.fixed_dictionaries({"class": klass, "args": args}, optional=optional)
    wrapper = st.fixed_dictionaries(
        {
            "class": st.sampled_from(aj.WRAPPER_CLASSES),
            "args": st.lists(activejob_data(writable=writable), min_size=1, max_size=1)
            | st.lists(activejob_data(writable=writable), max_size=2),
        },
        optional=optional,
    )
    odd_core = st.fixed_dictionaries(
        {},
        optional={
            "class": sometimes(klass, writable=writable),
            "args": sometimes(args, writable=writable),
            **optional,
        },
    )
    return plain | wrapper if writable else plain | wrapper | odd_core


def raw_jobs() -> SearchStrategy[bytes]:
    """Bytes as a queue item, a ``retry`` member or the API could read them: hostile jobs,
    hostile texts spliced into jobs, JSON that is not an object, and bytes that are not UTF-8."""
    encoded = jobs_with_wrong_types().map(lambda job: encode(job).encode("utf-8"))
    slots = st.sampled_from(
        (*JOB_KEYS, "celery", "args-item", "celery-retries", "celery-timelimit", "aj-arguments")
    )
    spliced_value = st.sampled_from(NUMBER_TEXTS) | deep_texts()

    def splice(slot: str, text: str) -> bytes:
        if slot == "args-item":
            return f'{{"class":"A","args":[{text}]}}'.encode()
        if slot.startswith("celery-"):
            return f'{{"class":"A","args":[],"celery":{{"{slot[7:]}":{text}}}}}'.encode()
        if slot == "aj-arguments":
            data = f'{{"job_class":"J","job_id":"1","arguments":[{text}]}}'
            return f'{{"class":"{aj.RAILS_WRAPPER}","args":[{data}]}}'.encode()
        return f'{{"class":"A","args":[],"{slot}":{text}}}'.encode()

    spliced = st.builds(splice, slots, spliced_value)
    not_objects = st.sampled_from(
        (b"[]", b"1", b'"job"', b"null", b"true", b"", b" ", b"[{}]", b'{"class":"A","args":[]}x')
    ) | hostile_values().map(lambda value: encode(value).encode("utf-8"))

    def break_utf8(data: bytes, garbage: bytes) -> bytes:
        middle = data.find(b'"', 2) + 1 or len(data) // 2
        return data[:middle] + garbage + data[middle:]

    garbage = st.sampled_from((b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x80", b"\xf4\x90\x80\x80"))
    not_utf8 = st.builds(break_utf8, encoded, garbage | st.binary(min_size=1, max_size=4))
    other_encodings = st.builds(
        lambda job, codec: encode(job).encode(codec),
        jobs_with_wrong_types(writable=True),
        st.sampled_from(("utf-16", "utf-32", "utf-8-sig", "latin-1")),
    )
    return encoded | spliced | not_objects | not_utf8 | other_encodings | st.binary(max_size=64)
