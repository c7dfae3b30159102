"""Sidekiq's retry rules as pure logic, the backtrace format, middleware chains, the options,
and the Redis moves behind them (a retry publish) against a real Redis."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from celery.exceptions import Retry
from hypothesis import given
from hypothesis import strategies as st

import celery_sidekiq
from celery_sidekiq import retry as retries
from celery_sidekiq.middleware import Chain
from celery_sidekiq.registry import CeleryRegistry
from celery_sidekiq.retry import (
    NO_HOOKS,
    Failure,
    Hooks,
    JobRetry,
    UnknownClass,
    backoff,
    record_failure,
)
from kombu_sidekiq import activejob, backtrace, codec
from kombu_sidekiq import job as jobs
from kombu_sidekiq.divert import Divert

# Sidekiq 6.4.1's own output (Debian ruby-sidekiq, JobRetry#compress_backtrace, MIME Base64)
# for these two lines; see tests/test_retry_interop.py for Ruby reading ours.
RUBY_641_LINES = [
    "/app/workers/hard_job.rb:7:in `perform'",
    "/usr/lib/ruby/vendor_ruby/sidekiq/processor.rb:196:in `execute_job'",
]
RUBY_641_BACKTRACE = (
    "eJwdzDsOwjAQRdGtIDdpIkY0RHgrEQr+DMI4ZMwbTMjukdPd5p7RkCuFVkFm\n"
    "KD0c4vQUf4S3g03L4VYYd8GrM72hqqA5eUL1G315iYJpb02Rc3pTgQRWFbT/\n"
    "dDnvAv841A83tjPXPwiOKK4=\n"
)


# -- backoff ------------------------------------------------------------------------------------


def test_backoff_without_jitter_is_sidekiqs_table() -> None:
    no_jitter = [backoff(count, 7, rand=lambda n: 0) for count in range(25)]
    assert no_jitter[:6] == [15, 16, 31, 96, 271, 640]
    assert no_jitter[24] == 331_791
    assert sum(no_jitter) == 1_763_395  # ~20.4 days over 25 retries


@given(
    count=st.integers(0, 40),
    pick=st.floats(0, 1, exclude_max=True),
    version=st.sampled_from([6, 7, 8]),
)
def test_backoff_jitter_stays_in_each_versions_range(count: int, pick: float, version: int) -> None:
    drawn: list[int] = []

    def rand(n: int) -> int:
        drawn.append(n)
        return int(pick * n)

    jitter = backoff(count, version, rand=rand) - (count**4 + 15)
    if version == 8:  # rand(10 * (count + 1))
        assert drawn == [10 * (count + 1)] and 0 <= jitter < 10 * (count + 1)
    else:  # rand(10) * (count + 1)
        assert drawn == [10] and jitter % (count + 1) == 0 and 0 <= jitter <= 9 * (count + 1)


def test_backoff_with_real_randomness_stays_in_range() -> None:
    for count in range(5):
        for version in (6, 7, 8):
            assert count**4 + 15 <= backoff(count, version) <= count**4 + 15 + 10 * (count + 1)


# -- failure fields -------------------------------------------------------------------------------


class Outer:
    class Nested(Exception):
        pass


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_error_class_is_the_qualified_name() -> None:
    assert Failure.of(KeyError("k")).error_class == "KeyError"
    assert Failure.of(Outer.Nested("x")).error_class == f"{__name__}.Outer.Nested"
    assert (
        Failure.of(json.JSONDecodeError("m", "d", 0)).error_class == "json.decoder.JSONDecodeError"
    )


def test_error_message_is_cut_at_10000_chars_scrubbed_and_never_raises() -> None:
    assert Failure.of(ValueError("x" * 20_000)).message == "x" * 10_000
    assert Failure.of(ValueError("bad \udcff byte")).message == "bad ? byte"

    class Grumpy(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert Failure.of(Grumpy()).message == "!!! ERROR MESSAGE THREW AN ERROR !!!"


def test_first_failure_sets_failed_at_and_count_0_later_ones_retried_at() -> None:
    job = jobs.build("HardJob", [1], queue="default", extra={"retry_queue": "low", "bid": "b"})
    keys = list(job)
    assert record_failure(job, Failure("E", "m"), "default", 7) == 0
    assert (job["queue"], job["error_class"], job["error_message"], job["retry_count"]) == (
        "low",
        "E",
        "m",
        0,
    )
    assert isinstance(job["failed_at"], float) and "retried_at" not in job
    assert list(job)[: len(keys)] == keys
    failed_at = job["failed_at"]
    assert record_failure(job, Failure("E", "m2"), "low", 8) == 1
    assert (
        job["failed_at"] == failed_at
        and isinstance(job["retried_at"], int)
        and job["retried_at"] > 10**12
    )
    # The UI's "Retry now" decremented it to -1 first:
    job["retry_count"] = -1
    assert record_failure(job, Failure("E", "m"), "low", 7) == 0 and isinstance(
        job["retried_at"], float
    )


def test_backtrace_only_when_the_job_asks_and_n_means_the_first_n_lines() -> None:
    def deep(depth: int) -> None:
        if depth:
            deep(depth - 1)
        raise ValueError("deep")

    try:
        deep(5)
    except ValueError as exc:
        failure = Failure.of(exc)
    for wanted, expected in ((True, 7), (3, 3), (0, 0)):
        job = jobs.build("J", [], extra={"backtrace": wanted})
        record_failure(job, failure, "default", 7)
        lines = backtrace.decompress(job["error_backtrace"])
        assert len(lines) == expected
        if lines:
            assert lines[0].endswith(":in `deep'") and __file__ in lines[0]
    for absent in (None, False):
        job = jobs.build("J", [], extra={"backtrace": absent} if absent is not None else {})
        record_failure(job, failure, "default", 7)
        assert "error_backtrace" not in job


@pytest.mark.parametrize(
    ("options", "exhausted", "action"),
    [
        ({"retry": True}, False, "retry"),
        ({"retry": 3, "retry_count": 1}, False, "retry"),  # count 2 < 3
        ({"retry": 3, "retry_count": 2}, False, "dead"),  # count 3
        ({"retry": True, "retry_count": 24}, False, "dead"),  # the 25th retry was the last
        ({"retry": 0}, False, "dead"),
        ({"retry": False}, False, "drop"),
        ({"retry": 0, "dead": False}, False, "drop"),
        ({"retry": True}, True, "dead"),  # Celery's max_retries ran out
        ({"retry": False}, True, "drop"),
    ],
)
def test_decide_follows_sidekiq(options: dict[str, Any], exhausted: bool, action: str) -> None:
    job = jobs.build("J", [], extra=options)
    verdict = JobRetry(7, max_retries=25).decide(
        job, Failure("E", "m"), "default", exhausted=exhausted
    )
    assert verdict.action == action
    if action == "retry":
        assert verdict.delay >= job["retry_count"] ** 4 + 15


def test_keep_sends_what_would_be_dropped_to_dead() -> None:
    retrier = JobRetry(7)
    for extra in ({"retry": False}, {"retry": 0, "dead": False}):
        assert (
            retrier.decide(
                jobs.build("J", [], extra=extra), Failure("E", "m"), "q", keep=True
            ).action
            == "dead"
        )


def test_max_retries_setting_applies_to_retry_true() -> None:
    job = jobs.build("J", [], extra={"retry_count": 1})
    assert JobRetry(7, max_retries=2).decide(job, Failure("E", "m"), "q").action == "dead"


# -- a task's hooks, retry_for ------------------------------------------------------------------


def _decide(version: int, hooks: Hooks, **extra: Any) -> Any:
    job = jobs.build("J", ["a"], extra=extra)
    return JobRetry(version).decide(job, Failure.of(OSError("down")), "default", hooks=hooks)


def test_retry_in_chooses_the_delay_and_gets_the_failure() -> None:
    seen: list[Any] = []

    def retry_in(count: int, exc: BaseException | None, job: dict[str, Any]) -> int:
        seen.append((count, type(exc).__name__, job["error_class"], job["args"]))
        return 300

    verdict = _decide(7, Hooks(retry_in=retry_in), retry_count=2)
    assert verdict.action == "retry"
    assert 300 <= verdict.delay <= 300 + 9 * 4  # count 3: rand(10) * 4 of jitter on top
    assert seen == [(3, "OSError", "OSError", ["a"])]


@pytest.mark.parametrize("answer", [None, 0, -5, "soon", True, 2.0**70])
def test_retry_in_answers_it_cannot_use_fall_back_to_sidekiqs_backoff(answer: Any) -> None:
    verdict = _decide(7, Hooks(retry_in=lambda count, exc, job: answer))
    if answer == 2.0**70:  # a huge number is a delay, as Ruby's to_i makes it
        assert verdict.delay >= 2**70
    else:
        assert verdict.action == "retry" and 15 <= verdict.delay <= 24


def test_a_hook_that_raises_never_loses_the_job() -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("bug in the hook")

    assert _decide(7, Hooks(retry_in=broken)).action == "retry"
    verdict = _decide(7, Hooks(retry_in=broken, exhausted=broken), retry=0)
    assert (verdict.action, verdict.died) == ("dead", True)


@pytest.mark.parametrize(
    ("version", "retry_in", "exhausted", "extra", "action", "died", "called"),
    [
        (7, "kill", None, {}, "dead", True, True),  # kill: straight to retries_exhausted
        (7, "discard", None, {}, "drop", False, False),  # before 8.0.7: no death handlers
        (8, "discard", None, {}, "drop", True, False),  # 8.0.7+: they run
        (7, None, "discard", {"retry": 0}, "drop", False, True),  # 7.2-8.0.6: skipped
        (8, None, "discard", {"retry": 0}, "drop", True, True),
        (7, None, None, {"retry": 0, "dead": False}, "drop", True, True),  # handlers still run
        (7, None, None, {"retry": False}, "drop", False, False),  # re-raised: not a death
    ],
)
def test_kill_and_discard_follow_sidekiq(
    version: int,
    retry_in: str | None,
    exhausted: str | None,
    extra: dict[str, Any],
    action: str,
    died: bool,
    called: bool,
) -> None:
    calls: list[int] = []

    def on_exhausted(job: dict[str, Any], exc: BaseException | None) -> str | None:
        calls.append(job["retry_count"])
        return exhausted

    hooks = Hooks(retry_in=lambda count, exc, job: retry_in, exhausted=on_exhausted)
    verdict = _decide(version, hooks, **extra)
    assert (verdict.action, verdict.died, bool(calls)) == (action, died, called)
    assert ("discarded_at" in verdict.job) == (version >= 8 and action == "drop")


@pytest.mark.parametrize(
    ("version", "failed_ago", "retry_count", "action"),
    [
        (7, 30, 0, "retry"),  # inside the window, under the count
        (7, 120, 0, "dead"),  # the window ran out
        (7, 30, 24, "dead"),  # 7.x: the count still counts
        (8, 30, 24, "retry"),  # 8.1: only the window
        (8, 120, 0, "dead"),
        (6, 120, 0, "retry"),  # 6.x knows no retry_for
    ],
)
def test_retry_for_is_a_window_from_the_first_failure(
    version: int, failed_ago: float, retry_count: int, action: str
) -> None:
    failed_at = time.time() - failed_ago
    extra = {"retry_for": 60, "retry_count": retry_count, "failed_at": failed_at}
    if version >= 8:
        extra["failed_at"] = int(failed_at * 1000)
    assert _decide(version, NO_HOOKS, **extra).action == action


def test_retry_for_is_written_as_whole_seconds_and_checked() -> None:
    app = celery_sidekiq.setup(Celery("retry_for", broker="sidekiq://localhost:1/0"))
    message = codec.sample_message("J", [1])
    message["properties"]["retry_for"] = timedelta(minutes=90)
    registry = CeleryRegistry(app)
    assert codec.job_from_message(message, "default", registry)["retry_for"] == 5400
    message["properties"]["retry_for"] = time.time()  # a time, not a duration
    with pytest.raises(codec.CodecError, match="a duration in seconds"):
        codec.job_from_message(message, "default", registry)


# -- backtrace format ---------------------------------------------------------------------------


def test_reads_sidekiq_641s_mime_backtrace_and_writes_strict_base64() -> None:
    assert backtrace.decompress(RUBY_641_BACKTRACE) == RUBY_641_LINES
    ours = backtrace.compress(RUBY_641_LINES)
    assert ours == "".join(RUBY_641_BACKTRACE.split())  # same zlib stream, strict Base64
    assert backtrace.decompress(RUBY_641_LINES) == RUBY_641_LINES  # Sidekiq < 6: a raw array


@given(st.lists(st.text()))
def test_backtrace_round_trips(lines: list[str]) -> None:
    encoded = backtrace.compress(lines)
    assert "\n" not in encoded
    assert backtrace.decompress(encoded) == lines


@pytest.mark.parametrize("value", ["%%%", "aGVsbG8=", 42])
def test_a_bad_backtrace_says_so(value: Any) -> None:
    with pytest.raises(backtrace.InvalidBacktrace):
        backtrace.decompress(value)


def test_lines_are_innermost_first() -> None:
    def inner() -> None:
        raise KeyError("x")

    exc = raised_from(inner)
    lines = backtrace.lines_of(exc)
    assert lines[0].endswith(":in `inner'") and lines[-1].endswith(":in `raised_from'")
    assert backtrace.lines_of(exc, 1) == lines[:1]


def raised_from(fn: Any) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


# -- middleware chain ---------------------------------------------------------------------------


def test_chain_order_skip_and_fail() -> None:
    calls: list[str] = []

    def link(name: str) -> Any:
        def run(job: dict[str, Any], call_next: Any) -> Any:
            calls.append(f"{name}>")
            if job["args"] == [name]:
                return f"skipped by {name}"
            if job["args"] == [f"fail {name}"]:
                raise RuntimeError(name)
            result = call_next()
            calls.append(f"<{name}")
            return result

        return run

    chain = Chain([link("a"), link("b")])
    assert chain.invoke({"args": []}, lambda: calls.append("task") or "done") == "done"
    assert calls == ["a>", "b>", "task", "<b", "<a"]
    calls.clear()
    assert chain.invoke({"args": ["b"]}, lambda: calls.append("task")) == "skipped by b"
    assert calls == ["a>", "b>", "<a"]
    with pytest.raises(RuntimeError, match="a"):
        chain.invoke({"args": ["fail a"]}, lambda: None)
    assert Chain().invoke({"args": []}, lambda: 42) == 42


# -- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, r"setup\(max_retries=-1\): use a whole number >= 0"),
        ({"max_retries": True}, r"setup\(max_retries=True\)"),
        ({"unknown_class": "drop"}, r"setup\(unknown_class='drop'\): use 'retry' .* or 'requeue'"),
        ({"middleware": ["mymodule.link"]}, r"each link must be a callable .* not its name"),
        ({"middleware": print and 3}, r"pass a list of callables"),
        ({"death_handlers": print}, r"setup\(death_handlers=.*\): give a list of callables"),
        ({"death_handlers": ["mymodule.on_death"]}, r"give a list of callables"),
    ],
)
def test_bad_options_fail_at_setup_saying_what_to_change(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        celery_sidekiq.setup(Celery("bad", broker="sidekiq://localhost:1/0"), **options)


# -- unknown classes (the intake's decisions) ------------------------------------------------------


@pytest.fixture
def intake() -> UnknownClass:
    app = Celery("intake", broker="sidekiq://localhost:1/0")
    celery_sidekiq.setup(app)

    @app.task(name="Known", shared=False)
    def known() -> None:
        """A task the intake lets through."""

    unknown = UnknownClass(app, CeleryRegistry(app), "retry", JobRetry(7))
    unknown.active = True
    return unknown


def test_intake_delivers_known_classes_and_everything_when_not_in_a_worker(
    intake: UnknownClass,
) -> None:
    known, missing = jobs.build("Known", []), jobs.build("Missing", [])
    assert intake("default", known, jobs.dumps(known)) is None
    intake.active = False
    assert intake("default", missing, jobs.dumps(missing)) is None


def test_intake_fails_unknown_classes_into_retry_and_keeps_retry_false_ones(
    intake: UnknownClass,
) -> None:
    job = jobs.build("Missing", [1], extra={"bid": "b"})
    before = time.time()
    where = intake("default", job, jobs.dumps(job))
    assert where is not None and where.target == "retry"
    stored = json.loads(where.payload)
    assert (stored["error_class"], stored["retry_count"], stored["bid"]) == (
        "celery.exceptions.NotRegistered",
        0,
        "b",
    )
    assert 15 <= where.at - before <= 25
    assert "enqueued_at" in job and "error_class" not in job  # the fetched job is left as it was
    never = jobs.build("Missing", [], retry=False)
    where = intake("default", never, jobs.dumps(never))
    assert where is not None and where.target == "dead"


def test_intake_looks_inside_activejob_wrappers(intake: UnknownClass) -> None:
    known, missing = activejob.wrap("Known", [1]), activejob.wrap("MissingJob", [1])
    assert intake("default", known, jobs.dumps(known)) is None
    where = intake("default", missing, jobs.dumps(missing))
    assert where is not None and where.target == "retry" and "'MissingJob'" in where.payload
    unreadable = {**missing, "args": ["not job data"]}  # the wrapper's own task fails it
    assert intake("default", unreadable, jobs.dumps(unreadable)) is None


def test_requeue_goes_round_once_then_parks(
    intake: UnknownClass, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake.mode = "requeue"
    clock = [1000.0]
    monkeypatch.setattr(retries.time, "monotonic", lambda: clock[0])
    job = jobs.build("Missing", [1])
    raw = jobs.dumps(job)
    assert intake("default", job, raw) == Divert.queue(raw)
    parked = intake("default", job, raw)
    assert parked is not None and parked.target == "schedule"
    assert json.loads(parked.payload) == {k: v for k, v in job.items() if k != "enqueued_at"}
    assert retries.REQUEUE_DELAY - 1 <= parked.at - time.time() <= retries.REQUEUE_DELAY
    clock[0] += retries.REQUEUE_WINDOW + 1  # forgotten: another lap is fine
    assert intake("default", job, raw) == Divert.queue(raw)


# -- the Redis side: a retry publish -------------------------------------------------


# Moving a job out of flight (settle.lua) is tested in tests/test_reliable_fetch.py.


def test_a_retry_publish_stores_the_carried_job_in_retry_at_the_eta(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    app = Celery("publisher", broker=broker_url)
    celery_sidekiq.setup(app)
    failed = jobs.build(
        "HardJob", [1], extra={"celery": {"kwargs": {"old": 1}}, "bid": "b", "retry_count": 0}
    )
    app.send_task(
        "HardJob", args=[2], countdown=30, **{codec.RETRY_JOB_PROPERTY: jobs.dumps(failed)}
    )
    ((member, score),) = redis.zrange("retry", 0, -1, withscores=True)
    stored = json.loads(member)
    assert stored["args"] == [2] and "celery" not in stored  # the retry's own args and kwargs
    assert {k: v for k, v in stored.items() if k not in ("args", "celery")} == {
        k: v for k, v in failed.items() if k not in ("args", "celery")
    }
    assert 25 <= score - time.time() <= 30
    assert redis.zcard("schedule") == 0 and not redis.keys("queue:*")
    app.close()


def test_self_retry_without_an_exception_still_records_sidekiqs_fields(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    app = Celery("direct", broker=broker_url)
    celery_sidekiq.setup(app)

    @app.task(bind=True, name="Direct", shared=False)
    def direct(self: Any) -> None:
        raise self.retry(countdown=5)  # no exc, and not inside an except block

    task = app.tasks["Direct"]  # finalizes the app: the task is wrapped
    job = jobs.build("Direct", [], extra={"bid": "b"})
    task.push_request(
        id=job["jid"],
        args=[],
        kwargs={},
        retries=0,
        called_directly=False,
        delivery_info={"routing_key": "default", "exchange": ""},
        properties={codec.RAW_JOB_PROPERTY: jobs.dumps(job)},
    )
    try:
        with pytest.raises(Retry):
            task.run()
    finally:
        task.pop_request()
    ((member, score),) = redis.zrange("retry", 0, -1, withscores=True)
    entry = json.loads(member)
    assert (entry["error_class"], entry["error_message"]) == (
        "celery.exceptions.Retry",
        "Retry in 5s",
    )
    assert (entry["retry_count"], entry["bid"], entry["jid"]) == (0, "b", job["jid"])
    assert 3 <= score - time.time() <= 5
    app.close()
