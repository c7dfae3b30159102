"""Hostile members: what a broken or malicious writer can leave in Redis, for readers' tests.

Every strategy gives raw bytes, as Redis hands them back. Two kinds:

- :func:`refused_members`: not jobs; ``kombu_sidekiq.job.parse`` raises ``InvalidJob`` for each
  (lone UTF-16 surrogate escapes, nesting past Ruby's 100, numbers past a double or past Python's
  4,300 digits, NaN and Infinity, wrong types for the keys parse checks, bytes that are not
  UTF-8, JSON that is not an object);
- :func:`odd_jobs`: jobs parse lets through whose other known keys hold the wrong type
  (``"retry_count": "x"``, ``"error_message": 5``, ``"args": null``, absurd timestamps):
  readers must survive them all the same.

:func:`hostile_members` draws from both; ``EXAMPLES`` is one fixed member of each kind, for
parametrized tests. A reader's property is usually "never raises, and the member is either shown
as invalid with a reason or read as a job", checked against ``job.parse`` itself.
"""

from __future__ import annotations

import json
from typing import Any, Final

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

#: The keys of a job that Sidekiq or the bridge read, each of which a writer can get wrong.
KNOWN_KEYS: Final = (
    "class",
    "args",
    "queue",
    "jid",
    "retry",
    "retry_count",
    "created_at",
    "enqueued_at",
    "failed_at",
    "retried_at",
    "error_message",
    "error_class",
    "celery",
)

#: What job.parse checks, and so refuses when its type is wrong.
CHECKED_KEYS: Final = frozenset(
    {
        "class",
        "args",
        "queue",
        "jid",
        "retry",
        "created_at",
        "enqueued_at",
        "failed_at",
        "retried_at",
    }
)


def base_job(**extra: Any) -> dict[str, Any]:
    """A valid job as sidekiq.rb writes it into ``retry``: the frame every hostile one bends."""
    job: dict[str, Any] = {
        "class": "HostileJob",
        "args": [1, "x"],
        "queue": "default",
        "jid": "ab" * 12,
        "retry": True,
        "created_at": 1700000000.5,
        "retry_count": 0,
        "error_class": "RuntimeError",
        "error_message": "boom",
        "failed_at": 1700000001.5,
    }
    job.update(extra)
    return job


def _raw(job: dict[str, Any]) -> bytes:
    return json.dumps(job).encode()


def _with_text(where: str, text: str) -> bytes:
    """A job whose JSON holds ``text`` verbatim (an escape, a literal) at ``where``."""
    marker = "__HOSTILE__"
    frames = {
        "arg": base_job(args=[marker]),
        "class": base_job(**{"class": marker}),
        "key": base_job(extra={marker: 1}),
        "queue": base_job(queue=marker),
        "error": base_job(error_message=marker),
    }
    encoded = json.dumps(frames[where])
    # Strings take the text inside their quotes; the "key" frame's marker is a key.
    return encoded.replace(json.dumps(marker)[1:-1], text).encode()


_WHERE: Final = st.sampled_from(["arg", "class", "key", "queue", "error"])


def lone_surrogates() -> SearchStrategy[bytes]:
    r"""``\ud800``-style escapes with no partner (or in the wrong order): valid JSON text that
    no UTF-8 writer can write back."""
    high = st.integers(0xD800, 0xDBFF).map(lambda c: f"\\u{c:04x}")
    low = st.integers(0xDC00, 0xDFFF).map(lambda c: f"\\u{c:04X}")
    escape = high | low | st.tuples(low, high).map("".join)
    return st.builds(_with_text, _WHERE, escape)


def deep_nesting() -> SearchStrategy[bytes]:
    """Arrays or objects nested past Ruby's ``max_nesting`` of 100, up to deep enough to
    exhaust a recursive parser."""

    def nest(depth: int, objects: bool) -> bytes:
        inner = '{"a":' * depth + "1" + "}" * depth if objects else "[" * depth + "]" * depth
        return _with_text("arg", "").replace(b'""', inner.encode(), 1)

    return st.builds(nest, st.sampled_from([101, 150, 5_000, 100_000]), st.booleans())


def huge_numbers() -> SearchStrategy[bytes]:
    """Numbers no double holds (``1e400``), integers longer than Python reads (``10**5000``),
    and the non-JSON words Python's json would write for them."""
    literal = st.sampled_from(
        ["1e400", "-1e400", "1" + "0" * 5_000, "-" + "9" * 4_400, "NaN", "Infinity", "-Infinity"]
    )

    def place(text: str, where: str) -> bytes:
        key = "created_at" if where == "stamp" else "args"
        value = text if where == "stamp" else f"[{text}]"
        frame = json.dumps(base_job(**{key: "__N__"}))
        return frame.replace('"__N__"', value).encode()

    return st.builds(place, literal, st.sampled_from(["stamp", "arg"]))


#: JSON values of every type, to put where another type belongs.
_ANY_JSON: Final = st.sampled_from(
    [None, True, False, 0, -1, 7, 1.5, "", "x", "yesterday", [], [1], {}, {"a": 1}]
)


def _wrong_for(key: str, value: Any) -> bool:
    """True if ``value`` is the wrong type for ``key`` (null counts as absent, as for rusty)."""
    if value is None:
        return key == "class"
    if key == "class":
        return not isinstance(value, str) or value == ""
    if key == "args":
        return not isinstance(value, list)
    if key in ("queue", "jid", "error_message", "error_class"):
        return not isinstance(value, str)
    if key == "retry":
        return not isinstance(value, (bool, int))
    if key == "retry_count":
        return isinstance(value, bool) or not isinstance(value, int)
    if key == "celery":
        return not isinstance(value, dict)
    return isinstance(value, bool) or not isinstance(value, (int, float))  # timestamps


def wrong_types(keys: tuple[str, ...] = KNOWN_KEYS) -> SearchStrategy[bytes]:
    """A job with one of ``keys`` set to a value of the wrong type (or, for class and args,
    missing)."""

    def bend(key: str, value: Any, drop: bool) -> bytes:
        job = base_job()
        if drop and key in ("class", "args"):
            del job[key]
        else:
            job[key] = value
        return _raw(job)

    return st.builds(
        bend,
        st.sampled_from(keys),
        _ANY_JSON,
        st.booleans(),
    ).filter(lambda raw: _is_bent(raw, keys))


def _is_bent(raw: bytes, keys: tuple[str, ...]) -> bool:
    job = json.loads(raw)
    return any(key not in job and key in ("class", "args") for key in keys) or any(
        key in job and _wrong_for(key, job[key]) for key in keys
    )


def non_utf8() -> SearchStrategy[bytes]:
    """Bytes that are not UTF-8: stray high bytes, overlong forms, CESU-8 surrogates, cut
    sequences, inside a job or alone."""
    bad = st.sampled_from(
        [b"\xff", b"\xfe\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80"]
    )

    def place(chunk: bytes, inside: bool) -> bytes:
        return _with_text("arg", "@@").replace(b"@@", chunk) if inside else chunk

    return st.builds(place, bad, st.booleans())


def non_objects() -> SearchStrategy[bytes]:
    """JSON that is not an object, text that is not JSON, and near-misses."""
    return st.sampled_from(
        [
            b"",
            b" ",
            b"null",
            b"true",
            b"1",
            b'"text"',
            b"[]",
            b'[{"class":"A","args":[]}]',
            b"{",
            b'{"class":',
            b'{"class":"A","args":[]} trailing',
            b"\xef\xbb\xbf" + _raw(base_job()),  # a UTF-8 byte order mark
            b"not json at all",
        ]
    )


def refused_members() -> SearchStrategy[bytes]:
    """Members ``job.parse`` refuses, every kind."""
    return st.one_of(
        lone_surrogates(),
        deep_nesting(),
        huge_numbers(),
        wrong_types(tuple(sorted(CHECKED_KEYS))),
        non_utf8(),
        non_objects(),
    )


def odd_jobs() -> SearchStrategy[bytes]:
    """Jobs parse takes whose unchecked known keys have the wrong type, or whose checked ones
    hold values no reader expects (``args: null``, timestamps of the year 10**300)."""
    unchecked = tuple(key for key in KNOWN_KEYS if key not in CHECKED_KEYS)
    extremes = st.sampled_from(
        [
            base_job(args=None),
            base_job(created_at=10**300, failed_at=-(10**300)),
            base_job(created_at=1e308, enqueued_at=-1e308, retried_at=0),
            base_job(retry_count=10**300, retry=-(10**300)),
            base_job(error_backtrace=["not", {"a": "backtrace"}]),
            base_job(error_backtrace="bm90IHpsaWI="),  # base64 of "not zlib"
            base_job(tags="not a list", bid={"a": 1}, display_class=5, wrapped=[1], encrypt=True),
        ]
    ).map(_raw)
    return wrong_types(unchecked) | extremes


def hostile_members() -> SearchStrategy[bytes]:
    """Anything a broken writer can leave: refused members and odd jobs."""
    return refused_members() | odd_jobs()


#: One member of each kind, by name, for parametrized tests.
EXAMPLES: Final[dict[str, bytes]] = {
    "lone_surrogate": _with_text("arg", "\\ud800"),
    "reversed_pair": _with_text("class", "\\udc00\\ud800"),
    "surrogate_in_key": _with_text("key", "\\udfff"),
    "nested_150": _with_text("arg", "").replace(b'""', b"[" * 150 + b"]" * 150, 1),
    "nested_100000": _with_text("arg", "").replace(b'""', b"[" * 100_000 + b"]" * 100_000, 1),
    "float_1e400": json.dumps(base_job(created_at="@")).replace('"@"', "1e400").encode(),
    "int_10_5000": json.dumps(base_job(args="@")).replace('"@"', "[1" + "0" * 5_000 + "]").encode(),
    "nan": json.dumps(base_job(args="@")).replace('"@"', "[NaN]").encode(),
    "class_number": _raw(base_job(**{"class": 5})),
    "args_string": _raw(base_job(args="x")),
    "queue_array": _raw(base_job(queue=["a"])),
    "jid_number": _raw(base_job(jid=42)),
    "retry_string": _raw(base_job(retry="yes")),
    "failed_at_yesterday": _raw(base_job(failed_at="yesterday")),
    "enqueued_at_object": _raw(base_job(enqueued_at={"t": 1})),
    "not_utf8": b'{"class":"A","args":["\xff"]}',
    "cesu_surrogate": b'{"class":"A","args":["\xed\xa0\x80"]}',
    "array": b"[1,2]",
    "string": b'"text"',
    "empty": b"",
    "truncated": b'{"class":',
    # parse takes these: readers must survive them.
    "retry_count_x": _raw(base_job(retry_count="x")),
    "error_message_5": _raw(base_job(error_message=5)),
    "error_class_list": _raw(base_job(error_class=["E"])),
    "celery_string": _raw(base_job(celery="not an object")),
    "args_null": _raw(base_job(args=None)),
    "created_at_10_300": _raw(base_job(created_at=10**300)),
    "backtrace_garbage": _raw(base_job(error_backtrace="bm90IHpsaWI=")),
}
