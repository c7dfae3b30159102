"""Unique jobs: rusty-sidekiq's lock keys byte for byte, the lock-and-push script, the Celery API
and the worker-side release, against a real redis-server (and a real worker for the release).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import kombu.pools
import pytest
import redis as redis_lib
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st
from support.waiting import wait_for

import celery_sidekiq
from celery_sidekiq.unique import DuplicateJob, apply_unique
from kombu_sidekiq import codec, unique
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.keys import Keys

# rusty-sidekiq.md section 2: SHA-256 of serde_json's compact args, lowercase hex.
NULL_ARGS_DIGEST = "1d8fc6ceb1f94c6326d6d5483d258fcb2e179e9869325b245d105c2219bf69fd"
GUID_ARGS_DIGEST = "15f1e65e72d71db4b65e92d9dac6849cd56abb32c7a7e7d01ed3835a0973f19b"


# -- the digest ------------------------------------------------------------------------------------


def test_digests_match_rusty_sidekiqs_check_values() -> None:
    assert unique.digest([None]) == NULL_ARGS_DIGEST  # Rust's () args become [null]
    assert unique.digest([{"customer_guid": "CST-123"}]) == GUID_ARGS_DIGEST


def test_lock_keys_are_rusty_sidekiqs_with_and_without_namespace() -> None:
    job = jobs.build("HelloWorker", [None], queue="default")
    assert unique.lock_key(job, Keys()) == f"sidekiq:unique:default:HelloWorker:{NULL_ARGS_DIGEST}"
    assert (
        unique.lock_key(job, Keys("yolo_app"))
        == f"yolo_app:sidekiq:unique:default:HelloWorker:{NULL_ARGS_DIGEST}"
    )


@pytest.mark.parametrize(
    ("value", "serde"),
    [
        (1700000000.0, "1700000000.0"),
        (1e16, "1e16"),  # Python: 1e+16
        (1.5e16, "1.5e16"),
        (1234567890123456.0, "1234567890123456.0"),
        (12345678901234567.0, "1.2345678901234568e16"),
        (0.0001, "0.0001"),
        (0.00001, "0.00001"),  # Python: 1e-05
        (0.000012, "0.000012"),
        (1e-6, "1e-6"),  # Python: 1e-06
        (2.5e-7, "2.5e-7"),
        (-0.0, "-0.0"),
        (0.0, "0.0"),
        (-12.5, "-12.5"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e308"),
    ],
)
def test_floats_are_written_as_ryu_writes_them(value: float, serde: str) -> None:
    assert unique.ryu(value) == serde


def test_args_json_is_serde_jsons_compact_sorted_unescaped_form() -> None:
    args = [{"b": 1, "a": {"z": [1.0, None], "é": 'ü\n\u001f"\\'}}, True, "x", 10**20]
    expected = (
        '[{"a":{"z":[1.0,null],"é":"ü\\n\\u001f\\"\\\\"},"b":1},true,"x",100000000000000000000]'
    )
    assert unique.canonical_json(args) == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, {1: "x"}, object()])
def test_what_is_not_json_has_no_digest(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        unique.digest([bad])


json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text()
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.recursive(
        json_scalars,
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
        max_leaves=20,
    )
)
def test_without_floats_it_is_pythons_sorted_compact_json(value: Any) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert unique.canonical_json(value) == expected


@given(json_values)
def test_it_reads_back_as_the_same_value(value: Any) -> None:
    assert json.loads(unique.canonical_json(value)) == value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_ryu_floats_round_trip_and_agree_with_repr_where_layouts_agree(value: float) -> None:
    text = unique.ryu(value)
    assert float(text) == value and "+" not in text
    if 1e-4 <= abs(value) < 1e16:
        assert text == repr(value)


def test_kwargs_count_as_a_trailing_hash() -> None:
    python = jobs.build("Report", [1], extra={"celery": {"kwargs": {"a": 2}}})
    ruby = jobs.build("Report", [1, {"a": 2}])
    other = jobs.build("Report", [1], extra={"celery": {"kwargs": {"a": 3}}})
    assert unique.lock_key(python, Keys()) == unique.lock_key(ruby, Keys())
    assert unique.lock_key(python, Keys()) != unique.lock_key(other, Keys())


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (60, 60),
        (1, 1),
        (1.2, 2),
        (timedelta(minutes=5), 300),
        (timedelta(seconds=0.5, minutes=1), 61),
    ],
)
def test_unique_for_is_whole_seconds_rounded_up(value: Any, seconds: int) -> None:
    assert unique.seconds(value) == seconds


@pytest.mark.parametrize("value", [0, 0.5, -3, True, "60", None, math.inf, timedelta(0)])
def test_a_bad_unique_for_says_what_to_give(value: Any) -> None:
    with pytest.raises(ValueError, match="unique_for"):
        unique.seconds(value)


def test_options_are_normalized_for_the_job() -> None:
    options: dict[str, Any] = {"unique_for": timedelta(hours=1), "unique_until": "ttl"}
    unique.normalize(options)
    assert options == {"unique_for": 3600}  # "ttl" is the default: not written
    with pytest.raises(ValueError, match="one of 'ttl', 'start', 'success'"):
        unique.normalize({"unique_for": 5, "unique_until": "finish"})
    with pytest.raises(ValueError, match="needs unique_for"):
        unique.normalize({"unique_until": "start"})


def test_retries_take_no_lock() -> None:
    fresh = jobs.build("Report", [1], extra={"unique_for": 60})
    assert unique.lock_for(fresh, Keys()) == unique.Lock(
        unique.lock_key(fresh, Keys()), fresh["jid"], 60
    )
    assert unique.lock_for(fresh, Keys(), delay=99.2) == unique.Lock(
        unique.lock_key(fresh, Keys()), fresh["jid"], 160
    )
    assert unique.lock_for({**fresh, "retry_count": 0}, Keys()) is None
    assert unique.lock_for({**fresh, "celery": {"retries": 1}}, Keys()) is None
    assert unique.lock_for(jobs.build("Report", [1]), Keys()) is None


# -- the script ------------------------------------------------------------------------------------


def test_lock_and_push_are_one_step_and_duplicates_write_nothing(redis: redis_lib.Redis) -> None:
    client = Client(redis)
    first = jobs.build("HelloWorker", [None], extra={"unique_for": 30})
    lock = unique.lock_for(first, client.keys)
    assert lock is not None
    unique.push(client, first, lock)
    key = f"sidekiq:unique:default:HelloWorker:{NULL_ARGS_DIGEST}"
    assert redis.get(key) == first["jid"].encode()
    assert 29 <= redis.ttl(key) <= 30
    assert redis.lrange("queue:default", 0, -1) == [jobs.dumps(first).encode()]
    assert redis.smembers("queues") == {b"default"}

    second = jobs.build("HelloWorker", [None], extra={"unique_for": 30})
    with pytest.raises(DuplicateJob) as caught:
        unique.push(client, second, unique.lock_for(second, client.keys))  # type: ignore[arg-type]
    assert (caught.value.key, caught.value.owner) == (key, first["jid"])
    assert 0 < caught.value.ttl <= 30
    assert redis.llen("queue:default") == 1


def test_rusty_sidekiqs_empty_lock_blocks_us_and_ours_blocks_rusty(redis: redis_lib.Redis) -> None:
    client = Client(redis, Keys("yolo_app"))
    rusty_key = f"yolo_app:sidekiq:unique:default:Workers::Guid:{GUID_ARGS_DIGEST}"
    assert redis.set(rusty_key, "", nx=True, ex=60)  # what rusty-sidekiq's enqueue does
    job = jobs.build("Workers::Guid", [{"customer_guid": "CST-123"}], extra={"unique_for": 60})
    with pytest.raises(DuplicateJob, match="records no owner") as caught:
        unique.push(client, job, unique.lock_for(job, client.keys))  # type: ignore[arg-type]
    assert caught.value.owner is None
    assert redis.exists("yolo_app:queue:default") == 0

    redis.delete(rusty_key)
    unique.push(client, job, unique.lock_for(job, client.keys))  # type: ignore[arg-type]
    assert redis.set(rusty_key, "", nx=True, ex=60) is None  # rusty's SET NX: a duplicate


def test_a_scheduled_job_holds_its_lock_for_its_delay_and_its_promotion_is_not_blocked(
    redis: redis_lib.Redis,
) -> None:
    client = Client(redis)
    job = jobs.build("Report", [7], scheduled=True, extra={"unique_for": 60})
    at = time.time() + 100
    lock = unique.lock_for(job, client.keys, delay=100)
    assert lock is not None
    unique.push(client, job, lock, at)
    assert 159 <= redis.ttl(lock.key) <= 160
    assert redis.zcard("schedule") == 1 and redis.llen("queue:default") == 0
    assert client.enqueue_due(now=at + 1) == 1  # the lock is still held: promotion ignores it
    assert redis.llen("queue:default") == 1


def test_the_same_job_sent_again_is_the_copy_that_waits_and_is_pushed_again_once_taken(
    redis: redis_lib.Redis,
) -> None:
    client = Client(redis)
    job = jobs.build("Report", [7], extra={"unique_for": 10})
    key = unique.lock_key(job, client.keys)
    unique.push(client, dict(job), unique.Lock(key, job["jid"], 10))
    # kombu's publish retry builds the job again: same jid, other timestamps
    rebuilt = {**job, "created_at": job["created_at"] + 1, "enqueued_at": job["created_at"] + 1}
    assert unique.push(client, rebuilt, unique.Lock(key, job["jid"], 50)) == job["jid"]
    assert redis.lrange("queue:default", 0, -1) == [jobs.dumps(job).encode()]  # the first copy
    assert 49 <= redis.ttl(key) <= 50  # stretched to what the second push needs
    assert redis.rpop("queue:default")  # a worker took it: the job is running, not waiting
    unique.push(client, dict(job), unique.Lock(key, job["jid"], 50))
    assert redis.llen("queue:default") == 1  # the same task id published again: pushed again


def test_the_same_scheduled_job_sent_again_is_one_member_but_another_time_is_another(
    redis: redis_lib.Redis,
) -> None:
    client = Client(redis)
    job = jobs.build("Report", [8], scheduled=True, extra={"unique_for": 10})
    lock = unique.Lock(unique.lock_key(job, client.keys), job["jid"], 110)
    at = time.time() + 100
    unique.push(client, dict(job), lock, at)
    unique.push(client, {**job, "created_at": job["created_at"] + 1}, lock, at)
    assert redis.zrange("schedule", 0, -1, withscores=True) == [(jobs.dumps(job).encode(), at)]
    later = {**job, "created_at": job["created_at"] + 2}  # the same task id, rescheduled
    unique.push(client, later, lock, at + 50)
    assert redis.zcard("schedule") == 2


def test_release_deletes_only_the_owners_lock(redis: redis_lib.Redis) -> None:
    client = Client(redis)
    job = jobs.build("Report", [7], extra={"unique_for": 10})
    key = unique.lock_key(job, client.keys)
    redis.set(key, "somebody-else")
    assert unique.release(client, job) is False
    assert redis.get(key) == b"somebody-else"
    redis.set(key, job["jid"])
    assert unique.release(client, job) is True
    assert redis.exists(key) == 0


# -- through Celery --------------------------------------------------------------------------------


def stub(*args: Any, **kwargs: Any) -> None:
    """Runs in a worker, never here."""


@pytest.fixture
def producer(broker_url: str) -> Iterator[Celery]:
    app = Celery("unique-producer", broker=broker_url)
    celery_sidekiq.setup(app)
    app.task(name="Workers::Report", unique_for=3600, shared=False)(stub)
    app.task(name="Workers::Plain", shared=False)(stub)
    app.task(name="unique.start", unique_for=60, unique_until="start", shared=False)(stub)
    app.task(name="unique.success", unique_for=60, unique_until="success", shared=False)(stub)
    app.task(name="unique.retried", unique_for=60, unique_until="success", shared=False)(stub)
    app.task(
        name="unique.doomed",
        unique_for=60,
        unique_until="success",
        sidekiq_options={"retry": 0},
        shared=False,
    )(stub)
    app.task(name="unique.ttl", unique_for=60, shared=False)(stub)
    yield app
    app.close()


def queued(redis: redis_lib.Redis, queue: str = "default") -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(redis.lrange(f"queue:{queue}", 0, -1))]


def test_a_task_option_makes_delay_raise_duplicate_job(
    redis: redis_lib.Redis, producer: Celery
) -> None:
    report = producer.tasks["Workers::Report"]
    first = report.delay(42)
    with pytest.raises(DuplicateJob):
        report.delay(42)
    assert apply_unique(report, (42,)) is None
    report.delay(43)  # other args: another job
    report.apply_async((42,), queue="reports")  # other queue: another lock
    jobs_ = queued(redis)
    assert [j["args"] for j in jobs_] == [[42], [43]]
    assert jobs_[0]["jid"] == first.id.replace("-", "")[:24]
    assert jobs_[0]["unique_for"] == 3600  # kept: Sidekiq Enterprise reads it too
    assert "unique_until" not in jobs_[0]
    assert redis.llen("queue:reports") == 1


def test_per_call_options_take_a_timedelta_and_a_countdown_stretches_the_lock(
    redis: redis_lib.Redis, producer: Celery
) -> None:
    plain = producer.tasks["Workers::Plain"]
    plain.apply_async((1,), unique_for=timedelta(minutes=2), unique_until="success")
    (job,) = queued(redis)
    assert (job["unique_for"], job["unique_until"]) == (120, "success")
    with pytest.raises(DuplicateJob):
        plain.apply_async((1,), unique_for=30)
    plain.apply_async((2,), unique_for=30, countdown=600)
    key = unique.lock_key({"class": "Workers::Plain", "queue": "default", "args": [2]}, Keys())
    assert 629 <= redis.ttl(key) <= 630
    with pytest.raises(DuplicateJob):
        plain.apply_async((2,), unique_for=30)
    plain.delay(2)  # no unique_for: no lock
    assert redis.zcard("schedule") == 1 and redis.llen("queue:default") == 2


def test_a_bad_option_fails_the_call_saying_what_to_change(
    redis: redis_lib.Redis, producer: Celery
) -> None:
    with pytest.raises(codec.CodecError, match="unique_for=0"):
        producer.tasks["Workers::Plain"].apply_async((1,), unique_for=0)
    with pytest.raises(codec.CodecError, match="unique_until='finished'"):
        producer.tasks["Workers::Plain"].apply_async((1,), unique_for=5, unique_until="finished")
    assert redis.llen("queue:default") == 0


def test_a_batch_keeps_its_order_around_a_unique_job(
    redis: redis_lib.Redis, producer: Celery
) -> None:
    report, plain = producer.tasks["Workers::Report"], producer.tasks["Workers::Plain"]
    with producer.producer_or_acquire() as pub, pub.batch():
        plain.apply_async((1,), producer=pub)
        report.apply_async((9,), producer=pub)
        plain.apply_async((2,), producer=pub)
    assert [(j["class"], j["args"]) for j in queued(redis)] == [
        ("Workers::Plain", [1]),
        ("Workers::Report", [9]),
        ("Workers::Plain", [2]),
    ]


def test_many_producers_racing_on_one_key_push_exactly_one_job(
    redis: redis_lib.Redis, broker_url: str
) -> None:
    # The process-wide limit other tests left, not this test's 12: the apps' first publishes
    # then resize every pool of the process while they add their own (kombu.pools.set_limit).
    kombu.pools.set_limit(10)
    apps = []
    for n in range(3):  # three producers, each with its own connection pool
        app = Celery(f"racer{n}", broker=broker_url)
        celery_sidekiq.setup(app)
        app.conf.broker_pool_limit = 12
        app.task(name="Workers::Report", unique_for=60, shared=False)(stub)
        apps.append(app)
    threads_per_app = 12
    barrier = threading.Barrier(len(apps) * threads_per_app)
    outcomes: list[str] = []

    def race(app: Celery) -> None:
        barrier.wait()
        try:
            app.tasks["Workers::Report"].apply_async(({"account": 1, "month": "2026-01"},))
            outcomes.append("pushed")
        except DuplicateJob:
            outcomes.append("duplicate")
        except Exception as exc:  # said in the failure, not lost in a thread's traceback
            outcomes.append(f"error: {exc!r}")

    threads = [
        threading.Thread(target=race, args=(app,)) for app in apps for _ in range(threads_per_app)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for app in apps:
        app.close()
    assert [outcome for outcome in outcomes if outcome.startswith("error")] == []
    assert sorted(outcomes).count("pushed") == 1
    assert len(outcomes) == 36, f"{36 - len(outcomes)} producers still blocked after 30 s"
    assert redis.llen("queue:default") == 1
    (job,) = queued(redis)
    key = unique.lock_key(job, Keys())
    assert redis.get(key) == job["jid"].encode()


# -- releases in a real worker ---------------------------------------------------------------------


def runs(redis: redis_lib.Redis, task: str, count: int) -> list[dict[str, Any]]:
    wait_for(
        lambda: redis.llen(f"results:{task}") >= count,
        timeout=20,
        message=f"{count} runs of {task}",
    )
    return [json.loads(item) for item in redis.lrange(f"results:{task}", 0, -1)]


def lock_of(task: str, n: int) -> str:
    return unique.lock_key({"class": task, "queue": "default", "args": [n]}, Keys())


@pytest.mark.worker
def test_a_worker_releases_at_start_on_success_or_death_never_on_a_retry(
    celery_worker: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    celery_worker(app_module="unique_app")
    tasks = producer.tasks

    tasks["unique.start"].delay(1)
    (run,) = runs(redis, "unique.start", 1)
    assert run["lock"] is None  # released before the task body ran
    tasks["unique.start"].delay(1)  # so the same job may be enqueued again at once

    tasks["unique.success"].delay(2)
    (run,) = runs(redis, "unique.success", 1)
    assert run["lock"] == run["jid"]  # held while running
    wait_for(
        lambda: not redis.exists(lock_of("unique.success", 2)),
        timeout=10,
        message="release on success",
    )

    tasks["unique.retried"].delay(3)
    first, second = runs(redis, "unique.retried", 2)
    assert (first["retries"], second["retries"]) == (0, 1)
    # the retry was not blocked, and did not release the lock
    assert first["lock"] == second["lock"] == first["jid"]
    wait_for(
        lambda: not redis.exists(lock_of("unique.retried", 3)),
        timeout=10,
        message="release after the retry",
    )

    tasks["unique.doomed"].delay(5)
    (run,) = runs(redis, "unique.doomed", 1)
    assert run["lock"] == run["jid"]
    wait_for(lambda: redis.zcard("dead") == 1, timeout=10, message="the doomed job dead")
    # it will never succeed: its lock went with it, so the same args may be enqueued again
    assert not redis.exists(lock_of("unique.doomed", 5))
    tasks["unique.doomed"].delay(5)

    tasks["unique.ttl"].delay(4)
    (run,) = runs(redis, "unique.ttl", 1)
    assert run["lock"] == run["jid"]
    runs(redis, "unique.start", 2)  # every job above has finished
    assert redis.get(lock_of("unique.ttl", 4)) == run["jid"].encode()  # "ttl": only expiry frees it
    with pytest.raises(DuplicateJob):
        tasks["unique.ttl"].delay(4)
