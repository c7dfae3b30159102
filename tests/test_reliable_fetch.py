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
    """What ``fetch`` holds in flight, by field number (roughly oldest first)."""
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


def calls(redis: redis_lib.Redis, command: str) -> int:
    """How many times Redis ran ``command`` (inside scripts too), from ``INFO commandstats``."""
    stats: dict[str, Any] = redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def inflight_jobs(redis: redis_lib.Redis, fetch: ReliableFetch, queue: str) -> dict[int, bytes]:
    return {int(tag): job for tag, job in redis.hgetall(fetch.inflight(queue)).items()}


def test_new_jobs_take_over_the_acknowledged_fields_without_an_hdel(
    redis: redis_lib.Redis,
) -> None:
    raws = [push(redis, "A", [n]).encode() for n in range(10)]
    fetch = ReliableFetch(Client(redis), lease=5)
    assert [item.tag for item in fetch.fetch(["default"], 4)] == [1, 2, 3, 4]
    hdels = calls(redis, "hdel")

    # as many new jobs as acks: each takes over an acknowledged field, lowest first; no HDEL
    fetch.ack("default", 4)
    fetch.ack("default", 2)
    assert [item.tag for item in fetch.fetch(["default"], 2)] == [2, 4]
    assert inflight_jobs(redis, fetch, "default") == {
        1: raws[0],
        2: raws[4],
        3: raws[2],
        4: raws[5],
    }
    assert calls(redis, "hdel") == hdels

    # fewer new jobs than acks: what is left over is deleted, in the same call
    fetch.ack("default", 1)
    fetch.ack("default", 3)
    fetch.ack("default", 4)
    assert [item.tag for item in fetch.fetch(["default"], 1)] == [1]
    assert inflight_jobs(redis, fetch, "default") == {1: raws[6], 2: raws[4]}
    assert calls(redis, "hdel") == hdels + 1

    # more new jobs than acks: new numbers above every one handed out before
    fetch.ack("default", 2)
    assert [item.tag for item in fetch.fetch(["default"], 3)] == [2, 5, 6]
    assert inflight_jobs(redis, fetch, "default") == {
        1: raws[6],
        2: raws[7],
        5: raws[8],
        6: raws[9],
    }
    assert calls(redis, "hdel") == hdels + 1

    # nothing to take: the acks are deleted as before
    fetch.ack("default", 5)
    assert fetch.fetch(["default"], 3) == []
    assert inflight_jobs(redis, fetch, "default") == {1: raws[6], 2: raws[7], 6: raws[9]}


def test_only_a_fetched_queues_own_acks_are_reused_and_each_once(redis: redis_lib.Redis) -> None:
    other = push(redis, "B", [0], queue="other").encode()
    raws = [push(redis, "A", [n]).encode() for n in range(4)]
    fetch = ReliableFetch(Client(redis), lease=5)
    (on_other,) = fetch.fetch(["other"], 1)
    first, second = fetch.fetch(["default"], 2)
    assert (on_other.tag, first.tag, second.tag) == (1, 2, 3)
    fetch.ack("other", on_other.tag)  # a hash this fetch does not take from: deleted
    fetch.ack("default", first.tag)
    fetch.ack("default", first.tag)  # acked twice: still freed once
    taken = fetch.fetch(["default"], 2)
    assert [item.tag for item in taken] == [2, 4]
    assert inflight_jobs(redis, fetch, "default") == {2: raws[2], 3: raws[1], 4: raws[3]}
    assert inflight_jobs(redis, fetch, "other") == {}
    assert redis.lrange("queue:other", 0, -1) == []  # taken once, acked: gone
    assert on_other.payload == other


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["push", "fetch", "ack", "flush"]),
            st.integers(min_value=0, max_value=5),
            st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a")]),
        ),
        max_size=40,
    )
)
def test_tags_stay_unique_among_live_jobs_and_no_job_is_lost(
    redis: redis_lib.Redis, steps: list[tuple[str, int, tuple[str, ...]]]
) -> None:
    redis.flushdb()
    fetch = ReliableFetch(Client(redis), lease=5)
    live: dict[tuple[str, int], bytes] = {}  # delivered, not acked
    done: list[bytes] = []
    pushed: list[bytes] = []
    handed_out: set[int] = set()
    for op, number, queues in steps:
        if op == "push":
            pushed += [push(redis, "J", [len(pushed)], queue=queues[0]).encode()]
        elif op == "ack" and live:
            key = sorted(live)[number % len(live)]
            fetch.ack(*key)
            done.append(live.pop(key))
        elif op == "flush":
            fetch.flush_acks()
        elif op == "fetch":
            for item in fetch.fetch(list(queues), number + 1):
                assert (item.queue, item.tag) not in live  # never two live jobs on one field
                assert item.tag < fetch._next_tag
                live[(item.queue, item.tag)] = item.payload
                handed_out.add(item.tag)
            assert fetch._next_tag > max(handed_out, default=0)
        if op in ("fetch", "flush"):  # every ack carried: the hashes hold exactly the live jobs
            for queue in ("a", "b"):
                want = {tag: job for (q, tag), job in live.items() if q == queue}
                assert inflight_jobs(redis, fetch, queue) == want
    fetch.flush_acks()
    waiting = redis.lrange("queue:a", 0, -1) + redis.lrange("queue:b", 0, -1)
    assert sorted(waiting + list(live.values()) + done) == sorted(pushed)


def test_byte_identical_jobs_in_flight_never_collide(redis: redis_lib.Redis) -> None:
    raw = push(redis, "A", [1])
    redis.lpush("queue:default", raw)
    fetch = ReliableFetch(Client(redis), lease=5)
    assert len(fetch.fetch(["default"], 5)) == 2
    assert held(redis, fetch) == [raw.encode(), raw.encode()]


def test_a_dead_workers_jobs_go_back_to_the_head_byte_for_byte(redis: redis_lib.Redis) -> None:
    raws = [push(redis, "A", [n]) for n in range(8)]
    dead = ReliableFetch(Client(redis), lease=5)
    first = dead.fetch(["default"], 3)  # raws 0, 1, 2 under fields 1, 2, 3
    dead.ack("default", first[1].tag)  # raws[1] done
    dead.fetch(["default"], 2)  # raws[3] takes over field 2, raws[4] gets 4
    redis.lpush(dead.landing("default"), redis.rpop("queue:default"))  # an idle wait took raws[5]
    live = ReliableFetch(Client(redis), lease=5)
    live.fetch(["default"], 1)  # raws[6]; raws[7] waits
    assert live.recover() == 0  # both leases are alive
    redis.delete(dead.lease_key)  # what expiry does after a kill -9
    assert live.recover() == 5
    back = redis.lrange("queue:default", 0, -1)
    # BRPOP takes from the right: every job the dead worker held comes before the one that
    # waited, byte for byte; what landed (fetched last) comes after what was in its hash. Within
    # the hash the order is only roughly the fetch order (raws[3] reuses raws[1]'s field).
    assert back[:2] == [raws[7].encode(), raws[5].encode()]
    assert sorted(back[2:]) == sorted(raws[n].encode() for n in (0, 2, 3, 4))
    assert not redis.exists(dead.inflight("default"), dead.landing("default"))
    assert not redis.hexists(dead.registry, dead.inflight("default"))
    assert held(redis, live) == [raws[6].encode()]


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
    (item,) = holder.fetch(["default"], 1)
    holder.delivered("default", item.tag, item.payload)  # a task still runs it at stop
    holder.stop()  # recovery must still find it once the lease expires
    assert redis.exists(holder.lease_key) and redis.hexists(
        holder.registry, holder.inflight("default")
    )
    assert redis.llen("queue:default") == 0
    holder.abandon()  # the task never ends here: stop renewing its lease


def test_stop_gives_back_at_once_what_no_task_holds_in_one_step_per_queue(
    redis: redis_lib.Redis,
) -> None:
    raws = [push(redis, "A", [n]).encode() for n in range(4)]
    other = push(redis, "B", [0], queue="other").encode()
    fetch = ReliableFetch(Client(redis), lease=5)
    fetch.watch("default")
    fetch.watch("other")
    running, *prefetched = fetch.fetch(["default"], 3)
    fetch.delivered("default", running.tag, running.payload)
    fetch.fetch(["other"], 1)  # fetched, never delivered (a reply read after the cancel)
    redis.lpush(fetch.landing("default"), raws[3])  # a wait that landed after the cancel
    redis.delete("queue:default")
    fetch.stop()
    # back at the head, byte for byte, oldest nearest the head; the running one stays held
    assert redis.lrange("queue:default", 0, -1) == [raws[3], raws[2], raws[1]]
    assert redis.lrange("queue:other", 0, -1) == [other]
    assert held(redis, fetch) == [raws[0]]
    assert not redis.exists(fetch.landing("default"))
    assert [item.payload for item in prefetched] == [raws[1], raws[2]]
    fetch.ack("default", running.tag, running.payload)  # the running task ends: all released
    wait_for(lambda: not redis.exists(fetch.lease_key), timeout=10, message="lease released")
    assert held(redis, fetch) == []
    assert not redis.hexists(fetch.registry, fetch.inflight("default"))


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
