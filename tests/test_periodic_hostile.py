"""One bad ``periodic`` member never stops beat.

Everything read from the ZSET is untrusted: the cron parser and the member reader are fuzzed
with hostile text (they parse, or raise / return their documented refusal, nothing else); real
redis-server shows bad members moved aside to ``periodic:invalid`` while the good ones behind
them fire, claims that Redis refuses writing nothing, and the beat scheduler telling an error
reply from a lost connection; real ``celery beat -S sidekiq`` processes meet a bad member at
startup and one that arrives later.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from support.beat import Beats
from support.redis_server import RedisServer, RedisServerFactory
from support.strategies import json_scalars, json_values
from support.waiting import wait_for

import celery_sidekiq
from celery_sidekiq import periodic as beat_periodic
from kombu_sidekiq import job as jobs
from kombu_sidekiq import scripts
from kombu_sidekiq.client import Client
from kombu_sidekiq.keys import Keys
from kombu_sidekiq.periodic import (
    CLAIM_BATCH,
    MAX_NESTING,
    Cron,
    Entry,
    InvalidCron,
    InvalidEntry,
    Periodic,
    Refused,
    read,
)

UTC = timezone.utc
T = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def member(**fields: Any) -> str:
    """A member as rusty-sidekiq lays it out, with ``fields`` replacing the defaults."""
    base: dict[str, Any] = {
        "name": "Scheduled PeriodicJob",
        "class": "MyWorker",
        "cron": "* * * * * *",
        "queue": None,
        "args": None,
        "retry": None,
    }
    return json.dumps({**base, **fields}, separators=(",", ":"), ensure_ascii=False)


# -- the cron parser: ASCII digits, or InvalidCron saying why --------------------------------------

NINES = "99999999999999999999"


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("\u00b2 * * * * *", r"'²' is not a second value \(ASCII digits 0-9\)"),  # isdigit() True
        ("0 \u0663 * * * *", "is not a minute value"),  # ARABIC-INDIC THREE: int() reads 3
        ("0 0 \uff11 * * *", "is not a hour value"),  # FULLWIDTH ONE: int() reads 1
        ("*/\u00b2 * * * * *", "is not a second step"),
        ("0-\u0663 * * * * *", "is not a second value"),
        ("0 0 0 * * \ud800", "is not a day of week value"),  # a lone surrogate
        ("0 0 0 * * \u212aon", "is not a day of week value"),  # KELVIN SIGN lowers to "k"
        (f"{NINES} * * * * *", f"second value '{NINES}' is too large"),
        (f"*/{NINES} * * * * *", "second step '99999999999999999999' is too large"),
        ("*/4294967296 * * * * *", r"too large \(at most 4294967295\)"),
        ("9" * 5000 + " * * * * *", r"'9999.*'\.\.\. is too large"),  # int() would raise itself
        ("1,,2 * * * * *", "'' is not a second value"),
        ("1- * * * * *", "'' is not a second value"),
        ("-1 * * * * *", "'' is not a second value"),
        ("+1 * * * * *", "'\\+1' is not a second value"),  # int() takes a sign
        ("1_0 * * * * *", "'1_0' is not a second value"),  # int() takes underscores
        ("0\u00a00 * * * * *", "is not a second value"),  # no-break space: no field separator
        ("", "has 0 fields"),
        (" \t ", "has 0 fields"),
        ("*/0 * * * * *", "step must be at least 1"),  # cron_clock's step_by(0) panics
        ("?/2 * * * * *", "only allowed in the day fields"),
    ],
)
def test_the_cron_parser_refuses_all_but_ascii_digits_saying_why(cron: str, message: str) -> None:
    with pytest.raises(InvalidCron, match=message) as caught:
        Cron.parse(cron)
    assert len(str(caught.value)) < 400  # a 5000-digit field is quoted, not copied


@pytest.mark.parametrize(
    ("cron", "field", "values"),
    [
        ("00000000000000000005 * * * * *", 0, {5}),  # u32 parsing takes leading zeros
        ("*/4294967295 * * * * *", 0, {0}),  # a step past the field's end: its first value
        ("0 0 0 ? * ?/2", 5, {1, 3, 5, 7}),  # cron_clock's period_with_any
        ("0 0 0 * * tues,thurs", 5, {3, 5}),  # cron_clock's longer day names
        ("0\t0\n0  * * *", 2, {0}),  # ASCII whitespace separates fields
    ],
)
def test_what_cron_clock_accepts_is_accepted(cron: str, field: int, values: set[int]) -> None:
    assert Cron.parse(cron).values[field] == values


#: Pieces of cron fields, hostile ones among them: the grammar's own marks, ASCII numbers
#: small and huge, names, and characters that look like digits or spaces but are not ASCII.
_PIECES = st.one_of(
    st.sampled_from(["*", "?", "/", "-", ",", "L", "W", "#", "mon", "JAN", "tues", "@hourly"]),
    st.integers(0, 2**40).map(str),
    st.sampled_from(["0", "00", "7", "59", "60", "2099", NINES, "4294967295", "4294967296"]),
    st.characters(categories=["Nd", "No", "Nl"]),  # ², ٣, FULLWIDTH ONE, Ⅻ ...
    st.characters(categories=["Cs"]),  # lone surrogates
    st.characters(categories=["Zs", "Cc"]),  # U+00A0, U+2003, NUL, ...
)
_BOUNDS = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (1, 7), (1970, 2099)]


def _good_field(low: int, high: int) -> st.SearchStrategy[str]:
    """A field as people write them: any, a value, a range, a list, a step (some of these
    still refused: a range that runs backwards, a step of 0 or past 4294967295)."""
    value = st.integers(low, high).map(str)
    return st.one_of(
        st.just("*"),
        value,
        st.tuples(value, value).map("-".join),
        st.lists(value, min_size=1, max_size=3).map(",".join),
        st.tuples(st.just("*") | value, st.integers(0, 2**32 + 5).map(str)).map("/".join),
    )


_GOOD_CRON = st.tuples(
    *(_good_field(low, high) for low, high in _BOUNDS[:6]),
    st.just("") | _good_field(*_BOUNDS[6]),
).map(lambda fields: " ".join(fields).strip())


@st.composite
def _crons(draw: st.DrawFn) -> str:
    """A cron as people write them, maybe with a hostile piece or two spliced in."""
    text = draw(_GOOD_CRON)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(_PIECES) + text[at + draw(st.integers(0, 2)) :]
    return text


def _check_cron(text: str) -> None:
    try:
        cron = Cron.parse(text)
    except InvalidCron as exc:
        assert str(exc)  # says why
        return
    assert text.isascii()  # every number was ASCII digits, every name ASCII letters
    for allowed, (low, high) in zip(cron.values, _BOUNDS, strict=True):
        assert allowed and low <= min(allowed) and max(allowed) <= high
    found = cron.next_after(T)  # croniter takes every parsed cron: a time, or none left
    assert found is None or found > T


@settings(max_examples=400, deadline=None)
@given(_crons())
def test_cron_like_text_parses_or_raises_invalid_cron(text: str) -> None:
    _check_cron(text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_parses_or_raises_invalid_cron(text: str) -> None:
    _check_cron(text)


@given(st.text(alphabet="0123456789", min_size=1, max_size=40))
def test_an_ascii_number_is_taken_exactly_when_it_is_in_range(digits: str) -> None:
    in_range = int(digits) <= 59
    try:
        assert Cron.parse(f"{digits} * * * * *").values[0] == {int(digits)}
    except InvalidCron as exc:
        assert not in_range
        assert "outside 0-59" in str(exc) or "too large" in str(exc)
    else:
        assert in_range


# -- the member reader: an entry or a reason, never an exception -----------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        ("not json", "not JSON"),
        ("", "not JSON"),
        ('"a string"', "JSON object, not a string"),
        (member(cron="\u00b2 * * * * *"), "'²' is not a second value"),
        (member(cron=f"{NINES} * * * * *"), "too large"),
        (member(cron="9" * 5000 + " * * * * *"), "too large"),
        ('{"name":"n","class":"C","cron":"* * * * * *","retry":' + "9" * 5000 + "}", "not JSON"),
        (member(cron=None), "no 'cron' string"),
        (member(cron=5), "no 'cron' string"),
        (member(name=None), "no 'name' string"),
        (member(name=["n"]), "no 'name' string"),
        (member(**{"class": ""}), "class string"),
        (member(**{"class": {"a": 1}}), "no 'class' string"),
        (member(queue=""), "queue must be"),
        (member(queue=5), "queue must be"),
        (member(args=[1]), "string holding JSON"),
        (member(args={"a": 1}), "string holding JSON"),
        (member(args=True), "string holding JSON"),
        (member(args="[1"), "'args' is not JSON"),
        (member(args="[NaN]"), "NaN is no JSON number"),
        (member(args="[1e400]"), "out of range"),
        (member(args="[" * 100 + "]" * 100), "nested deeper than 100"),
        (member(args="[" * 100_000 + "]" * 100_000), "nested deeper than 100"),
        (member(args='["\\ud800"]'), "lone UTF-16 surrogate"),
        (member(**{"class": "\ud800"}), "lone UTF-16 surrogate"),
        (member(queue="\udfff"), "lone UTF-16 surrogate"),
        (member(name="\ud800"), "lone UTF-16 surrogate"),
        (member(retry=-1), "retry must be"),
        (member(retry=1.5), "retry must be"),
        (member(retry="3"), "retry must be"),
        (member(retry=[3]), "retry must be"),
        ('{"name":"n","class":"C","cron":"* * * * * *","retry":NaN}', "NaN is no JSON number"),
        ('{"name":"n","class":"C","cron":"@daily","class":"D"}', "'class' more than once"),
        ('{"name":"n","class":"C","cron":"@daily","x":' + "[" * 100 + "]" * 100 + "}", "deeper"),
        ('{"x":' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper than 100"),
    ],
)
def test_a_bad_member_is_refused_with_its_reason(raw: str | bytes, reason: str) -> None:
    found = read(raw, float(T))
    assert isinstance(found, Refused) and not found.unexpected, found
    assert reason in found.reason
    assert len(found.reason) < 400
    with pytest.raises(InvalidEntry, match=r"\w"):
        Entry.parse(raw)


@pytest.mark.parametrize("score", [math.nan, "1767225600", None, True, b"1"])
def test_a_score_that_is_not_a_number_is_refused(score: Any) -> None:
    found = read(member(), score)
    if score is None:  # no score given: the member alone decides
        assert isinstance(found, Entry)
    else:
        assert isinstance(found, Refused) and "is not a number" in found.reason


@pytest.mark.parametrize("score", [-math.inf, math.inf, -1e300, 0, 1e300])
def test_any_real_score_is_a_score(score: float) -> None:
    assert isinstance(read(member(), score), Entry)


def test_what_rusty_sidekiq_writes_and_accepts_is_read() -> None:
    for raw in [
        member(),
        member(name=""),  # rusty-sidekiq takes any name
        member(args='"5"', retry=True, queue="low"),
        member(args="null", retry=0),
        member(args="[" * 99 + "]" * 99),  # the job (one more level) is at Ruby's limit
        '{"name":"n","class":"C","cron":"@daily","x":1,"x":2}',  # unknown keys: ignored
        '{"name":"n","class":"C","cron":"@daily","x":' + "[" * 99 + "]" * 99 + "}",
    ]:
        assert isinstance(read(raw, float(T)), Entry), raw


def _member_of_depth(depth: int) -> str:
    return member(args="[" * depth + "]" * depth)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000))
def test_args_nested_past_what_job_parse_takes_are_refused(depth: int) -> None:
    found = read(_member_of_depth(depth), float(T))
    # the job holds the args one level down: the args may be MAX_NESTING - 1 deep
    assert isinstance(found, Entry) == (depth <= MAX_NESTING - 1)
    if isinstance(found, Refused):
        assert "nested deeper than 100" in found.reason


_HOSTILE_TEXT = st.one_of(
    st.text(),
    st.text(st.characters(categories=["Cs", "Nd", "No", "Zs", "Cc"])),
    _crons(),
    st.sampled_from(["", "\ud800", "\u00b2", NINES, "default", "[1]", "NaN", "[NaN]"]),
)
_VALUES = st.one_of(
    _HOSTILE_TEXT,
    json_values(json_scalars(text_size=8), size=3, leaves=6),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.just(math.nan),
    st.just(math.inf),
)
_ARGS_TEXT = st.one_of(
    _HOSTILE_TEXT,
    json_values(json_scalars(text_size=8), size=3, leaves=6).map(json.dumps),
    st.integers(0, 3000).map(lambda n: "[" * n + "]" * n),
)
_GOOD_ARGS = json_values(json_scalars(text_size=8), size=3, leaves=6).map(
    lambda value: json.dumps(value, ensure_ascii=True)  # ASCII: a lone surrogate stays "\\ud800"
)


@st.composite
def _members(draw: st.DrawFn) -> dict[str, Any]:
    """The fields of a member as rusty-sidekiq writes them, then a few of them dropped or
    replaced by hostile values (or an unknown key added)."""
    fields: dict[str, Any] = {
        "name": draw(st.text(max_size=10)),
        "class": draw(st.sampled_from(["Workers::Tick", "MyWorker", "Ü::Ärger"])),
        "cron": draw(_crons()),
        "queue": draw(st.none() | st.sampled_from(["low", "default"])),
        "args": draw(st.none() | _GOOD_ARGS | st.integers(1, 120).map(lambda n: "[" * n + "]" * n)),
        "retry": draw(st.none() | st.booleans() | st.integers(0, 25)),
    }
    for key in draw(st.lists(st.sampled_from([*fields, "extra"]), max_size=2, unique=True)):
        if draw(st.booleans()):
            fields.pop(key, None)
        else:
            fields[key] = draw(_ARGS_TEXT if key == "args" else _VALUES)
    return fields


def _encoded(fields: dict[str, Any], ascii_only: bool) -> bytes:
    text = json.dumps(fields, ensure_ascii=ascii_only, allow_nan=True)
    return text.encode("utf-8", "surrogatepass")  # lone surrogates as the bytes Redis may hold


def _check_member(raw: Any) -> None:
    found = read(raw, float(T))
    assert isinstance(found, (Entry, Refused))
    if isinstance(found, Refused):
        assert found.reason and not found.unexpected, found
        return
    # What an accepted member fires is a job every reader takes, as bytes Redis can hold.
    job = found.job()
    assert jobs.parse(jobs.dumps(job).encode("utf-8")) == job
    assert isinstance(found.member().encode("utf-8"), bytes)
    Cron.parse(found.cron)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_members(), st.booleans())
def test_hostile_members_are_read_or_refused_never_raised(
    fields: dict[str, Any], ascii_only: bool
) -> None:
    _check_member(_encoded(fields, ascii_only))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(), st.text(), st.integers(), st.none(), st.lists(st.integers())))
def test_any_bytes_or_object_is_read_or_refused_never_raised(raw: Any) -> None:
    _check_member(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(0, 80))
def test_bytes_spliced_into_a_good_member_are_read_or_refused(junk: bytes, at: int) -> None:
    good = member(args='[1,"x"]', queue="low").encode()
    at = min(at, len(good))
    assume(junk not in good)
    _check_member(good[:at] + junk + good[at:])


# -- in Redis: moved aside, atomically, and the good ones still fire -------------------------------

BAD: dict[str, str] = {
    member(cron="\u00b2 * * * * *"): "'²' is not a second value",
    member(cron=f"*/{NINES} * * * * *"): "too large",
    "not json": "not JSON",
    member(args="[NaN]"): "NaN is no JSON number",
    '{"name":"n","class":"\\ud800","cron":"@daily"}': "lone UTF-16 surrogate",
    member(**{"class": "\ud800"}): "not UTF-8",  # the same, as raw bytes in Redis
    member(args="[" * 150 + "]" * 150): "nested deeper",
    member(retry="3"): "retry must be",
    member(queue=7): "queue must be",
    '{"name":"n","class":"C","cron":"@daily","cron":"@hourly"}': "'cron' more than once",
}


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _errors(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_bad_members_ahead_of_good_ones_move_aside_once_and_the_good_ones_fire(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = [Entry("* * * * * *", "Good", name=f"good{n}").member() for n in range(3)]
    redis.zadd("periodic", {_raw(m): T - 10 for m in BAD})  # ahead of the good ones
    redis.zadd("periodic", dict.fromkeys(good, T))
    claimer = Periodic(Client(redis))
    fires = claimer.enqueue_due(now=T + 0.5)
    assert sorted(f.entry.name for f in fires) == ["good0", "good1", "good2"]
    assert redis.zrange("periodic", 0, -1, withscores=True) == [(m.encode(), T + 1.0) for m in good]
    invalid = claimer.invalid()
    assert set(invalid) == {_raw(m) for m in BAD}  # byte for byte: nothing lost, none changed
    for text, reason in BAD.items():
        record = invalid[_raw(text)]
        assert reason in record["reason"] and float(record["score"]) == T - 10, record
        assert record["moved_at"] > time.time() - 60
    assert _errors(caplog, "moved an invalid entry") == len(BAD)
    caplog.clear()
    assert len(claimer.enqueue_due(now=T + 1.5)) == 3
    assert _errors(caplog, "") == 0  # nothing retried, nothing logged twice


def test_more_bad_members_than_a_batch_never_hide_the_good_one_behind(
    redis: redis_lib.Redis,
) -> None:
    bad = {
        member(name=f"bad{n}", cron="\u00b2 * * * * *"): T - 10 for n in range(CLAIM_BATCH * 2 + 5)
    }
    redis.zadd("periodic", bad)
    redis.zadd("periodic", {member(name="good"): T})
    (fire,) = Periodic(Client(redis)).enqueue_due(now=T)
    assert fire.entry.name == "good" and redis.zcard("periodic") == 1
    assert redis.hlen("periodic:invalid") == len(bad)


def test_when_moving_aside_is_refused_the_member_stays_logged_once_and_skipped(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.set("periodic:invalid", "an operator's string")  # HSET would meet WRONGTYPE
    bad = {member(name=f"bad{n}", args="[NaN]"): T - 10 for n in range(CLAIM_BATCH + 5)}
    redis.zadd("periodic", bad)
    good = member(name="good")
    redis.zadd("periodic", {good: T})
    claimer = Periodic(Client(redis))
    assert [f.entry.name for f in claimer.enqueue_due(now=T)] == ["good"]
    assert {m.decode(): s for m, s in claimer.entries() if m.decode() != good} == bad
    assert redis.get("periodic:invalid") == b"an operator's string"
    assert _errors(caplog, "moving it aside was refused by Redis: WRONGTYPE") == len(bad)
    caplog.clear()
    assert [f.entry.name for f in claimer.enqueue_due(now=T + 1)] == ["good"]
    assert _errors(caplog, "") == 0  # skipped for good, not retried, not logged again


@pytest.mark.parametrize("broken", ["queue:low", "queues"])
def test_a_claim_redis_refuses_writes_nothing_and_fires_once_fixed(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    low = member(name="low", queue="low")
    redis.zadd("periodic", {low: T, member(name="default"): T + 0.25})
    redis.set(broken, "not a list or set")
    claimer = Periodic(Client(redis))
    now = T + 0.5  # each entry has one fire due
    fires = claimer.enqueue_due(now=now)
    assert [f.entry.name for f in fires] == ([] if broken == "queues" else ["default"])
    assert redis.zscore("periodic", low) == T  # the score did not move without its job
    assert redis.get(broken) == b"not a list or set"
    assert redis.type("queue:low" if broken == "queues" else "queues") in (b"none", b"set")
    assert _errors(caplog, "its claim was refused by Redis: WRONGTYPE") == 1 + (broken == "queues")
    caplog.clear()
    claimer.enqueue_due(now=now)
    assert _errors(caplog, "") == 0  # logged once, retried at each poll
    redis.delete(broken)
    fired = {f.entry.name: f.at for f in claimer.enqueue_due(now=now)}
    assert fired["low"] == T  # the fire it could not claim is enqueued now, once
    assert redis.llen("queue:low") == 1 and redis.zscore("periodic", low) == T + 1


def test_the_claim_script_checks_the_keys_it_writes_before_writing(
    redis: redis_lib.Redis,
) -> None:
    claim = redis.register_script(scripts.source("periodic_claim"))
    good = member()
    redis.zadd("periodic", {good: T})
    redis.set("queue:default", "x")
    with pytest.raises(redis_lib.ResponseError, match="WRONGTYPE queue:default holds a string"):
        claim(
            keys=["periodic", "queues", "queue:default"],
            args=[good, repr(float(T)), repr(T + 1.0), "default", '{"class":"C","args":[]}'],
        )
    # An error reply keeps the writes before it: there were none.
    assert redis.zscore("periodic", good) == T and redis.exists("queues") == 0


def test_the_set_aside_script_compares_the_score_and_checks_before_writing(
    redis: redis_lib.Redis,
) -> None:
    aside = redis.register_script(scripts.source("periodic_set_aside"))
    keys = ["periodic", "periodic:invalid"]
    redis.zadd("periodic", {"bad": T})
    assert aside(keys=keys, args=["bad", repr(T + 1.0), "{}"]) == 0  # moved meanwhile
    assert aside(keys=keys, args=["gone", repr(float(T)), "{}"]) == 0
    assert redis.exists("periodic:invalid") == 0 and redis.zscore("periodic", "bad") == T
    redis.set("periodic:invalid", "x")
    with pytest.raises(redis_lib.ResponseError, match="holds a string, not a hash"):
        aside(keys=keys, args=["bad", repr(float(T)), "{}"])
    assert redis.zscore("periodic", "bad") == T
    redis.delete("periodic:invalid")
    assert aside(keys=keys, args=["bad", repr(float(T)), '{"reason":"r"}']) == 1
    assert redis.hgetall("periodic:invalid") == {b"bad": b'{"reason":"r"}'}
    assert redis.exists("periodic") == 0


def test_two_claimers_that_read_one_bad_member_move_it_once_and_log_it_once(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    bad = _raw(member(cron="\u00b2 * * * * *"))
    redis.zadd("periodic", {bad: T})
    a, b = Periodic(Client(redis)), Periodic(Client(redis))
    # both read it due before either acts on it
    assert a._fire(bad, float(T), T + 1) is b._fire(bad, float(T), T + 1)
    assert redis.hlen("periodic:invalid") == 1 and redis.exists("periodic") == 0
    assert _errors(caplog, "moved an invalid entry") == 1


def test_infinite_scores_are_compared_and_kept_exactly(redis: redis_lib.Redis) -> None:
    bad, good = member(name="bad", args="[NaN]"), member(name="good")
    redis.zadd("periodic", {bad: -math.inf, good: -math.inf})
    claimer = Periodic(Client(redis))
    (fire,) = claimer.enqueue_due(now=T)
    assert fire.at == -math.inf and redis.zscore("periodic", good) == T + 1  # next after now
    assert claimer.invalid()[bad.encode()]["score"] == "-inf"


def test_a_namespace_prefixes_the_invalid_hash(redis: redis_lib.Redis) -> None:
    redis.zadd("tenant:periodic", {"nope": T})
    claimer = Periodic(Client(redis, Keys("tenant")))
    assert claimer.enqueue_due(now=T) == []
    assert redis.keys("*") == [b"tenant:periodic:invalid"]
    assert claimer.invalid_key == "tenant:periodic:invalid" and list(claimer.invalid()) == [b"nope"]


@pytest.mark.parametrize("where", ["reading", "claiming"])
def test_a_bug_here_leaves_the_member_where_it_is_and_the_rest_fire(
    redis: redis_lib.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """A failure of this code (simulated in process: nothing that crosses Redis is faked) is no
    reason to move somebody's entry aside: it stays, logged once with its traceback."""
    victim, other = member(name="victim", queue="victim"), member(name="other")
    redis.zadd("periodic", {victim: T, other: T})
    if where == "reading":
        real_parse = Entry.parse.__func__

        def parse(cls: type[Entry], raw: bytes | str) -> Entry:
            if b"victim" in (raw if isinstance(raw, bytes) else raw.encode()):
                raise KeyError("a bug")
            return real_parse(cls, raw)

        monkeypatch.setattr(Entry, "parse", classmethod(parse))
        found = read(victim)
        assert isinstance(found, Refused) and isinstance(found.error, KeyError)
    else:
        real_job = Entry.job

        def job(self: Entry, version: int = 7) -> dict[str, Any]:
            if self.queue == "victim":
                raise KeyError("a bug")
            return real_job(self, version)

        monkeypatch.setattr(Entry, "job", job)
    claimer = Periodic(Client(redis))
    assert [f.entry.name for f in claimer.enqueue_due(now=T)] == ["other"]
    assert redis.zscore("periodic", victim) == T and redis.exists("periodic:invalid") == 0
    (record,) = [r for r in caplog.records if "left in place and skipped" in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    claimer.enqueue_due(now=T + 1)
    assert sum("left in place" in r.getMessage() for r in caplog.records) == 1


# -- the beat scheduler, in process: error replies and lost connections ----------------------------


def _app(broker_url: str, schedule: dict[str, Any]) -> Celery:
    app = Celery("hostile", broker=broker_url)
    celery_sidekiq.setup(app)
    app.conf.beat_schedule = schedule
    return app


SCHEDULE = {"every-second": {"task": "Workers::Tick", "schedule": 1.0, "args": ["tick"]}}
GOOD = Entry("* * * * * *", "Workers::Tick", name="every-second", args=["tick"])


def test_beat_starts_among_bad_members_moves_them_aside_and_writes_its_entries(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    later = {member(name="never", cron="\u00b2 * * * * *"): math.inf, "nope": T + 10**9}
    redis.zadd("periodic", {_raw(m): s for m, s in {**later, **dict.fromkeys(BAD, T)}.items()})
    app = _app(broker_url, SCHEDULE)
    scheduler = beat_periodic.Scheduler(app=app)
    try:
        assert [m for m, _ in Periodic(Client(redis)).entries()] == [GOOD.member().encode()]
        assert redis.hlen("periodic:invalid") == len(BAD) + len(later)  # due or not
    finally:
        scheduler.close()
        app.close()


def test_an_error_reply_is_logged_once_and_beat_carries_on_once_it_is_fixed(
    broker_url: str, redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="celery_sidekiq.periodic")
    redis.set("periodic", "somebody's string")
    app = _app(broker_url, SCHEDULE)
    scheduler = beat_periodic.Scheduler(app=app)  # does not raise: retried at each tick
    try:
        assert scheduler.tick() == beat_periodic.MAX_INTERVAL
        assert scheduler.tick() == beat_periodic.MAX_INTERVAL
        refused = [
            r for r in caplog.records if "Redis refused a periodic command" in r.getMessage()
        ]
        assert len(refused) == 1 and "WRONGTYPE" in refused[0].getMessage()
        redis.delete("periodic")

        def fired() -> bool:
            scheduler.tick()
            return bool(redis.llen("queue:default"))

        wait_for(fired, timeout=5, message="a fire once periodic is a ZSET again")
        messages = [r.getMessage() for r in caplog.records]
        assert any("beat_schedule entries in periodic" in m for m in messages)
        assert any("periodic answers again" in m for m in messages)
    finally:
        scheduler.close()
        app.close()


@pytest.fixture
def private(redis_server_factory: RedisServerFactory) -> RedisServer:
    return redis_server_factory()


def test_a_lost_connection_is_logged_once_and_retried_soon(
    private: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app = _app(f"sidekiq://127.0.0.1:{private.port}/0", SCHEDULE)
    private.stop()  # down before beat starts: startup does not fail, the first tick writes
    scheduler = beat_periodic.Scheduler(app=app)
    try:
        assert scheduler.tick() == beat_periodic.RETRY_WAIT
        assert scheduler.tick() == beat_periodic.RETRY_WAIT
        lost = [r for r in caplog.records if "periodic ZSET unavailable" in r.getMessage()]
        assert len(lost) == 1 and lost[0].levelno == logging.WARNING
        private.start()
        with private.client() as conn:

            def fired() -> bool:
                scheduler.tick()
                return bool(conn.llen("queue:default"))

            wait_for(fired, timeout=15, message="a fire once Redis is back")
            assert conn.zrange("periodic", 0, -1) == [GOOD.member().encode()]
    finally:
        scheduler.close()
        app.close()


# -- real `celery beat -S sidekiq` processes -------------------------------------------------------

BEAT_SCHEDULE = {"every-second": {"task": "Workers::Tick", "every": 1, "args": ["tick"]}}


@pytest.fixture
def beats(broker_url: str, tmp_path: Path) -> Iterator[Beats]:
    """Start real beats on the test's Redis; they are stopped at teardown."""
    group = Beats(broker_url, tmp_path)
    yield group
    group.stop()


def _on_time(beats: Beats, redis: redis_lib.Redis, after: float, fires: int) -> list[float]:
    """Wait for ``fires`` more fires of GOOD after its score ``after``; check that each fire
    time came once and none was skipped; return each fire's lateness (the job's creation
    minus the fire time beat logged for it)."""
    key = GOOD.member()

    def logged() -> tuple[list[dict[str, Any]], dict[str, float]] | None:
        if (redis.zscore("periodic", key) or 0) < after + fires:
            return None
        queued = [json.loads(raw) for raw in redis.lrange("queue:default", 0, -1)]
        at = {jid: t for beat in beats.started for jid, t in beat.fire_times().items()}
        # beat logs a fire just after its script returns: wait for the last line too
        return (queued, at) if all(j["jid"] in at for j in queued) else None

    queued, at = beats.wait_for(logged, timeout=40, message=f"{fires} fires after {after}")
    times = sorted(at[j["jid"]] for j in queued)
    assert times == [times[0] + n for n in range(len(times))]  # each fire time once, no gap
    return [j["created_at"] - at[j["jid"]] for j in queued]


@pytest.mark.worker
def test_beat_starts_with_a_bad_member_in_the_zset_and_fires_the_good_ones(
    beats: Beats, redis: redis_lib.Redis
) -> None:
    bad = _raw(member(cron="\u00b2 * * * * *"))
    redis.zadd("periodic", {bad: time.time() - 5})
    Periodic(Client(redis)).add(GOOD)
    first = redis.zscore("periodic", GOOD.member())
    assert first is not None
    (beat,) = beats(BEAT_SCHEDULE)  # beat died here, on int("²")
    lateness = _on_time(beats, redis, first, 3)
    assert max(lateness) < beat_periodic.MAX_INTERVAL, lateness
    assert redis.zscore("periodic", bad) is None
    (record,) = [json.loads(v) for v in redis.hvals("periodic:invalid")]
    assert "'²' is not a second value" in record["reason"]
    assert beat.log().count("moved an invalid entry") == 1 and beat.running


@pytest.mark.worker
def test_bad_members_arriving_later_never_stop_the_fires_behind_them(
    beats: Beats, redis: redis_lib.Redis
) -> None:
    (beat,) = beats(BEAT_SCHEDULE)
    beats.wait_for(lambda: redis.llen("queue:default"), timeout=20, message="a first fire")
    now = time.time()
    # all due and ahead of the good entry: before, the first one stopped every fire after it
    redis.zadd("periodic", {_raw(m): now - 5 for m in BAD})
    score = redis.zscore("periodic", GOOD.member())
    assert score is not None
    beats.wait_for(lambda: redis.hlen("periodic:invalid") == len(BAD), 10, "all moved aside")
    lateness = _on_time(beats, redis, score, 4)
    assert max(lateness) < beat_periodic.MAX_INTERVAL, lateness
    assert redis.zrange("periodic", 0, -1) == [GOOD.member().encode()]
    log = beat.log()
    assert log.count("moved an invalid entry") == len(BAD)
    assert "unavailable" not in log and "Traceback" not in log and beat.running
