"""Celery's producers on sidekiq://: the direct way from ``apply_async`` to a job.

The direct producer must write exactly the job kombu's own way writes (through the envelope and
the transport's ``_put``), and leave everything around ``publish`` to Celery: signals, routing,
retries after a lost connection.
"""

from __future__ import annotations

import datetime
import inspect
import json
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis as redis_lib
from celery import Celery, signals
from celery.app.amqp import AMQP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu.pools import ProducerPool
from support import strategies

import celery_sidekiq
from kombu_sidekiq import job as jobs
from kombu_sidekiq.transport import Producer, WriteRefused

#: JSON values as ``json`` writes them natively (no NaN or infinities: JSON has none, and a
#: producer refuses them; see test_non_json_numbers_are_refused_and_nothing_is_written).
json_values = strategies.json_values(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    size=4,
    leaves=12,
)


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    app = celery_sidekiq.setup(Celery("producer_test", broker=broker_url))
    app.task(name="Reports::Build")(_stub)
    yield app
    app.close()


def _stub(*args: Any, **kwargs: Any) -> None:
    """Never runs: these tests only publish."""


def _send(app: Celery, producer: Any, task_id: str, args: Any, **options: Any) -> None:
    app.send_task("Reports::Build", args, task_id=task_id, producer=producer, **options)


def _jobs(redis: redis_lib.Redis) -> list[dict[str, Any]]:
    """Every job written, queued or scheduled, without the timestamps taken at write time."""
    raws = redis.lrange("queue:default", 0, -1)[::-1] + redis.zrange("schedule", 0, -1)
    parsed = [json.loads(raw) for raw in raws]
    for job in parsed:
        job.pop("created_at", None)
        job.pop("enqueued_at", None)
        if isinstance(job.get("celery"), dict):
            job["celery"].pop("eta", None)  # now + countdown, taken per call as well
    return parsed


def _both_ways(app: Celery, redis: redis_lib.Redis, args: Any, **options: Any) -> list[Any]:
    """The job written by kombu's Producer and by the direct one, for the same call."""
    task_id = str(uuid.uuid4())
    with app.connection_for_write() as connection:
        _send(app, kombu.Producer(connection), task_id, args, **options)
        (kombu_way,) = _jobs(redis)
        redis.flushall()
        _send(app, Producer(connection), task_id, args, **options)
        (direct,) = _jobs(redis)
        redis.flushall()
    return [kombu_way, direct]


def test_setup_makes_celerys_producers_direct(app: Celery) -> None:
    # What celery_sidekiq.producer relies on: Celery's pool is a property of its AMQP class,
    # a kombu ProducerPool that makes its producers from its `Producer` attribute.
    assert isinstance(inspect.getattr_static(AMQP, "producer_pool"), property)
    assert "self.Producer(" in inspect.getsource(ProducerPool.create_producer)
    with app.producer_or_acquire() as producer:
        assert isinstance(producer, Producer)
    app._after_fork()  # a forked child rebuilds its pool: it must still be direct
    with app.producer_or_acquire() as producer:
        assert isinstance(producer, Producer)


def test_setup_after_the_app_published_keeps_its_state_and_makes_it_direct(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    class OwnAMQP(AMQP):
        """An app's own AMQP class stays in charge."""

    app = Celery("late_setup", broker=broker_url, amqp=OwnAMQP)
    app.conf.task_default_queue = "default"
    app.amqp.queues.select_add("reports")  # state a worker's -Q would add
    celery_sidekiq.setup(app)
    assert isinstance(app.amqp, OwnAMQP) and "reports" in app.amqp.queues
    with app.producer_or_acquire() as producer:
        assert isinstance(producer, Producer)
    app.send_task("Reports::Build", [1], queue="reports")
    assert jobs.parse(redis.lindex("queue:reports", 0))["args"] == [1]
    app.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.text(min_size=1), json_values, max_size=3),
    countdown=st.sampled_from([None, 3600]),
    extra=st.sampled_from(
        [
            {},
            {"headers": {"tenant": "acme"}},
            {"retry_queue": "low", "tags": ["a"]},
            {"shadow": "s"},
        ]
    ),
)
def test_the_direct_way_writes_the_job_kombus_way_writes(
    app: Celery,
    redis: redis_lib.Redis,
    args: list[Any],
    kwargs: dict[str, Any],
    countdown: int | None,
    extra: dict[str, Any],
) -> None:
    kombu_way, direct = _both_ways(app, redis, args, kwargs=kwargs, countdown=countdown, **extra)
    assert direct == kombu_way


def test_values_json_cannot_hold_take_kombus_way_in_kombus_tagged_form(
    app: Celery, redis: redis_lib.Redis
) -> None:
    when = datetime.datetime(2026, 11, 28, 3, 0, tzinfo=datetime.timezone.utc)
    kombu_way, direct = _both_ways(app, redis, [when, uuid.UUID(int=7), b"raw"])
    assert direct == kombu_way
    assert direct["args"][0] == {"__type__": "datetime", "__value__": when.isoformat()}


def test_signals_and_routing_stay_celerys(app: Celery, redis: redis_lib.Redis) -> None:
    seen: list[tuple[str, Any]] = []

    def before(sender: Any = None, routing_key: Any = None, **_: Any) -> None:
        seen.append(("before", routing_key))

    def after(sender: Any = None, routing_key: Any = None, **_: Any) -> None:
        seen.append(("after", routing_key))

    signals.before_task_publish.connect(before, weak=False)
    signals.after_task_publish.connect(after, weak=False)
    app.conf.task_routes = {"Reports::Build": {"queue": "reports"}}
    try:
        app.tasks["Reports::Build"].delay(1)
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)
    assert seen == [("before", "reports"), ("after", "reports")]
    assert jobs.parse(redis.lindex("queue:reports", 0))["args"] == [1]
    assert redis.smembers("queues") == {b"reports"}


def test_a_lost_connection_is_reconnected_and_the_job_written_once(
    app: Celery, redis: redis_lib.Redis
) -> None:
    task = app.tasks["Reports::Build"]
    task.delay(1)
    redis.client_kill_filter(_type="normal", skipme=True)  # every producer connection
    task.delay(2)
    assert [job["args"] for job in _jobs(redis)] == [[1], [2]]


def test_an_error_reply_is_raised_once_not_retried_into_a_duplicate(
    app: Celery, redis: redis_lib.Redis
) -> None:
    redis.set("queues", "not a set")  # SADD fails with WRONGTYPE; the LPUSH beside it runs
    task = app.tasks["Reports::Build"]
    with pytest.raises(WriteRefused, match="WRONGTYPE"):
        task.delay(1)
    assert [job["args"] for job in _jobs(redis)] == [[1]]  # kombu's retry used to add a copy
    redis.delete("queues")
    task.delay(2)  # the connection is still in step
    assert [job["args"] for job in _jobs(redis)] == [[1], [2]]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_json_numbers_are_refused_and_nothing_is_written(
    app: Celery, redis: redis_lib.Redis, value: float
) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        app.tasks["Reports::Build"].apply_async(([value],), retry=False)
    assert redis.keys("queue:*") == [] and redis.zcard("schedule") == 0
