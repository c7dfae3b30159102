"""Every pure reader of what Redis holds, fuzzed with hostile input (tests/support/fuzzing.py).

The property, reader by reader: it returns, or raises its documented error and nothing else,
and what it returns can be written back (``job.dumps(...).encode("utf-8")``). A worker reads
a job after the job left its queue, so an exception of any other kind there loses or wedges
the job ("nothing lost, nothing wedged").

Bugs found in modules other readers own are kept as examples (``FOUND_ELSEWHERE``)
and all of them are fixed now; each example must pass.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kombu.utils import json as kombu_json
from support import fuzzing

from celery_sidekiq.retry import Failure, JobRetry, record_failure
from kombu_sidekiq import activejob as aj
from kombu_sidekiq import backtrace, codec
from kombu_sidekiq import job as jobs

REGISTRY = codec.ClassRegistry()

# Hostile values are large on purpose: their repr in a failure report may be too.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

#: Examples per property; FUZZ_EXAMPLES=20000 for a long run.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def writable(value: Any) -> str:
    """``value`` as the JSON a reader writes back; fails the test if it cannot be written."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    return text


def parsed(raw: bytes | str) -> dict[str, Any] | None:
    try:
        return jobs.parse(raw)
    except jobs.InvalidJob:
        event("refused by job.parse")
        return None


# -- job.parse: the one door ---------------------------------------------------------------------


@given(fuzzing.raw_jobs())
@FUZZ
def test_parse_returns_a_job_that_writes_back_as_it_was_read_or_raises_invalid_job(
    raw: bytes,
) -> None:
    job = parsed(raw)
    if job is None:
        return
    text = jobs.dumps(job)
    assert jobs.parse(text.encode("utf-8")) == job
    jobs.validate(job)


@pytest.mark.parametrize(
    "raw",
    [
        '{"class":"A","args":' + "[" * 101 + "]" * 101 + "}",
        '{"class":"A","args":[' + '{"a":' * 5000 + "1" + "}" * 5000 + "]}",
        '{"class":"A","args":["\\ud800"]}',
        '{"class":"A","args":[],"x":"\\udfff\\udfff"}',
        '{"class":"A","args":[1e400]}',
        '{"class":"A","args":[' + "1" * 5000 + "]}",
        '{"class":"A","args":[NaN]}',
        '{"class":"A","args":[-Infinity]}',
        b'{"class":"A","args":["\xff"]}',
        b'{"class":"A","args":["\xed\xa0\x80"]}',  # a surrogate, UTF-8 encoded (CESU)
        "[]",
        '"job"',
    ],
)
def test_what_parse_refuses(raw: str | bytes) -> None:
    with pytest.raises(jobs.InvalidJob):
        jobs.parse(raw)


def test_what_parse_keeps_at_the_edges() -> None:
    job = jobs.parse(
        '{"class":"A","args":[-0.0,1e-400,5e-324,'
        + "9" * 4300
        + "],"
        + '"x":'
        + "[" * 99
        + "]" * 99
        + "}"
    )
    assert math.copysign(1, job["args"][0]) == -1 and job["args"][1] == 0.0
    assert jobs.parse(jobs.dumps(job).encode("utf-8")) == job


# -- codec.message_from_job: what a worker receives -------------------------------------------------

OPTIONAL_TEXT_HEADERS = ("parent_id", "group", "expires", "shadow", "origin")


def check_envelope(message: dict[str, Any], raw: str) -> None:
    """The envelope can be written (JSON, UTF-8), its body is a protocol-2 body kombu's JSON
    reads, and every header Celery's worker reads has the type it expects."""
    writable(message)
    args, kwargs, embed = kombu_json.loads(message["body"])
    assert isinstance(args, list) and isinstance(kwargs, dict)
    for key in ("callbacks", "errbacks", "chain"):
        assert embed[key] is None or all(isinstance(sig, dict) for sig in embed[key])
    assert embed["chord"] is None or isinstance(embed["chord"], dict)
    headers = message["headers"]
    assert isinstance(headers["id"], str) and headers["id"]
    assert isinstance(headers["task"], str) and isinstance(headers["root_id"], str)
    for key in OPTIONAL_TEXT_HEADERS:
        assert headers[key] is None or isinstance(headers[key], str), key
    assert headers["group_index"] is None or type(headers["group_index"]) is int
    assert type(headers["retries"]) is int and headers["retries"] >= 0
    soft, hard = headers["timelimit"]
    for limit in (soft, hard):
        assert limit is None or (type(limit) in (int, float) and 0 <= limit <= 1e9)
    assert type(headers.get("ignore_result", False)) is bool
    assert all(isinstance(name, str) for name in headers.get("stamped_headers", []))
    assert isinstance(headers.get("stamps", {}), dict)
    assert type(headers.get("replaced_task_nesting", 0)) is int
    assert isinstance(message["properties"]["reply_to"], str)
    assert message["properties"][codec.RAW_JOB_PROPERTY] == raw


@given(fuzzing.jobs_with_wrong_types(writable=True))
@FUZZ
def test_message_from_job_never_raises_for_a_job_parse_accepted(job: dict[str, Any]) -> None:
    raw = fuzzing.encode(job)
    read = parsed(raw)
    if read is None:
        return
    check_envelope(codec.message_from_job(read, raw, "default", REGISTRY), raw)


@given(fuzzing.raw_jobs())
@FUZZ
def test_message_from_job_never_raises_for_any_bytes_parse_accepted(raw: bytes) -> None:
    job = parsed(raw)
    if job is None:
        return
    text = raw.decode("utf-8")
    check_envelope(codec.message_from_job(job, text, "default", REGISTRY), text)


@pytest.mark.parametrize(
    "ext",
    [
        {"retries": "x"},
        {"retries": [1]},
        {"retries": 10**400},
        {"timelimit": "ab"},
        {"timelimit": [1, 2, 3]},
        {"timelimit": ["x", {}]},
        {"timelimit": [10**400, -1]},
        {"id": {"a": 1}},
        {"id": ""},
        {"root_id": 5},
        {"group_index": "0"},
        {"group_index": True},
        {"expires": 1700000000},
        {"headers": {"task": 5, "id": [], "retries": "x", "x-trace": "kept"}},
        {"headers": "x"},
        {"callbacks": "t"},
        {"chain": [1, 2]},
        {"chord": []},
        {"kwargs": [1]},
        {"reply_to": {}},
        {"stamped_headers": "abc", "stamps": []},
        {"ignore_result": "yes"},
        {"replaced_task_nesting": "1"},
    ],
)
def test_a_wrong_typed_celery_value_is_ignored_and_the_job_still_runs(ext: dict[str, Any]) -> None:
    job = {"class": "A", "args": [1], "jid": "0123456789abcdef01234567", "celery": ext}
    raw = jobs.dumps(job)
    message = codec.message_from_job(jobs.parse(raw), raw, "default", REGISTRY)
    check_envelope(message, raw)
    headers = message["headers"]
    assert headers["task"] == "A" and headers["id"] == "0123456789abcdef01234567"
    assert headers.get("x-trace", "kept") == "kept"
    assert json.loads(message["body"])[0] == [1]


@pytest.mark.parametrize("retry_count", [-(10**400), "2", 2.5, True, 10**4299 - 1])
def test_a_wrong_typed_retry_count_counts_no_retries(retry_count: Any) -> None:
    job = jobs.parse(jobs.dumps({"class": "A", "args": [], "retry_count": retry_count}))
    message = codec.message_from_job(job, "{}", "default", REGISTRY)
    assert message["headers"]["retries"] == 0
    writable(message)


# -- codec.retry_job: the job a Celery retry writes back --------------------------------------------

bodies = (
    st.tuples(
        fuzzing.hostile_values() | fuzzing.deep_values(),
        fuzzing.hostile_values(),
        fuzzing.hostile_values(),
    )
    | st.tuples(st.lists(fuzzing.hostile_values(), max_size=3), st.just({}), st.just({}))
    | fuzzing.hostile_values()
)


@given(fuzzing.jobs_with_wrong_types(writable=True), bodies)
@FUZZ
def test_retry_job_returns_a_writable_job_or_a_codec_error(
    carried: dict[str, Any], body: Any
) -> None:
    try:
        job = codec.retry_job(fuzzing.encode(carried), body)
    except (jobs.InvalidJob, codec.CodecError):
        return
    jobs.parse(jobs.dumps(job).encode("utf-8"))


@pytest.mark.parametrize(
    "body",
    [
        [["\ud800"], {}, {}],
        [[float("nan")], {}, {}],
        [fuzzing.nested(5000), {}, {}],
        [[fuzzing.nested(101)], {}, {}],
        [[object()], {}, {}],
        [5, {}, {}],
        [[], [1], {}],
        [[], {}, "x"],
    ],
)
def test_a_retry_whose_args_cannot_be_written_is_a_codec_error(body: Any) -> None:
    with pytest.raises(codec.CodecError):
        codec.retry_job('{"class":"A","args":[],"jid":"j"}', body)


# -- ActiveJob ----------------------------------------------------------------------------------


@given(fuzzing.activejob_data(writable=True), st.sampled_from(aj.WRAPPER_CLASSES))
@FUZZ
def test_unwrap_gives_values_kombu_json_carries_or_an_activejob_decode_error(
    data: Any, wrapper: str
) -> None:
    job = parsed(fuzzing.encode({"class": wrapper, "args": [data], "jid": "j"}))
    if job is None:
        return
    try:
        inner = aj.unwrap(job)
    except aj.ActiveJobDecodeError:
        event("ActiveJobDecodeError")
        return
    assert isinstance(inner.klass, str) and inner.klass
    kombu_json.loads(kombu_json.dumps([inner.args, inner.kwargs, {}]))
    writable(inner.headers)


@given(fuzzing.activejob_values() | fuzzing.deep_values(), st.text(max_size=5))
@FUZZ
def test_decode_value_of_anything_returns_or_raises_activejob_decode_error(
    value: Any, where: str
) -> None:
    with contextlib.suppress(aj.ActiveJobDecodeError):
        aj.decode_value(value, where)


@given(
    st.lists(fuzzing.activejob_values(), max_size=3)
    | fuzzing.hostile_values()
    | fuzzing.deep_values()
)
@FUZZ
def test_decode_arguments_of_anything_returns_or_raises_activejob_decode_error(
    arguments: Any,
) -> None:
    try:
        args, kwargs = aj.decode_arguments(arguments)
    except aj.ActiveJobDecodeError:
        return
    assert isinstance(args, list) and isinstance(kwargs, dict)


@given(
    fuzzing.hostile_values()
    | st.sampled_from(fuzzing.TIMES)
    | st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)", fullmatch=True)
)
@FUZZ
def test_parse_time_returns_an_aware_datetime_or_raises_activejob_decode_error(value: Any) -> None:
    try:
        when = aj.parse_time(value)
    except aj.ActiveJobDecodeError:
        return
    assert when.utcoffset() is not None
    kombu_json.loads(kombu_json.dumps(when))


@given(fuzzing.activejob_data())
@FUZZ
def test_metadata_of_anything_returns_or_raises_activejob_decode_error(data: Any) -> None:
    with contextlib.suppress(aj.ActiveJobDecodeError):
        aj.Metadata.from_job_data(data)


def test_a_value_nested_past_rubys_limit_is_a_decode_error_not_a_recursion_error() -> None:
    for value in (fuzzing.nested(101), fuzzing.nested(5000, "dict")):
        with pytest.raises(aj.ActiveJobDecodeError, match="nested deeper"):
            aj.decode_value(value)
        with pytest.raises(aj.ActiveJobDecodeError, match="nested deeper"):
            aj.decode_arguments([value])
    assert aj.decode_value(fuzzing.nested(99)) == fuzzing.nested(99)


# -- job.to_epoch_seconds -------------------------------------------------------------------------


@given(fuzzing.hostile_values(writable=True))
@FUZZ
def test_to_epoch_seconds_of_any_json_value_is_a_finite_float_or_none(value: Any) -> None:
    seconds = jobs.to_epoch_seconds(value)
    assert seconds is None or (isinstance(seconds, float) and math.isfinite(seconds))


# -- celery_sidekiq.retry: the failure fields and the verdict, on hostile jobs ----------------------


@given(
    fuzzing.jobs_with_wrong_types(writable=True),
    st.sampled_from((6, 7, 8)),
    st.booleans(),
    st.booleans(),
)
@FUZZ
def test_the_retry_rules_record_a_failure_that_writes_back_and_reads_again(
    job: dict[str, Any], version: int, exhausted: bool, keep: bool
) -> None:
    read = parsed(fuzzing.encode(job))
    if read is None:
        return
    failure = Failure("ValueError", "boom", ValueError("boom"))
    recorded = dict(read)
    count = record_failure(recorded, failure, "default", version)
    assert type(count) is int
    jobs.parse(jobs.dumps(recorded).encode("utf-8"))
    verdict = JobRetry(version).decide(
        dict(read), failure, "default", exhausted=exhausted, keep=keep
    )
    assert verdict.action in ("retry", "dead", "drop")
    jobs.parse(jobs.dumps(verdict.job).encode("utf-8"))
    if verdict.action != "drop":
        jobs.parse(verdict.divert().payload.encode("utf-8"))


# -- kombu_sidekiq.backtrace -----------------------------------------------------------------------


def packed(data: bytes, mime: bool, cut: int) -> str:
    text = base64.b64encode(zlib.compress(data)[: -cut or None]).decode("ascii")
    return "\n".join(text[i : i + 60] for i in range(0, len(text), 60)) if mime else text


compressed = st.builds(
    packed,
    fuzzing.hostile_values().map(lambda v: fuzzing.encode(v).encode())
    | fuzzing.deep_texts().map(str.encode)
    | st.sampled_from(fuzzing.NUMBER_TEXTS).map(lambda t: f"[{t}]".encode())
    | st.binary(max_size=32),
    st.booleans(),
    st.sampled_from((0, 0, 0, 1, 4)),
)


@given(compressed | fuzzing.hostile_values() | fuzzing.deep_values())
@FUZZ
def test_decompress_gives_lines_utf8_carries_or_raises_invalid_backtrace(value: Any) -> None:
    try:
        lines = backtrace.decompress(value)
    except backtrace.InvalidBacktrace:
        return
    assert all(isinstance(line, str) for line in lines)
    writable(lines)


@pytest.mark.parametrize(
    "data",
    [
        b'["\\ud800 in `x\'"]',
        b"[" * 5000 + b"]" * 5000,
        b"[" + b"[" * 900 + b"]" * 900 + b"]",
        b"[1e400, NaN]",
        b"\xff\xfe[\x00]\x00",
    ],
)
def test_hostile_backtraces_decode_or_are_invalid(data: bytes) -> None:
    try:
        lines = backtrace.decompress(packed(data, False, 0))
    except backtrace.InvalidBacktrace:
        return
    writable(lines)


def test_a_backtrace_that_inflates_past_the_cap_is_refused_without_inflating_it() -> None:
    bomb = base64.b64encode(zlib.compress(b"[" + b" " * (backtrace.MAX_INFLATED + 1) + b"]", 9))
    with pytest.raises(backtrace.InvalidBacktrace, match="inflates to more"):
        backtrace.decompress(bomb.decode("ascii"))


def test_a_truncated_backtrace_is_invalid() -> None:
    with pytest.raises(backtrace.InvalidBacktrace, match="truncated"):
        backtrace.decompress(packed(b'["a"]', False, 4))


# -- found by fuzzing in job.py and retry.py, fixed: each must now pass ----------------------------------

BIG = 10**400
FOUND_ELSEWHERE = [
    pytest.param(
        lambda: jobs.to_epoch_seconds(
            jobs.parse('{"class":"A","args":[],"created_at":1' + "0" * 400 + "}")["created_at"]
        ),
        id="job.to_epoch_seconds raises OverflowError on an integer past a double",
    ),
    pytest.param(
        lambda: JobRetry(7).decide(
            {"class": "A", "args": [], "retry_for": BIG}, Failure("E", "m"), "q"
        ),
        id="retry.out_of_retries: float + huge retry_for raises OverflowError",
    ),
    pytest.param(
        lambda: JobRetry(7).decide(
            {"class": "A", "args": [], "retry_count": 1, "failed_at": BIG, "retry_for": 5},
            Failure("E", "m"),
            "q",
        ),
        id="retry.out_of_retries: huge failed_at raises OverflowError",
    ),
    pytest.param(
        lambda: jobs.parse(
            jobs.dumps(
                JobRetry(7)
                .decide({"class": "A", "args": [], "retry_queue": 5}, Failure("E", "m"), "q")
                .job
            )
        ),
        id="retry.record_failure copies a non-string retry_queue into queue",
    ),
    pytest.param(
        lambda: jobs.dumps(
            JobRetry(7)
            .decide({"class": "A", "args": [], "retry_count": 10**4300 - 1}, Failure("E", "m"), "q")
            .job
        ),
        id="retry.record_failure: retry_count + 1 past 4300 digits cannot be written",
    ),
    pytest.param(
        lambda: (
            JobRetry(7)
            .decide(
                {"class": "A", "args": [], "retry": BIG * 10, "retry_count": BIG},
                Failure("E", "m"),
                "q",
            )
            .divert()
        ),
        id="retry.Verdict.divert: a huge backoff overflows time.time() + delay",
    ),
]


@pytest.mark.parametrize("call", FOUND_ELSEWHERE)
def test_bugs_found_elsewhere_are_fixed(call: Any) -> None:
    call()


def test_a_literal_lone_surrogate_in_a_str_is_refused_too() -> None:
    with pytest.raises(jobs.InvalidJob, match="surrogate"):
        jobs.parse('{"class":"A","args":["\ud800"]}')
