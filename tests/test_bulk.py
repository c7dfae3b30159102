"""``celery_sidekiq.bulk.push_bulk``: Sidekiq's push_bulk for Celery tasks, against a real Redis,
a real Celery worker and real sidekiq.rb (which reads the jobs through ``Sidekiq::Queue``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import strategies
from support.ruby import ruby_eval
from support.waiting import wait_for

import celery_sidekiq
from celery_sidekiq.bulk import push_bulk
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

JOB_KEYS = ["class", "args", "queue", "jid", "retry", "created_at", "enqueued_at"]


def stub(*args: Any, **kwargs: Any) -> None:
    """Runs in a worker, never here."""


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    """A producer app with the task names of tests/apps/bridge_app.py, and a few of its own."""
    app = Celery("bulk_producer", broker=broker_url)
    celery_sidekiq.setup(app)
    app.conf.task_routes = {"low.*": {"queue": "low"}}
    app.task(name="Workers::PyWorker", shared=False)(stub)
    app.task(
        shared=False,
        name="reports.build",
        sidekiq_class="PaymentReportWorker",
        sidekiq_options={"retry": 5, "backtrace": True, "tags": ["billing"]},
    )(stub)
    app.task(name="low.work", shared=False)(stub)
    app.task(name="unique.work", sidekiq_options={"unique_for": 60}, shared=False)(stub)
    yield app
    app.close()


def queued(
    redis: redis_lib.Redis, queue: str = "default", key_prefix: str = ""
) -> list[dict[str, Any]]:
    """The jobs of a queue in the order a consumer takes them (RPOP side first)."""
    return [json.loads(raw) for raw in reversed(redis.lrange(f"{key_prefix}queue:{queue}", 0, -1))]


def commandstats(redis: redis_lib.Redis) -> dict[str, int]:
    return {name: stats["calls"] for name, stats in redis.info("commandstats").items()}


def test_jobs_are_the_ones_apply_async_writes_for_the_same_task(
    app: Celery, redis: redis_lib.Redis
) -> None:
    task = app.tasks["reports.build"]
    task.apply_async((1,))
    jids = push_bulk(task, [[2], [3]])
    via_apply, *via_bulk = queued(redis)
    assert [job["jid"] for job in via_bulk] == jids
    for job in via_bulk:
        assert list(job)[:7] == JOB_KEYS  # Sidekiq's own keys first, in sidekiq.rb's order
        assert job["class"] == "PaymentReportWorker"
        assert (job["retry"], job["backtrace"], job["tags"]) == (5, True, ["billing"])
        assert "celery" not in job  # the task id is the jid: nothing else to carry
        same = {
            key: value
            for key, value in via_apply.items()
            if key not in ("args", "jid", "celery", "created_at", "enqueued_at")
        }
        assert {key: job[key] for key in same} == same
    assert [job["args"] for job in via_bulk] == [[2], [3]]
    assert redis.smembers("queues") == {b"default"}


def test_one_round_trip_per_batch_in_the_given_order(app: Celery, redis: redis_lib.Redis) -> None:
    before = commandstats(redis)
    jids = push_bulk(app.tasks["Workers::PyWorker"], [[n] for n in range(2_500)], batch_size=1_000)
    after = commandstats(redis)
    assert after["cmdstat_lpush"] - before.get("cmdstat_lpush", 0) == 3
    assert after["cmdstat_sadd"] - before.get("cmdstat_sadd", 0) == 3
    jobs_ = queued(redis)
    assert [job["args"] for job in jobs_] == [[n] for n in range(2_500)]
    assert [job["jid"] for job in jobs_] == jids
    assert len(set(jids)) == 2_500


def test_the_queue_is_routed_as_apply_async_routes_it(app: Celery, redis: redis_lib.Redis) -> None:
    app.tasks["low.work"].apply_async((0,))
    push_bulk(app.tasks["low.work"], [[1]])  # task_routes
    push_bulk("low.work", [[2]], app=app, queue="urgent")  # an explicit queue wins
    push_bulk("Workers::PyWorker", [[3]], app=app)  # task_default_queue
    assert [job["args"] for job in queued(redis, "low")] == [[0], [1]]
    assert [(job["args"], job["queue"]) for job in queued(redis, "urgent")] == [([2], "urgent")]
    assert [job["args"] for job in queued(redis, "default")] == [[3]]
    assert redis.smembers("queues") == {b"low", b"urgent", b"default"}


def test_a_class_only_ruby_has_and_per_call_options(app: Celery, redis: redis_lib.Redis) -> None:
    push_bulk("Ruby::Only", [["a", {"b": 1}]], app=app, retry=False, tags=["x"], retry_queue="slow")
    (job,) = queued(redis)
    assert (job["class"], job["args"], job["retry"], job["tags"], job["retry_queue"]) == (
        "Ruby::Only",
        ["a", {"b": 1}],
        False,
        ["x"],
        "slow",
    )


def test_countdown_and_eta_go_to_the_schedule_zset(app: Celery, redis: redis_lib.Redis) -> None:
    task = app.tasks["Workers::PyWorker"]
    start = time.time()
    push_bulk(task, [[1], [2]], countdown=60)
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    push_bulk(task, [[3], [4], [5]], eta=[when, start + 30, start - 10])  # the last one is due
    scheduled = {
        json.loads(raw)["args"][0]: score
        for raw, score in redis.zrange("schedule", 0, -1, withscores=True)
    }
    assert sorted(scheduled) == [1, 2, 3, 4]
    assert start + 60 <= scheduled[1] <= time.time() + 60
    assert scheduled[3] == pytest.approx(when.timestamp())
    assert scheduled[4] == pytest.approx(start + 30)
    for raw in redis.zrange("schedule", 0, -1):
        assert "enqueued_at" not in json.loads(raw)  # Sidekiq 7.1.2+: only queued jobs carry it
    assert [job["args"] for job in queued(redis)] == [[5]]
    naive_utc = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(hours=1)
    push_bulk(task, [[6]], eta=naive_utc)  # a naive eta is UTC, as with Celery's enable_utc
    assert redis.zscore("schedule", redis.zrange("schedule", -1, -1)[0]) == pytest.approx(
        time.time() + 3600, abs=5
    )


def test_namespace_and_sidekiq_8_timestamps(broker_url: str, redis: redis_lib.Redis) -> None:
    app = Celery("bulk_ns", broker=broker_url)
    celery_sidekiq.setup(app, namespace="shop", sidekiq_version=8)
    try:
        push_bulk("Hard", [[1]], app=app)
        (job,) = queued(redis, key_prefix="shop:")
        assert isinstance(job["created_at"], int) and job["created_at"] > 1e12
        assert redis.smembers("shop:queues") == {b"default"}
        assert redis.keys("queue:*") == []
    finally:
        app.close()


@pytest.mark.parametrize(
    ("call", "error", "says"),
    [
        (lambda t: push_bulk(t, [[1], "oops"]), TypeError, "args_list[1] is a str"),
        (lambda t: push_bulk(t, [[1], {"a": 1}]), TypeError, "args_list[1] is a dict"),
        (
            lambda t: push_bulk(t, [[n] for n in range(1500)] + [[object()]]),
            TypeError,
            "args_list[1500] cannot be written as JSON",
        ),
        (
            lambda t: push_bulk(t, [[1]], eta=[time.time() + 5] * 2),
            ValueError,
            "2 eta values for 1 jobs",
        ),
        (
            lambda t: push_bulk(t, [[1]], eta="tomorrow"),
            TypeError,
            "not a datetime or epoch seconds",
        ),
        (
            lambda t: push_bulk(t, [[1]], countdown=1, eta=time.time()),
            ValueError,
            "countdown or eta, not both",
        ),
        (lambda t: push_bulk(t, [[1]], batch_size=0), ValueError, "batch_size=0"),
        (lambda t: push_bulk(t, [[1]], retry=-1), ValueError, "retry=-1"),
        (lambda t: push_bulk(t, [[1]], kwargs={"a": 1}), TypeError, "unknown options ['kwargs']"),
        (lambda t: push_bulk(t, [[1]], unique_for=10), TypeError, "unique locks are taken per job"),
        (
            lambda t: push_bulk(t.app.tasks["unique.work"], [[1]]),
            ValueError,
            "enqueue it with apply_async",
        ),
        (lambda t: push_bulk(42, [[1]]), TypeError, "not int"),
    ],
)
def test_bad_input_raises_a_clear_error_and_writes_nothing(
    app: Celery, redis: redis_lib.Redis, call: Any, error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as raised:
        call(app.tasks["Workers::PyWorker"])
    assert says in str(raised.value)
    assert redis.keys("*") == []


def test_a_non_sidekiq_broker_is_refused(redis_url: str, redis: redis_lib.Redis) -> None:
    app = Celery("native", broker=redis_url)
    try:
        with pytest.raises(ValueError, match=r"needs a sidekiq:// broker"):
            push_bulk("Hard", [[1]], app=app)
    finally:
        app.close()
    assert redis.keys("*") == []


def test_nothing_to_push_touches_nothing(app: Celery, redis: redis_lib.Redis) -> None:
    assert push_bulk("Workers::PyWorker", [], app=app) == []
    assert redis.keys("*") == []


JSON = strategies.json_values(strategies.json_scalars(), size=3, leaves=8)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(args_list=st.lists(st.lists(JSON, max_size=4), max_size=12), batch_size=st.integers(1, 5))
def test_any_json_args_arrive_whole_and_in_order(
    app: Celery, redis: redis_lib.Redis, args_list: list[list[Any]], batch_size: int
) -> None:
    redis.flushall()
    jids = push_bulk("Workers::PyWorker", args_list, app=app, batch_size=batch_size)
    got = queued(redis)
    assert [job["args"] for job in got] == args_list
    assert [job["jid"] for job in got] == jids
    for job in got:
        jobs.validate(job)


@pytest.mark.worker
def test_a_real_worker_runs_every_job(
    app: Celery, redis: redis_lib.Redis, celery_worker: Any
) -> None:
    celery_worker(pool="threads", concurrency=4)
    count = 300
    jids = push_bulk(
        app.tasks["Workers::PyWorker"], [[n, {"n": n}] for n in range(count)], batch_size=64
    )
    wait_for(
        lambda: redis.llen("results:Workers::PyWorker") >= count,
        timeout=60,
        message=f"{count} runs",
    )
    runs = [json.loads(raw) for raw in redis.lrange("results:Workers::PyWorker", 0, -1)]
    assert sorted(run["args"][0] for run in runs) == list(range(count))
    assert {run["id"] for run in runs} == set(jids)  # the jid is the Celery task id
    assert all(run["args"][1] == {"n": run["args"][0]} and run["kwargs"] == {} for run in runs)


_READ_QUEUES = """
queue = Sidekiq::Queue.new("default").map do |j|
  [j.klass, j.args, j.jid, j.item["retry"], j.enqueued_at.to_f]
end
scheduled = Sidekiq::ScheduledSet.new.map { |j| [j.klass, j.args, j.jid, j.at.to_f] }
out = {"queue" => queue.reverse, "scheduled" => scheduled.sort_by(&:last)}
puts JSON.generate(out)
"""


@pytest.mark.interop
def test_sidekiq_rb_reads_them_as_its_own(
    sidekiq_rb: str, require_ruby: None, app: Celery, redis: redis_lib.Redis, redis_url: str
) -> None:
    now = time.time()
    queued_jids = push_bulk("RubyRecorder", [[1, "a"], [2, {"b": [3]}]], app=app, retry=3)
    scheduled_jids = push_bulk("RubyRecorder", [[3], [4]], app=app, eta=[now + 100, now + 200])
    seen = json.loads(ruby_eval(redis_url, _READ_QUEUES))
    assert [row[:4] for row in seen["queue"]] == [
        ["RubyRecorder", [1, "a"], queued_jids[0], 3],
        ["RubyRecorder", [2, {"b": [3]}], queued_jids[1], 3],
    ]
    assert all(row[4] >= now - 1 for row in seen["queue"])
    assert [row[:3] for row in seen["scheduled"]] == [
        ["RubyRecorder", [3], scheduled_jids[0]],
        ["RubyRecorder", [4], scheduled_jids[1]],
    ]
    assert [row[3] for row in seen["scheduled"]] == pytest.approx([now + 100, now + 200], abs=0.01)


def test_push_bulk_honours_the_payload_cap_and_writes_nothing(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    from kombu_sidekiq.transport import PayloadTooLarge

    app = Celery("capped", broker=broker_url)
    celery_sidekiq.setup(app, max_payload_bytes=300)
    with pytest.raises(PayloadTooLarge, match=r"args_list\[1\]"):
        push_bulk("Workers::Big", [["small"], ["x" * 1000]], app=app)
    assert redis.keys("*") == []
    app.close()


# -- all or nothing ----------------------------------------------------------------------------

UNWRITABLE = {
    "an_object": object(),
    "a_lone_surrogate": "\ud800",
    "nan": float("nan"),
    "nested_150": json.loads("[" * 150 + "]" * 150),
}


@pytest.mark.parametrize("name", sorted(UNWRITABLE))
def test_one_unwritable_job_in_a_late_batch_writes_nothing(
    app: Celery, redis: redis_lib.Redis, name: str
) -> None:
    args_list: list[list[Any]] = [[n] for n in range(3_000)]
    args_list[2_500] = [UNWRITABLE[name]]
    before = commandstats(redis)
    with pytest.raises(TypeError, match=r"args_list\[2500\] cannot be written as JSON") as raised:
        push_bulk("Workers::PyWorker", args_list, app=app, batch_size=1_000)
    assert "nothing was written" in str(raised.value)
    assert redis.keys("*") == []
    after = commandstats(redis)
    assert after.get("cmdstat_lpush", 0) == before.get("cmdstat_lpush", 0)  # not even tried


@pytest.mark.parametrize("name", sorted(UNWRITABLE))
def test_client_push_bulk_checks_every_job_before_the_first_write(
    redis: redis_lib.Redis, name: str
) -> None:
    batch = [jobs.build("Hard", [n]) for n in range(3_000)]
    batch[2_500]["args"] = [UNWRITABLE[name]]
    with pytest.raises(TypeError, match=r"job 2500 cannot be written as JSON"):
        Client(redis).push_bulk(batch)
    assert redis.keys("*") == []


def test_client_push_bulk_needs_a_queue_and_a_jid_and_writes_in_one_transaction(
    redis: redis_lib.Redis,
) -> None:
    client = Client(redis)
    no_queue = {k: v for k, v in jobs.build("Hard", [1]).items() if k != "queue"}
    with pytest.raises(jobs.InvalidJob, match=r"job 1 has no 'queue' string; nothing was written"):
        client.push_bulk([jobs.build("Hard", [0]), no_queue])
    with pytest.raises(jobs.InvalidJob, match=r"job 0 has no 'jid' string"):
        client.push_bulk([jobs.build("Hard", [0]) | {"jid": 5}])
    assert redis.keys("*") == []
    before = commandstats(redis)
    jids = client.push_bulk([jobs.build("Hard", [n], queue=f"q{n % 2}") for n in range(4)])
    after = commandstats(redis)
    assert after["cmdstat_exec"] - before.get("cmdstat_exec", 0) == 1
    assert {job["jid"] for q in ("q0", "q1") for job in queued(redis, q)} == set(jids)


def test_a_redis_error_mid_call_says_which_batches_were_written(
    app: Celery, redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # The second batch has scheduled jobs, and the schedule key holds a string: Redis refuses
    # that batch's ZADD after the first batch was written.
    redis.set("schedule", "not a sorted set")
    later = time.time() + 3600
    etas = [0.0] * 1_000 + [later] * 1_000
    with pytest.raises(redis_lib.ResponseError) as raised:
        push_bulk(
            "Workers::PyWorker", [[n] for n in range(2_000)], app=app, eta=etas, batch_size=1_000
        )
    said = "args_list[:1000] (1000 of 2000 jobs) were written"
    assert said in caplog.text
    if sys.version_info >= (3, 11):  # exception notes
        assert said in " ".join(raised.value.__notes__)
    assert [job["args"] for job in queued(redis)] == [[n] for n in range(1_000)]
    assert redis.get("schedule") == b"not a sorted set"
