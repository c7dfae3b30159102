"""Job <-> Celery message codec: pure functions, no Redis."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import strategies

from kombu_sidekiq import codec
from kombu_sidekiq import job as jobs

REGISTRY = codec.ClassRegistry()


class RubyOnly(codec.ClassRegistry):
    """A producer that has no Python task for any class."""

    def job_options(self, task_name: str) -> codec.JobOptions:
        return codec.JobOptions(klass=task_name, local=False)


def celery_message(
    task: str, args: list[Any], kwargs: dict[str, Any] | None = None, **headers: Any
) -> dict[str, Any]:
    message = codec.sample_message(task, args, kwargs)
    message["headers"].update(headers)
    return message


def roundtrip(message: dict[str, Any], queue: str = "default") -> dict[str, Any]:
    job = codec.job_from_message(message, queue, REGISTRY)
    raw = jobs.dumps(job)
    return codec.message_from_job(jobs.parse(raw), raw, queue, REGISTRY)


def test_ruby_job_becomes_a_protocol_2_message_for_the_task_named_like_its_class() -> None:
    raw = '{"class":"Workers::Hard","args":[1,"x",{"a":[2]}],"queue":"critical","jid":"c65c0a3b81d5e7e3c5a748cf","retry":true,"created_at":1.5}'
    message = codec.message_from_job(jobs.parse(raw), raw, "critical", REGISTRY)
    assert message["headers"]["task"] == "Workers::Hard"
    assert message["headers"]["id"] == "c65c0a3b81d5e7e3c5a748cf"
    assert message["headers"]["lang"] == "rb"
    assert message["headers"]["retries"] == 0
    args, kwargs, embed = json.loads(message["body"])
    assert (args, kwargs) == ([1, "x", {"a": [2]}], {})
    assert embed == {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    assert message["properties"]["delivery_info"] == {"exchange": "", "routing_key": "critical"}
    assert message["properties"][codec.RAW_JOB_PROPERTY] == raw


def test_a_retried_sidekiq_job_counts_its_retries() -> None:
    job = jobs.build("A", [], extra={"retry_count": 2})
    message = codec.message_from_job(job, jobs.dumps(job), "default", REGISTRY)
    assert message["headers"]["retries"] == 3


def test_celery_message_becomes_a_job_sidekiq_rb_runs() -> None:
    job = codec.job_from_message(celery_message("RubyClass", [1, "two"]), "q", REGISTRY)
    assert job["class"] == "RubyClass"
    assert job["args"] == [1, "two"]
    assert job["queue"] == "q"
    assert job["retry"] is True
    assert len(job["jid"]) == 24
    assert job["enqueued_at"] == job["created_at"]


def test_kwargs_and_canvas_travel_in_the_extension_key() -> None:
    chain = [
        {
            "task": "next",
            "args": [],
            "kwargs": {},
            "options": {},
            "subtask_type": None,
            "immutable": False,
        }
    ]
    message = celery_message(
        "t",
        [1],
        {"k": "v"},
        parent_id="p",
        group="g",
        group_index=0,
        timelimit=[10, 5],
        retries=2,
        expires="2030-01-01T00:00:00+00:00",
    )
    body = json.loads(message["body"])
    body[2]["chain"] = chain
    message["body"] = json.dumps(body)
    job = codec.job_from_message(message, "default", REGISTRY)
    ext = job[codec.EXTENSION_KEY]
    assert ext["kwargs"] == {"k": "v"}
    assert ext["chain"] == chain
    assert ext["group_index"] == 0
    back = codec.message_from_job(job, jobs.dumps(job), "default", REGISTRY)
    headers = back["headers"]
    assert headers["id"] == message["headers"]["id"]
    assert (headers["parent_id"], headers["group"], headers["group_index"]) == ("p", "g", 0)
    assert headers["timelimit"] == [10, 5]
    assert headers["retries"] == 2
    assert headers["expires"] == "2030-01-01T00:00:00+00:00"
    assert json.loads(back["body"]) == [
        [1],
        {"k": "v"},
        {"callbacks": None, "errbacks": None, "chain": chain, "chord": None},
    ]


def test_a_plain_message_adds_only_the_task_id_to_the_job() -> None:
    job = codec.job_from_message(celery_message("t", [1]), "default", REGISTRY)
    assert set(job[codec.EXTENSION_KEY]) == {"id"}


def test_kwargs_for_a_class_without_a_python_task_are_refused() -> None:
    with pytest.raises(codec.CodecError, match="kwargs"):
        codec.job_from_message(celery_message("RubyClass", [1], {"k": "v"}), "q", RubyOnly())
    assert codec.job_from_message(celery_message("RubyClass", [1]), "q", RubyOnly())["args"] == [1]


@pytest.mark.parametrize(
    "content_type",
    ["application/x-python-serialize", "application/x-yaml", "application/x-msgpack"],
)
def test_only_json_travels(content_type: str) -> None:
    message = celery_message("t", [1])
    message["content-type"] = content_type
    with pytest.raises(codec.CodecError, match="JSON only"):
        codec.job_from_message(message, "q", REGISTRY)


def test_per_call_sidekiq_options_become_job_keys() -> None:
    message = celery_message("t", [])
    message["properties"].update(retry_queue="low", backtrace=5, tags=["a"], sidekiq_retry=3)
    job = codec.job_from_message(message, "q", REGISTRY)
    assert (job["retry_queue"], job["backtrace"], job["tags"], job["retry"]) == ("low", 5, ["a"], 3)


def test_eta_is_read_as_epoch_seconds() -> None:
    when = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=timezone(timedelta(hours=2)))
    assert codec.eta_of(celery_message("t", [], eta=when.isoformat())) == when.timestamp()
    naive = datetime(2030, 1, 2, 3, 4, 5)
    assert (
        codec.eta_of(celery_message("t", [], eta=naive.isoformat()))
        == naive.replace(tzinfo=timezone.utc).timestamp()
    )
    assert codec.eta_of(celery_message("t", [])) is None


def test_only_task_messages_become_jobs() -> None:
    assert codec.is_task_message(celery_message("t", []))
    assert not codec.is_task_message({"body": "{}", "headers": {"clock": 1}})
    assert not codec.is_task_message({"body": "{}", "headers": None})


#: Keys whose values the job model checks; everything else is somebody else's and opaque.
OWNED_KEYS = {"class", "args", "queue", "jid", "retry", "celery", *jobs.TIMESTAMP_KEYS}

json_values = strategies.json_values(
    strategies.json_scalars(text_size=10), size=3, leaves=10, key_size=6
)


@given(
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=3),
    task=st.text(min_size=1, max_size=20),
    queue=st.text(min_size=1, max_size=12),
    parent_id=st.none() | st.uuids().map(str),
)
def test_message_to_job_to_message_is_lossless(
    args: list[Any], kwargs: dict[str, Any], task: str, queue: str, parent_id: str | None
) -> None:
    message = celery_message(task, args, kwargs, parent_id=parent_id)
    back = roundtrip(message, queue)
    assert back["headers"]["task"] == task
    assert back["headers"]["id"] == message["headers"]["id"]
    assert back["headers"]["root_id"] == message["headers"]["root_id"]
    assert back["headers"]["parent_id"] == parent_id
    assert json.loads(back["body"])[:2] == [args, kwargs]
    assert back["properties"]["delivery_info"]["routing_key"] == queue


@given(
    extra=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda k: k not in OWNED_KEYS),
        json_values,
        max_size=5,
    )
)
def test_job_to_message_keeps_the_raw_job_byte_for_byte(extra: dict[str, Any]) -> None:
    job = jobs.build("A", [1], extra=extra)
    raw = jobs.dumps(job)
    message = codec.message_from_job(jobs.parse(raw), raw, "default", REGISTRY)
    assert message["properties"][codec.RAW_JOB_PROPERTY] == raw


@given(
    args=st.lists(json_values, max_size=4),
    klass=st.text(min_size=1, max_size=20),
    queue=st.text(min_size=1, max_size=12),
    kwargs=st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=3),
)
def test_job_to_message_to_job_keeps_class_args_queue_and_jid(
    args: list[Any], klass: str, queue: str, kwargs: dict[str, Any]
) -> None:
    """What a worker receives and republishes (a retry, a chain step) is the same job."""
    extra = {codec.EXTENSION_KEY: {"kwargs": kwargs}} if kwargs else None
    job = jobs.build(klass, args, queue=queue, extra=extra)
    raw = jobs.dumps(job)
    envelope = codec.message_from_job(jobs.parse(raw), raw, queue, REGISTRY)
    again = codec.job_from_message(envelope, queue, REGISTRY)
    assert (again["class"], again["args"], again["queue"], again["jid"]) == (
        klass,
        args,
        queue,
        job["jid"],
    )
    assert again.get(codec.EXTENSION_KEY, {}).get("kwargs", {}) == kwargs


def test_null_args_arrive_as_no_args() -> None:
    raw = '{"class":"A","args":null,"queue":"default","jid":"0123456789abcdef01234567","retry":false,"created_at":1700000000.0}'
    message = codec.message_from_job(jobs.parse(raw), raw, "default", REGISTRY)
    assert json.loads(message["body"])[:2] == [[], {}]
