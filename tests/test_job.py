"""The Sidekiq job model: parsing, validation, timestamps, jids."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import strategies

from kombu_sidekiq import job as jobs

# A payload sidekiq.rb 6.4.1 wrote (sidekiq-rb.md section 1.1).
RUBY_6_JOB = (
    b'{"retry":true,"queue":"default","backtrace":3,"args":[1,"x"],"class":"HardJob",'
    b'"jid":"c65c0a3b81d5e7e3c5a748cf","created_at":1795823099.1687717,"enqueued_at":1795823099.168815}'
)
# The same job as Sidekiq 8 writes it: integer milliseconds.
RUBY_8_JOB = (
    b'{"retry":true,"queue":"default","args":[1,"x"],"class":"HardJob",'
    b'"jid":"c65c0a3b81d5e7e3c5a748cf","created_at":1795823099168,"enqueued_at":1795823099168}'
)
# rusty-sidekiq: whole-second floats and explicit nulls (rusty-sidekiq.md section 1).
RUSTY_JOB = (
    b'{"queue":"default","args":[null],"retry":true,"class":"HelloWorker",'
    b'"jid":"0123456789abcdef01234567","created_at":1700000000.0,"enqueued_at":1700000000.0,'
    b'"failed_at":null,"error_message":null,"error_class":null,"retry_count":null,'
    b'"retried_at":null,"retry_queue":null}'
)


@pytest.mark.parametrize("raw", [RUBY_6_JOB, RUBY_8_JOB, RUSTY_JOB])
def test_parse_keeps_every_key_in_order(raw: bytes) -> None:
    job = jobs.parse(raw)
    assert list(job) == list(json.loads(raw))
    assert jobs.dumps(job).encode() == raw


def test_timestamps_of_every_writer_read_as_the_same_second() -> None:
    assert jobs.to_epoch_seconds(jobs.parse(RUBY_6_JOB)["created_at"]) == pytest.approx(
        1795823099.17, abs=0.01
    )
    assert jobs.to_epoch_seconds(jobs.parse(RUBY_8_JOB)["created_at"]) == pytest.approx(
        1795823099.17, abs=0.01
    )
    assert jobs.to_epoch_seconds(jobs.parse(RUSTY_JOB)["created_at"]) == 1700000000.0
    assert jobs.to_epoch_seconds(None) is None
    # rusty-sidekiq re-serializes Sidekiq 8 milliseconds as floats.
    assert jobs.to_epoch_seconds(1700000000123.0) == pytest.approx(1700000000.123)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object, not array"),
        (b'"text"', "JSON object, not string"),
        (b'{"args": []}', "no 'class'"),
        (b'{"class": "", "args": []}', "no 'class'"),
        (b'{"class": 5, "args": []}', "no 'class'"),
        (b'{"class": "A", "args": {"a": 1}}', "'args' must be a JSON array, not object"),
        (b'{"class": "A"}', "no 'args'"),
        (b'{"class": "A", "args": 5}', "'args' must be a JSON array, not number"),
        (b'{"class": "A", "args": [], "queue": 3}', "'queue' must be a string"),
        (b'{"class": "A", "args": [], "jid": null}', "'jid' must be a string"),
        (
            b'{"class": "A", "args": [], "retry": "yes"}',
            "'retry' must be true, false or an integer",
        ),
        (b'{"class": "A", "args": [], "created_at": "2026"}', "'created_at' must be a number"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_invalid_payloads_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(jobs.InvalidJob) as caught:
        jobs.parse(raw)
    assert reason in caught.value.reason


def test_retry_null_or_absent_means_sidekiqs_default() -> None:
    assert jobs.retry_option({"class": "A", "args": []}) is True
    assert jobs.retry_option({"class": "A", "args": [], "retry": None}) is True
    assert jobs.retry_option({"class": "A", "args": [], "retry": 0}) == 0


def test_jid_is_24_lowercase_hex() -> None:
    assert re.fullmatch(r"[0-9a-f]{24}", jobs.new_jid())
    assert jobs.new_jid() != jobs.new_jid()


@given(st.uuids())
def test_jid_of_a_celery_task_id_is_its_first_24_hex_digits(task_id: object) -> None:
    jid = jobs.jid_for_task_id(str(task_id))
    assert jid == str(task_id).replace("-", "")[:24]


def test_jid_of_a_jid_is_itself_and_other_ids_get_a_fresh_one() -> None:
    assert jobs.jid_for_task_id("c65c0a3b81d5e7e3c5a748cf") == "c65c0a3b81d5e7e3c5a748cf"
    assert re.fullmatch(r"[0-9a-f]{24}", jobs.jid_for_task_id("my-task"))


def test_build_writes_what_sidekiq_rb_writes() -> None:
    job = jobs.build("HardJob", [1, "x"], queue="critical")
    assert list(job) == ["class", "args", "queue", "jid", "retry", "created_at", "enqueued_at"]
    assert job["retry"] is True
    assert isinstance(job["created_at"], float)
    assert job["enqueued_at"] == job["created_at"]


def test_sidekiq_8_timestamps_are_integer_milliseconds() -> None:
    job = jobs.build("HardJob", [], version=8)
    assert isinstance(job["created_at"], int)
    assert jobs.to_epoch_seconds(job["created_at"]) == pytest.approx(jobs.now_timestamp(7), abs=5)


def test_scheduled_jobs_carry_no_enqueued_at() -> None:
    assert "enqueued_at" not in jobs.build("HardJob", [], scheduled=True)


def test_float_seconds_always_print_with_a_decimal_point() -> None:
    # Sidekiq 8 reads a JSON integer as milliseconds: seconds must never print as one.
    for _ in range(100):
        assert "." in json.dumps(jobs.now_timestamp(7)) or "e" in json.dumps(jobs.now_timestamp(7))


def test_mark_enqueued_keeps_the_jobs_own_unit() -> None:
    ms = jobs.mark_enqueued(jobs.parse(RUBY_8_JOB), version=7)
    assert isinstance(ms["enqueued_at"], int)
    seconds = jobs.mark_enqueued(jobs.parse(RUBY_6_JOB), version=8)
    assert isinstance(seconds["enqueued_at"], float)
    rusty = jobs.mark_enqueued(jobs.parse(RUSTY_JOB), version=8)
    assert isinstance(rusty["enqueued_at"], float)


json_values = strategies.json_values(strategies.json_scalars(), size=4, leaves=12, key_size=8)


@given(
    args=st.lists(json_values, max_size=5),
    extra=st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=5),
)
def test_dump_then_parse_is_identity(args: list[object], extra: dict[str, object]) -> None:
    job = jobs.build(
        "Some::Class",
        args,
        extra={
            k: v
            for k, v in extra.items()
            if k not in (*jobs.TIMESTAMP_KEYS, "class", "args", "queue", "jid", "retry")
        },
    )
    assert jobs.parse(jobs.dumps(job)) == job


def test_rusty_sidekiqs_null_args_mean_no_args() -> None:
    # rusty-sidekiq's periodic jobs are pushed with "args": null (rusty-sidekiq.md section 3)
    job = jobs.parse(
        b'{"class":"A","args":null,"queue":"default","jid":"0123456789abcdef01234567","retry":false,"created_at":1700000000.0}'
    )
    assert job["args"] is None
