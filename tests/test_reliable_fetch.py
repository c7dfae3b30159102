"""Reliable fetch: no job lost, none run twice while its worker lives (issue 5, points 1, 2, 7).

Redis-level tests drive ``kombu_sidekiq.fetch.ReliableFetch`` directly; worker tests kill real
``celery worker`` processes.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import time
from typing import Any

import pytest
import redis as redis_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Consumer, Exchange, Queue
from support.waiting import wait_for

import kombu_sidekiq  # noqa: F401
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.fetch import ReliableFetch


def push(redis: redis_lib.Redis, klass: str, args: list[Any], queue: str = "default") -> str:
    job = jobs.build(klass, args, queue=queue)
    Client(redis).push(job)
    return jobs.dumps(job)


def held(redis: redis_lib.Redis, fetch: ReliableFetch, queue: str = "default") -> list[bytes]:
    """What ``fetch`` holds in flight, oldest first."""
    fields = redis.hgetall(fetch.inflight(queue))
    return [fields[tag] for tag in sorted(fields, key=int)]


def test_fetch_moves_jobs_in_flight_in_the_same_step(redis: redis_lib.Redis) -> None:
    raws = [push(redis, "A", [n]) for n in range(3)]
    fetch = ReliableFetch(Client(redis), lease=5)
    taken = fetch.fetch(["default"], 2)
    assert [(item.payload.decode(), item.tag, item.is_job) for item in taken] == [
        (raws[0], 1, True),
        (raws[1], 2, True),
    ]
    assert held(redis, fetch) == [raws[0].encode(), raws[1].encode()]
    assert redis.llen("queue:default") == 1
    assert redis.ttl(fetch.lease_key) > 0
    value = f"{fetch.lease_key}\nqueue:default\n{fetch.landing('default')}".encode()
    assert redis.hget(fetch.registry, fetch.inflight("default")) == value
    assert [item.tag for item in fetch.fetch(["default"], 5)] == [3]


def test_acks_ride_along_with_the_next_fetch(redis: redis_lib.Redis) -> None:
    first, second = push(redis, "A", [1]), push(redis, "A", [2])
    fetch = ReliableFetch(Client(redis), lease=5)
    (item,) = fetch.fetch(["default"], 1)
    fetch.ack("default", item.tag)
    assert held(redis, fetch) == [first.encode()]  # not yet: no round trip of its own
    (item,) = fetch.fetch(["default"], 1)
    assert item.payload.decode() == second
    assert held(redis, fetch) == [second.encode()]


def test_byte_identical_jobs_in_flight_never_collide(redis: redis_lib.Redis) -> None:
    raw = push(redis, "A", [1])
    redis.lpush("queue:default", raw)
    fetch = ReliableFetch(Client(redis), lease=5)
    assert len(fetch.fetch(["default"], 5)) == 2
    assert held(redis, fetch) == [raw.encode(), raw.encode()]


def test_a_dead_workers_jobs_go_back_to_the_head_oldest_first(redis: redis_lib.Redis) -> None:
    raws = [push(redis, "A", [n]) for n in range(5)]
    dead = ReliableFetch(Client(redis), lease=5)
    dead.fetch(["default"], 3)
    redis.lpush(dead.landing("default"), redis.rpop("queue:default"))  # an idle wait took raws[3]
    live = ReliableFetch(Client(redis), lease=5)
    live.fetch(["default"], 1)
    assert live.recover() == 0  # both leases are alive
    redis.delete(dead.lease_key)  # what expiry does after a kill -9
    assert live.recover() == 4
    # BRPOP takes from the right: the oldest of the dead worker's jobs comes first again
    assert redis.lrange("queue:default", 0, -1) == [raws[n].encode() for n in (3, 2, 1, 0)]
    assert not redis.exists(dead.inflight("default"), dead.landing("default"))
    assert not redis.hexists(dead.registry, dead.inflight("default"))
    assert held(redis, live) == [raws[4].encode()]


def test_an_idle_wait_lands_a_job_that_the_next_fetch_records(redis: redis_lib.Redis) -> None:
    raw = push(redis, "A", [1])
    fetch = ReliableFetch(Client(redis), lease=5)
    fetch.watch("default")
    command = fetch.block_command("default", 1)
    assert redis.execute_command(*command) == raw.encode()
    fetch.landed()
    (item,) = fetch.fetch(["default"], 5)
    assert (item.payload.decode(), item.is_job) == (raw, True)
    assert held(redis, fetch) == [raw.encode()] and redis.llen(fetch.landing("default")) == 0


def test_settle_moves_a_job_out_of_flight_atomically_and_only_once(redis: redis_lib.Redis) -> None:
    redis.zadd("dead", {"ancient": time.time() - 200 * 24 * 3600})
    fetch = ReliableFetch(Client(redis), lease=5)
    destinations = ("retry", "schedule", "dead", "tail", "head")
    for to in destinations:
        push(redis, "J", [to])
    for to, item in zip(destinations, fetch.fetch(["default"], 5), strict=True):
        assert fetch.settle("default", item.tag, to, f"stored at {to}", at=123.5)  # type: ignore[arg-type]
        assert not fetch.settle("default", item.tag, to, "again")  # gone: nothing stored twice
    assert held(redis, fetch) == []
    assert redis.zrange("retry", 0, -1, withscores=True) == [(b"stored at retry", 123.5)]
    assert redis.zrange("schedule", 0, -1, withscores=True) == [(b"stored at schedule", 123.5)]
    assert redis.zrange("dead", 0, -1) == [b"stored at dead"]  # trimmed by age, as the morgue is
    assert redis.lrange("queue:default", 0, -1) == [b"stored at tail", b"stored at head"]


def test_stop_releases_the_lease_and_the_registry_unless_jobs_are_held(
    redis: redis_lib.Redis,
) -> None:
    fetch = ReliableFetch(Client(redis), lease=5)
    fetch.watch("default")
    fetch.start()
    wait_for(lambda: redis.exists(fetch.lease_key), timeout=5, message="lease")
    fetch.stop()
    assert not redis.exists(fetch.lease_key)
    assert not redis.hexists(fetch.registry, fetch.inflight("default"))
    push(redis, "A", [1])
    holder = ReliableFetch(Client(redis), lease=5)
    holder.watch("default")
    holder.fetch(["default"], 1)
    holder.stop()  # Redis is up, but say the requeue had failed: recovery must still find it
    assert redis.exists(holder.lease_key) and redis.hexists(
        holder.registry, holder.inflight("default")
    )


payloads = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["class", "args", "queue", "jid", "retry", "created_at", "x"]),
                inner,
                max_size=5,
            )
        ),
        max_leaves=8,
    ).map(lambda value: json.dumps(value).encode()),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=st.lists(payloads, min_size=1, max_size=6, unique=True))
def test_malformed_payloads_never_crash_the_consumer_nor_vanish(
    broker_url: str, redis: redis_lib.Redis, batch: list[bytes]
) -> None:
    redis.flushdb()
    marker = jobs.dumps(jobs.build("Marker", []))
    redis.lpush("queue:default", *batch)
    redis.lpush("queue:default", marker)  # BRPOP's end is the right: the batch comes first
    delivered: list[bytes] = []
    queue = Queue("default", Exchange("default"), "default")
    with Connection(broker_url, transport_options={"fetch_lease": 5}) as conn:

        def on_message(body: Any, message: Any) -> None:
            delivered.append(message.properties["sidekiq_job"].encode())
            message.ack()

        with Consumer(conn.default_channel, [queue], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 10
            while marker.encode() not in delivered and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
    dead = redis.zrange("dead", 0, -1)
    assert marker.encode() in delivered
    # every payload was either run or kept in the dead set, none lost, none twice
    assert sorted(delivered + dead) == sorted([*batch, marker.encode()])


FAST = json.dumps({"poll_interval": 0.5, "fetch_lease": 3})


@pytest.mark.worker
def test_kill_9_mid_job_ten_times_loses_nothing(celery_worker: Any, redis: redis_lib.Redis) -> None:
    count = 24
    client = Client(redis)
    client.push_bulk([jobs.build("bridge.sleep", [0.05 + n / 1000]) for n in range(count)])
    rng = random.Random(7)
    for round_ in range(10):
        worker = celery_worker(
            name=f"victim{round_}",
            pool=rng.choice(["solo", "prefork"]),
            concurrency=2,
            env={"SIDEKIQ_SETUP": FAST},
        )
        time.sleep(rng.uniform(0.0, 0.6))  # varied timing: the kill lands anywhere in the work
        worker.kill9()
    celery_worker(name="survivor", env={"SIDEKIQ_SETUP": FAST})

    def done() -> bool:
        seen = {json.loads(r)["args"][0] for r in redis.lrange("results:bridge.sleep", 0, -1)}
        return len(seen) == count

    wait_for(done, timeout=90, interval=0.2, message=f"all {count} jobs ran at least once")
    wait_for(lambda: redis.llen("queue:default") == 0, timeout=10, message="queue drained")


@pytest.mark.worker
def test_a_job_longer_than_every_timeout_runs_exactly_once_with_two_workers(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    setup = json.dumps({"poll_interval": 0.5, "fetch_lease": 2})
    celery_worker(name="first", env={"SIDEKIQ_SETUP": setup})
    celery_worker(name="second", env={"SIDEKIQ_SETUP": setup})
    Client(redis).push(jobs.build("bridge.sleep", [7]))  # 3.5 leases, many recovery rounds
    wait_for(
        lambda: redis.llen("results:bridge.sleep") >= 1, timeout=30, message="the long job started"
    )
    wait_for(lambda: redis.get("done:bridge.sleep"), timeout=30, message="the long job finished")
    wait_for(
        lambda: not any(redis.hlen(k) for k in redis.keys("celery-sidekiq:inflight:*")),
        timeout=10,
        message="ack flushed",
    )
    assert redis.llen("results:bridge.sleep") == 1
    assert redis.llen("queue:default") == 0


@pytest.mark.worker
def test_sigterm_puts_prefetched_jobs_back_at_the_head(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    worker = celery_worker(env={"SIDEKIQ_SETUP": FAST})
    raws = [push(redis, "bridge.sleep", [1.5 + n / 100]) for n in range(5)]
    wait_for(
        lambda: redis.llen("results:bridge.sleep") == 1, timeout=20, message="first job started"
    )
    wait_for(lambda: redis.llen("queue:default") < 4, timeout=10, message="prefetch")
    worker.stop(signal.SIGTERM)
    started = {json.loads(r)["args"][0] for r in redis.lrange("results:bridge.sleep", 0, -1)}
    back = [r.decode() for r in redis.lrange("queue:default", 0, -1)]
    # every job either ran or is back in its queue, byte for byte, none in flight
    assert sorted(back + [r for r in raws if jobs.parse(r)["args"][0] in started]) == sorted(raws)
    assert all(not redis.hlen(k) for k in redis.keys("celery-sidekiq:inflight:*"))
    # the unstarted ones keep their order, the oldest at the head (BRPOP end)
    assert back == [r for r in raws if jobs.parse(r)["args"][0] not in started][::-1]
