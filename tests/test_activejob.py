"""ActiveJob envelopes and arguments, both ways: pure functions, no Redis.

Fixtures in tests/fixtures/activejob/: ``rails61_*`` are real payloads that Debian's Rails 6.1
(ruby-activejob) wrote through Sidekiq 6.4.1 (tests/ruby/activejob_jobs.rb); ``rails71_sidekiq7``
and ``rails80_sidekiq8`` are built from Rails 7.1/8.0's ``ActiveJob::Core#serialize`` and
serializers (``scheduled_at``, ``iso8601(9)``, BigDecimal and Range serializers, TimeWithZone's
``time_zone``) and Sidekiq 8's wrapper name and millisecond timestamps.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.utils import json as kombu_json
from support.values import typed

from celery_sidekiq import activejob
from kombu_sidekiq import activejob as aj
from kombu_sidekiq import codec
from kombu_sidekiq import job as jobs

FIXTURES = Path(__file__).parent / "fixtures" / "activejob"
REGISTRY = codec.ClassRegistry()
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
UTC = timezone.utc


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text().strip()


def consume(
    raw: str, registry: codec.Registry = REGISTRY
) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """What a worker gets for ``raw``: headers, args and kwargs as the pool decodes the body."""
    message = codec.message_from_job(jobs.parse(raw), raw, "default", registry)
    args, kwargs, embed = kombu_json.loads(message["body"])
    assert embed == EMBED
    assert message["properties"][codec.RAW_JOB_PROPERTY] == raw  # a restore puts it back as it was
    return message["headers"], args, kwargs


# -- Ruby -> Python: the formats Rails writes -------------------------------------------------


def test_a_real_rails_6_1_job_runs_as_its_activejob_class_with_every_value_decoded() -> None:
    headers, args, kwargs = consume(fixture("rails61_sidekiq64.json"))
    assert headers["task"] == "PyAjJob"
    assert headers["id"] == "c8ba5d2694a11ce24b6d70df"  # the jid, as for any Sidekiq job
    assert typed(args) == typed(
        [
            1, 2.5, "two", None, True,
            "sym",                                   # :sym
            [1, ["x"]],                              # [1, [:x]]
            {"a": 1, "b": ["sym"]},                  # {a: 1, "b" => [:sym]}: markers gone
            {},
            {"k": 1},                                # HashWithIndifferentAccess
            datetime(2024, 1, 2, 3, 4, 5, 123456, UTC),  # nanoseconds cut to microseconds
            datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=-4))),  # TimeWithZone
            date(2024, 2, 29),
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),  # DateTime
            aj.Duration(300, {"minutes": 5}),
            aj.Duration(2629746, {"months": 1}),
            aj.Duration(9000, {"hours": 2.5}),
            "1.23",                                  # Rails < 7.1 sends BigDecimal as a string
            aj.GlobalID("gid://celery-sidekiq-test/User/42"),
            "String",                                # a Module: its name, never resolved
        ]
    )  # fmt: skip
    assert typed(kwargs) == typed({"key": "kw", "at": date(2024, 1, 1)})


def test_the_task_reads_the_activejob_metadata_from_its_request_headers() -> None:
    headers, _, _ = consume(fixture("rails61_sidekiq64.json"))
    meta = aj.Metadata.from_job_data(headers[aj.METADATA_HEADER])
    assert meta == aj.Metadata(
        job_class="PyAjJob",
        job_id="a39fa755-b031-463a-8a5b-8c58318173b6",
        provider_job_id="c8ba5d2694a11ce24b6d70df",  # the jid, as JobWrapper#perform sets it
        queue_name="default",
        priority=None,
        executions=0,
        exception_executions={},
        locale="en",
        timezone="America/New_York",
        enqueued_at=datetime(2026, 11, 28, 1, 3, 39, tzinfo=UTC),
        scheduled_at=None,
    )
    json.dumps(headers)  # headers stay plain JSON


def test_a_rails_7_1_job_decodes_bigdecimal_range_and_zoned_times_and_its_timestamps() -> None:
    headers, args, kwargs = consume(fixture("rails71_sidekiq7.json"))
    assert headers["task"] == "InvoiceJob"
    assert typed(args) == typed(
        [
            aj.GlobalID("gid://shop/Invoice/7"),
            Decimal("9.99"),
            aj.Range(1, 5),
            aj.Range(date(2026, 1, 1), None, exclude_end=True),
            datetime(2026, 11, 27, 18, 45, 5, 123456, tzinfo=timezone(timedelta(hours=-5))),
        ]
    )
    assert kwargs == {"notify": True}
    meta = aj.Metadata.from_job_data(headers[aj.METADATA_HEADER])
    assert (meta.priority, meta.executions, meta.locale, meta.timezone) == (
        10,
        2,
        "de",
        "Europe/Berlin",
    )
    assert meta.exception_executions == {"[Net::ReadTimeout]": 2}
    assert meta.enqueued_at == datetime(2026, 11, 27, 23, 45, 5, 123456, UTC)
    assert meta.scheduled_at == datetime(2026, 11, 27, 23, 50, tzinfo=UTC)


def test_sidekiq_8s_wrapper_class_and_millisecond_timestamps() -> None:
    headers, args, kwargs = consume(fixture("rails80_sidekiq8.json"))
    assert headers["task"] == "Billing::ReminderJob"
    account, wait = args
    assert (account.app, account.model_name, account.model_id) == ("shop", "Admin::Account", "a/b")
    assert isinstance(wait, timedelta) and wait == timedelta(days=3) and wait.parts == {"days": 3}
    assert kwargs == {}
    assert aj.Metadata.from_job_data(headers[aj.METADATA_HEADER]).scheduled_at is None


def test_a_scheduled_payload_without_enqueued_at_is_read_too() -> None:
    headers, args, _ = consume(fixture("rails61_sidekiq64_scheduled.json"))
    assert (headers["task"], args) == ("PyAjJob", [1])


class Mapped(codec.ClassRegistry):
    def task_for(self, klass: str) -> str:
        return {"InvoiceJob": "billing.invoice"}.get(klass, klass)


def test_the_activejob_class_goes_through_the_sidekiq_class_mapping() -> None:
    headers, _, _ = consume(fixture("rails71_sidekiq7.json"), Mapped())
    assert headers["task"] == "billing.invoice"


def test_an_unknown_serializer_leaves_the_job_to_its_wrapper_task_with_the_reason() -> None:
    raw = fixture("rails61_custom_serializer.json")
    headers, args, kwargs = consume(raw)
    assert headers["task"] == aj.RAILS_WRAPPER  # whose task raises ActiveJobDecodeError
    reason = headers[codec.UNWRAP_ERROR_HEADER]
    assert "MoneySerializer" in reason and "PyAjJob" in reason and "arguments[1]" in reason
    assert args == jobs.parse(raw)["args"] and kwargs == {}
    assert aj.METADATA_HEADER not in headers


def activejob_job(arguments: Any, **data: Any) -> dict[str, Any]:
    job_data = {"job_class": "PyAjJob", "job_id": "j-1", "arguments": arguments, **data}
    return jobs.build(aj.RAILS_WRAPPER, [job_data], extra={"wrapped": "PyAjJob"})


def ser(serializer: str, **fields: Any) -> dict[str, Any]:
    """A value as ActiveJob's ``serializer`` writes it."""
    return {"_aj_serialized": serializer, **fields}


def sym(name: str) -> dict[str, Any]:
    return ser(aj.SYMBOL_SERIALIZER, value=name)


BAD_JOBS = [
    (jobs.build(aj.RAILS_WRAPPER, []), "takes one argument"),
    (jobs.build(aj.SIDEKIQ8_WRAPPER, [{"job_class": "A", "arguments": []}, 2]), "takes one"),
    (jobs.build(aj.RAILS_WRAPPER, [{"job_id": "1", "arguments": []}]), "'job_class'"),
    (activejob_job(None), "'arguments' must be a JSON array"),
    (activejob_job([{"_aj_serialized": 7}]), "unknown ActiveJob serializer 7"),
    (activejob_job([ser(aj.TIME_SERIALIZER, value="2024-01-02T03:04:05")]), "offset"),
    (activejob_job([ser(aj.DATE_SERIALIZER, value="2024-02-30")]), "day is out of range"),
    (activejob_job([ser(aj.DURATION_SERIALIZER, value=1, parts=[["weekdays", 1]])]), "weekdays"),
    (activejob_job([ser(aj.BIG_DECIMAL_SERIALIZER, value="1,5")]), "decimal"),
    (activejob_job([ser(aj.RANGE_SERIALIZER, begin=1, end=2)]), "exclude_end"),
    (activejob_job([{"_aj_globalid": "User/42"}]), "GlobalID"),
    (activejob_job([{"a": 1, "_aj_symbol_keys": "a"}]), "must list key names"),
    (activejob_job([], enqueued_at="yesterday"), "enqueued_at"),
    (activejob_job([], executions="0"), "executions"),
]


@pytest.mark.parametrize(("job", "reason"), BAD_JOBS)
def test_a_job_that_cannot_be_read_without_guessing_runs_as_its_wrapper_and_says_why(
    job: dict[str, Any], reason: str
) -> None:
    raw = jobs.dumps(job)
    headers, args, _ = consume(raw)
    assert headers["task"] == job["class"]
    assert reason in headers[codec.UNWRAP_ERROR_HEADER]
    assert args == job["args"]
    with pytest.raises(aj.ActiveJobDecodeError, match=re.escape(reason)):
        aj.unwrap(job)


def test_hash_markers_are_read_in_rubys_order_and_only_the_one_acted_on_is_removed() -> None:
    # Outcomes checked against Rails 6.1's ActiveJob::Arguments.deserialize.
    decode = aj.decode_value
    assert decode({"a": 1, "_aj_hash_with_indifferent_access": True, "_aj_symbol_keys": ["a"]}) == {
        "a": 1,
        "_aj_symbol_keys": ["a"],
    }
    assert decode(
        {"a": 1, "_aj_hash_with_indifferent_access": False, "_aj_symbol_keys": ["a"]}
    ) == {"a": 1}
    assert decode({"a": 1, "_aj_symbol_keys": None, "_aj_ruby2_keywords": ["a"]}) == {"a": 1}
    assert decode({"_aj_globalid": "gid://x/User/1", "a": 1}) == {
        "_aj_globalid": "gid://x/User/1",
        "a": 1,
    }
    assert decode({"a": 1}) == {"a": 1}  # no marker at all (hand-written payloads)


def test_only_a_trailing_keywords_hash_becomes_kwargs() -> None:
    kw = {"a": 1, "_aj_ruby2_keywords": ["a"]}
    assert aj.decode_arguments([kw, 2]) == ([{"a": 1}, 2], {})
    assert aj.decode_arguments([[kw]]) == ([[{"a": 1}]], {})
    assert aj.decode_arguments([2, {"a": 1, "b": 2, "_aj_ruby2_keywords": ["a"]}]) == (
        [2],
        {"a": 1, "b": 2},
    )
    assert aj.decode_arguments([{"a": 1, "_aj_symbol_keys": ["a"]}]) == ([{"a": 1}], {})


json_keys = st.sampled_from([*aj.RESERVED_KEYS, "value", "parts", "begin", "end", "exclude_end"])
# What job.parse lets through: finite numbers, and strings UTF-8 can carry (no lone surrogates).
any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            json_keys | st.text(st.characters(exclude_categories=["Cs"]), max_size=3),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(any_json, st.sampled_from(aj.WRAPPER_CLASSES))
@settings(max_examples=300, deadline=None)
def test_any_json_in_a_wrapper_job_is_consumed_without_raising(
    arguments: Any, wrapper: str
) -> None:
    job = jobs.build(wrapper, [{"job_class": "X", "job_id": "1", "arguments": arguments}])
    raw = jobs.dumps(job)
    message = codec.message_from_job(jobs.parse(raw), raw, "default", REGISTRY)
    assert message["headers"]["task"] in ("X", wrapper)
    if message["headers"]["task"] == wrapper:
        assert message["headers"][codec.UNWRAP_ERROR_HEADER]
    kombu_json.loads(message["body"])


# -- Python -> Ruby: the format we write ---------------------------------------------------------


def test_wrap_writes_the_envelope_and_job_data_of_rails_6_1s_sidekiq_adapter() -> None:
    job = aj.wrap("InvoiceJob", [42], {"notify": True}, queue="mailers", priority=3)
    real = jobs.parse(fixture("rails61_sidekiq64.json"))
    assert set(job) == set(real)
    assert (job["class"], job["wrapped"], job["queue"], job["retry"]) == (
        aj.RAILS_WRAPPER,
        "InvoiceJob",
        "mailers",
        True,
    )
    assert isinstance(job["created_at"], float) and isinstance(job["enqueued_at"], float)
    (data,) = job["args"]
    assert list(data) == list(real["args"][0])  # Rails' keys, in Rails' order
    assert data["arguments"] == [42, {"notify": True, "_aj_ruby2_keywords": ["notify"]}]
    assert (data["job_class"], data["queue_name"], data["priority"], data["provider_job_id"]) == (
        "InvoiceJob",
        "mailers",
        3,
        None,
    )
    assert (data["executions"], data["exception_executions"], data["locale"], data["timezone"]) == (
        0,
        {},
        "en",
        None,
    )
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", data["job_id"]
    )
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["enqueued_at"]
    )  # Time.now.utc.iso8601


def test_for_rails_7_1_timestamps_have_nanoseconds_and_scheduled_at_is_written() -> None:
    now = aj.wrap("A", rails_version="7.1")["args"][0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", now["enqueued_at"])
    assert list(now)[-1] == "scheduled_at" and now["scheduled_at"] is None
    at = datetime(2030, 1, 2, 3, 4, 5, 678901, UTC).timestamp()
    later = aj.wrap("A", at=at, rails_version="8.0")
    assert "enqueued_at" not in later  # a schedule entry, as Sidekiq 7.1.2+ writes them
    assert later["args"][0]["scheduled_at"] == "2030-01-02T03:04:05.678901000Z"
    assert "scheduled_at" not in aj.wrap("A", at=at)["args"][0]  # Rails 6.1 has no such key


def test_the_wrapper_class_and_timestamps_follow_the_sidekiq_version() -> None:
    job = aj.wrap("A", sidekiq_version=8)
    assert job["class"] == aj.SIDEKIQ8_WRAPPER == aj.wrapper_class(8)
    assert isinstance(job["created_at"], int) and isinstance(job["enqueued_at"], int)
    assert aj.wrapper_class(6) == aj.wrapper_class(7) == aj.RAILS_WRAPPER


def test_python_values_are_encoded_the_activejob_way() -> None:
    ny = ZoneInfo("America/New_York")
    arguments = aj.encode_arguments(
        [
            aj.Symbol("paid"),
            {"plain": 1, aj.Symbol("sym"): [aj.Symbol("x")]},
            aj.GlobalID.create("shop", "User", 42),
            datetime(2024, 1, 2, 3, 4, 5, 123456, UTC),
            datetime(2024, 6, 1, 12, 0, tzinfo=ny),
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            date(2024, 2, 29),
            timedelta(days=2, seconds=30),
            timedelta(seconds=-1.5),
            aj.Duration(2629746, {"months": 1}),
            Decimal("9.99"),
            range(1, 5),
            aj.Range(date(2024, 1, 1), None),
            (1, 2),
        ],
        {"note": "x"},
        rails_version="7.1",
    )
    assert arguments == [
        sym("paid"),
        {"plain": 1, "sym": [sym("x")], "_aj_symbol_keys": ["sym"]},
        {"_aj_globalid": "gid://shop/User/42"},
        ser(aj.TIME_SERIALIZER, value="2024-01-02T03:04:05.123456000Z"),
        ser(
            aj.TIME_WITH_ZONE_SERIALIZER,
            value="2024-06-01T12:00:00.000000000-04:00",
            time_zone="America/New_York",
        ),
        ser(aj.TIME_SERIALIZER, value="2024-01-02T03:04:05.000000000+05:30"),
        ser(aj.DATE_SERIALIZER, value="2024-02-29"),
        ser(aj.DURATION_SERIALIZER, value=172830, parts=[[sym("days"), 2], [sym("seconds"), 30]]),
        ser(aj.DURATION_SERIALIZER, value=-1.5, parts=[[sym("seconds"), -1.5]]),
        ser(aj.DURATION_SERIALIZER, value=2629746, parts=[[sym("months"), 1]]),
        ser(aj.BIG_DECIMAL_SERIALIZER, value="9.99"),
        ser(aj.RANGE_SERIALIZER, begin=1, end=5, exclude_end=True),
        ser(
            aj.RANGE_SERIALIZER,
            begin=ser(aj.DATE_SERIALIZER, value="2024-01-01"),
            end=None,
            exclude_end=False,
        ),
        [1, 2],
        {"note": "x", "_aj_ruby2_keywords": ["note"]},
    ]


def test_before_rails_7_1_zoned_times_carry_no_zone_name() -> None:
    (arg,) = aj.encode_arguments([datetime(2024, 6, 1, tzinfo=ZoneInfo("Europe/Berlin"))])
    assert arg == {
        "_aj_serialized": aj.TIME_WITH_ZONE_SERIALIZER,
        "value": "2024-06-01T00:00:00.000000000+02:00",
    }


@pytest.mark.parametrize(
    ("args", "kwargs", "rails", "error"),
    [
        ([Decimal("1.5")], {}, "6.1", "no BigDecimal serializer"),
        ([range(3)], {}, "7.0", "no Range serializer"),
        ([range(0, 6, 2)], {}, "7.1", "step"),
        ([datetime(2024, 1, 1)], {}, "6.1", "naive"),
        (
            [datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=30)))],
            {},
            "6.1",
            "whole minutes",
        ),
        ([{"_aj_globalid": "gid://a/B/1"}], {}, "6.1", "reserves"),
        ([], {"_aj_symbol_keys": 1}, "6.1", "reserves"),
        ([{1: "x"}], {}, "6.1", "keys must be strings"),
        ([math.nan], {}, "6.1", "no JSON form"),
        ([[object()]], {}, "6.1", "args[0][0]: ActiveJob cannot carry a object"),
        ([{"a": {1, 2}}], {}, "6.1", "args[0]['a']: ActiveJob cannot carry a set"),
    ],
)
def test_values_activejob_cannot_carry_fail_with_where_and_what_to_do(
    args: list[Any], kwargs: dict[str, Any], rails: str, error: str
) -> None:
    with pytest.raises(aj.ActiveJobEncodeError, match=re.escape(error)):
        aj.encode_arguments(args, kwargs, rails)


@pytest.mark.parametrize("version", ["6.0", "5.2", "seven", "", "7"])
def test_a_rails_version_we_cannot_write_for_fails_saying_what_to_give(version: str) -> None:
    with pytest.raises(ValueError, match=r"rails_version=.*'MAJOR\.MINOR', 6\.1 or later"):
        aj.parse_rails_version(version)
    assert aj.parse_rails_version("8.0.2") == (8, 0)


# -- the value types ---------------------------------------------------------------------------


def test_globalid_parts_and_creation() -> None:
    gid = aj.GlobalID.create("shop", "Admin::Account", "a/b c", tenant="x")
    assert gid.gid == "gid://shop/Admin::Account/a%2Fb%20c?tenant=x"
    assert (gid.app, gid.model_name, gid.model_id, gid.params) == (
        "shop",
        "Admin::Account",
        "a/b c",
        {"tenant": "x"},
    )
    assert str(gid) == gid.gid
    with pytest.raises(ValueError, match="not a GlobalID"):
        aj.GlobalID("gid://shop/User")


def test_duration_is_a_timedelta_that_keeps_rails_parts() -> None:
    month = aj.Duration(2629746, {"months": 1})
    assert (
        month == timedelta(seconds=2629746)
        and month.parts == {"months": 1}
        and month.value == 2629746
    )
    assert aj.Duration(90).parts == {"seconds": 90}
    assert aj.Duration(-86401.5).parts == {"days": -1, "seconds": -1.5}
    for copied in (copy.deepcopy(month), pickle.loads(pickle.dumps(month))):
        assert type(copied) is aj.Duration and copied.parts == month.parts and copied == month
    with pytest.raises(ValueError, match="unknown Duration parts"):
        aj.Duration(1, {"fortnights": 1})


def test_range_conversions() -> None:
    assert aj.Range(1, 3).to_range() == range(1, 4)
    assert aj.Range(1, 3, exclude_end=True).to_range() == range(1, 3)
    with pytest.raises(ValueError, match="integer range"):
        aj.Range(1, None).to_range()


def test_decoded_values_survive_the_json_of_a_celery_message() -> None:
    values = [
        aj.GlobalID("gid://a/B/1"),
        aj.Duration(60, {"minutes": 1}),
        aj.Range(date(2024, 1, 1), datetime(2024, 1, 2, tzinfo=UTC)),
        Decimal("1.10"),
    ]
    assert typed(kombu_json.loads(kombu_json.dumps(values))) == typed(values)


def test_times_print_as_ruby_prints_them() -> None:
    assert aj.format_time(datetime(2024, 1, 2, 3, 4, 5, 6, UTC)) == "2024-01-02T03:04:05.000006000Z"
    assert (
        aj.format_time(datetime(999, 1, 2, tzinfo=timezone(-timedelta(hours=9, minutes=30))), 0)
        == "0999-01-02T00:00:00-09:30"
    )
    assert aj.parse_time("2024-01-02T03:04:05.1+0530") == datetime(
        2024, 1, 2, 3, 4, 5, 100000, timezone(timedelta(hours=5, minutes=30))
    )


# -- properties --------------------------------------------------------------------------------

offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=offsets | st.timezones(),
).filter(
    lambda dt: dt.utcoffset() % timedelta(minutes=1) == timedelta(0)
)  # ISO 8601 has no seconds
keys = st.text(max_size=5).filter(lambda k: k not in aj.RESERVED_KEYS)
global_ids = st.builds(
    aj.GlobalID.create,
    st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
    st.from_regex(r"[A-Z][a-z]{0,5}(::[A-Z][a-z]{0,5})?", fullmatch=True),
    st.integers(0) | st.text(min_size=1),
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text(max_size=5).map(aj.Symbol)
    | aware_datetimes
    | st.dates()
    | st.timedeltas(min_value=timedelta(days=-(10**4)), max_value=timedelta(days=10**4))
    | st.decimals(allow_nan=False, allow_infinity=False)
    | global_ids
    | st.builds(aj.Range, st.integers() | st.none(), st.integers() | st.none(), st.booleans())
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(keys | keys.map(aj.Symbol), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.lists(values, max_size=4), st.dictionaries(keys, values, max_size=3))
@settings(max_examples=200, deadline=None)
def test_what_python_encodes_decodes_to_the_same_values(
    args: list[Any], kwargs: dict[str, Any]
) -> None:
    arguments = json.loads(jobs.dumps({"a": aj.encode_arguments(args, kwargs, "7.1")}))["a"]
    decoded_args, decoded_kwargs = aj.decode_arguments(arguments)
    assert typed(decoded_args) == typed(_received(args))
    assert typed(decoded_kwargs) == typed(_received(kwargs))
    # and through a Celery message body, as the worker's pool reads it
    assert typed(kombu_json.loads(kombu_json.dumps([decoded_args, decoded_kwargs]))) == typed(
        [decoded_args, decoded_kwargs]
    )


def _received(value: Any) -> Any:
    """What a Python task receives for a value Python sent: symbols as str, tuples as lists,
    times as the same instant at the same offset, timedeltas as Durations."""
    if isinstance(value, (list, tuple)):
        return [_received(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _received(v) for k, v in value.items()}
    if isinstance(value, aj.Symbol):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(timezone(value.utcoffset() or timedelta(0)))
    if isinstance(value, timedelta):
        return aj.Duration(value.total_seconds()) if type(value) is timedelta else value
    if isinstance(value, aj.Range):
        return aj.Range(_received(value.begin), _received(value.end), value.exclude_end)
    return value


# -- celery_sidekiq.activejob: options fail when given, saying what to change ---------------------


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"wait": 1, "wait_until": 2.0}, "wait or wait_until, not both"),
        ({"wait_until": datetime(2030, 1, 1)}, "naive: attach a tzinfo"),
        ({"priority": "high"}, "priority='high'): give an integer"),
        ({"retry": -1}, "retry=-1): give true, false or a count >= 0"),
        ({"queue": ""}, "queue=''): give a non-empty string"),
        ({"rails_version": "5.2"}, "6.1 or later"),
    ],
)
def test_activejob_job_options_are_checked_up_front(options: dict[str, Any], error: str) -> None:
    app = Celery("options", broker="sidekiq://127.0.0.1:1/0")  # never connected
    with pytest.raises(ValueError, match=re.escape(error)):
        activejob.Job(app, "InvoiceJob", **options)
    assert activejob.Job(app, "InvoiceJob", wait=timedelta(seconds=5)).due_at() is not None
