"""Reliable fetch when replies are lost, keys are of the wrong type, and jobs are poison.

Redis-level tests drive ``kombu_sidekiq.fetch.ReliableFetch`` against a real redis-server: a
"lost reply" is a fetch that ran in Redis (sent on a connection of its own, its reply thrown
away) or never ran (never sent), after which the worker only knows that it does not know.
The worker-level twins (a real ``celery worker`` behind a fault proxy) live in
tests/test_faults.py.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
import redis as redis_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.fetch import POISON_ERROR_CLASS, Fetched, ReliableFetch


def push(redis: redis_lib.Redis, args: list[Any], queue: str = "default") -> bytes:
    job = jobs.build("A", args, queue=queue)
    Client(redis).push(job)
    return jobs.dumps(job).encode()


def run_and_lose_reply(redis: redis_lib.Redis, fetch: ReliableFetch, count: int) -> None:
    """A fetch that runs in Redis while its reply never reaches the worker."""
    connection = redis.connection_pool.make_connection()
    try:
        connection.send_command(*fetch.fetch_command(["default"], count))
        connection.read_response()  # it ran; the worker never learns what it took
    finally:
        connection.disconnect()
    fetch.lost()


def lose_before_sending(fetch: ReliableFetch, count: int) -> None:
    """A fetch whose connection broke before Redis read it: it never ran."""
    fetch.fetch_command(["default"], count)
    fetch.lost()


def deliver(fetch: ReliableFetch, items: list[Fetched]) -> list[Fetched]:
    for item in items:
        fetch.delivered(item.queue, item.tag, item.payload)
    return items


def test_a_lost_fetch_reply_overwrites_nothing_and_its_jobs_come_back(
    redis: redis_lib.Redis,
) -> None:
    raws = [push(redis, [n]) for n in range(12)]
    fetch = ReliableFetch(Client(redis), lease=5)
    fetch.watch("default")
    done: list[bytes] = []
    first = deliver(fetch, fetch.fetch(["default"], 4))
    for item in first[:2]:
        fetch.ack(item.queue, item.tag, item.payload)
        done.append(item.payload)
    run_and_lose_reply(redis, fetch, 4)  # took 4 jobs, reused the 2 acked fields
    # The next fetches neither reuse those fields nor the new numbers the lost one took.
    while True:
        taken = deliver(fetch, fetch.fetch(["default"], 3))
        if not taken:
            break
        for item in taken:
            fetch.ack(item.queue, item.tag, item.payload)
            done.append(item.payload)
    for item in first[2:]:
        fetch.ack(item.queue, item.tag, item.payload)
        done.append(item.payload)
    fetch.flush_acks()
    fetch.stop()
    assert sorted(done) == sorted(raws)  # each job once: none lost, none twice
    assert redis.hlen(fetch.inflight("default")) == 0


def test_acks_of_a_fetch_that_never_ran_are_not_run_again(redis: redis_lib.Redis) -> None:
    raws = [push(redis, [n]) for n in range(6)]
    fetch = ReliableFetch(Client(redis), lease=5)
    fetch.watch("default")
    done: list[bytes] = []
    for item in deliver(fetch, fetch.fetch(["default"], 3)):
        fetch.ack(item.queue, item.tag, item.payload)
        done.append(item.payload)
    lose_before_sending(fetch, 3)  # its acks never reached Redis: those jobs are done
    while taken := deliver(fetch, fetch.fetch(["default"], 2)):
        for item in taken:
            fetch.ack(item.queue, item.tag, item.payload)
            done.append(item.payload)
    fetch.stop()
    assert sorted(done) == sorted(raws)
    assert redis.llen("queue:default") == 0


operations = st.lists(
    st.sampled_from(["fetch", "ack", "lose-ran", "lose-unsent", "push"]), min_size=5, max_size=40
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations, counts=st.lists(st.integers(1, 4), min_size=40, max_size=40))
def test_no_sequence_of_lost_replies_loses_or_doubles_a_job(
    redis: redis_lib.Redis, ops: list[str], counts: list[int]
) -> None:
    redis.flushdb()
    pushed = [push(redis, [n]) for n in range(8)]
    fetch = ReliableFetch(Client(redis), lease=5)
    fetch.watch("default")
    running: list[Fetched] = []
    done: Counter[bytes] = Counter()
    for op, count in zip(ops, counts, strict=False):
        if op == "fetch":
            running += deliver(fetch, fetch.fetch(["default"], count))
        elif op == "ack" and running:
            for item in running[:count]:
                fetch.ack(item.queue, item.tag, item.payload)
                done[item.payload] += 1
            running = running[count:]
        elif op == "lose-ran":
            run_and_lose_reply(redis, fetch, count)
        elif op == "lose-unsent":
            lose_before_sending(fetch, count)
        elif op == "push":
            pushed.append(push(redis, [len(pushed)]))
    for item in running:  # the tasks running finish
        fetch.ack(item.queue, item.tag, item.payload)
        done[item.payload] += 1
    while taken := deliver(fetch, fetch.fetch(["default"], 4)):
        for item in taken:
            fetch.ack(item.queue, item.tag, item.payload)
            done[item.payload] += 1
    fetch.stop()
    assert sorted(done) == sorted(pushed)
    assert max(done.values()) == 1
    assert redis.hlen(fetch.inflight("default")) == 0


def test_a_queue_key_of_the_wrong_type_is_skipped_and_the_others_fetched(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.set("queue:broken", "not a list")
    good = push(redis, [1])
    fetch = ReliableFetch(Client(redis), lease=5)
    taken = fetch.fetch(["broken", "default"], 5)
    assert [(item.queue, item.payload) for item in taken] == [("default", good)]
    assert redis.get("queue:broken") == b"not a list"
    assert "queue 'broken': skipped" in caplog.text


def test_an_in_flight_hash_of_the_wrong_type_puts_the_jobs_back_where_they_were(
    redis: redis_lib.Redis,
) -> None:
    raws = [push(redis, [n]) for n in range(3)]
    fetch = ReliableFetch(Client(redis), lease=5)
    redis.set(fetch.inflight("default"), "in the way")
    assert fetch.fetch(["default"], 2) == []
    assert redis.lrange("queue:default", 0, -1) == raws[::-1]  # all there, in order
    redis.delete(fetch.inflight("default"))
    assert [item.payload for item in fetch.fetch(["default"], 3)] == raws


def test_settle_into_a_key_of_the_wrong_type_leaves_the_job_in_flight(
    redis: redis_lib.Redis,
) -> None:
    raw = push(redis, [1])
    fetch = ReliableFetch(Client(redis), lease=5)
    (item,) = fetch.fetch(["default"], 1)
    redis.set("retry", "in the way")
    with pytest.raises(redis_lib.ResponseError, match="WRONGTYPE"):
        fetch.settle("default", item.tag, "retry", raw, at=1.0)
    assert redis.hget(fetch.inflight("default"), str(item.tag)) == raw
    redis.delete("retry")
    assert fetch.settle("default", item.tag, "retry", raw, at=1.0)
    assert not fetch.settle("default", item.tag, "retry", raw, at=1.0)  # sent twice: one copy
    assert redis.zcard("retry") == 1


def test_recovery_goes_on_past_a_worker_whose_keys_it_cannot_use(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    raws = [push(redis, [n], queue=queue) for n, queue in enumerate(["x", "default"])]
    broken = ReliableFetch(Client(redis), lease=2)
    broken.watch("x")
    broken.fetch(["x"], 1)
    dead = ReliableFetch(Client(redis), lease=2)
    dead.watch("default")
    dead.fetch(["default"], 1)
    redis.delete(broken.lease_key, dead.lease_key)  # both died
    redis.delete("queue:x")
    redis.set("queue:x", "stray")
    redis.hset(dead.registry, "celery-sidekiq:inflight:garbage", "no newlines here")
    survivor = ReliableFetch(Client(redis), lease=5)
    assert survivor.recover() == 1
    assert redis.lrange("queue:default", 0, -1) == [raws[1]]
    assert redis.hget(broken.inflight("x"), "1") == raws[0]  # kept for a person, and retried
    assert "cannot be used" in caplog.text


def test_a_job_recovered_more_than_max_recoveries_times_is_dead_with_the_reason(
    redis: redis_lib.Redis,
) -> None:
    raw = push(redis, [1])
    survivor = ReliableFetch(Client(redis), lease=5, max_recoveries=3)
    for _ in range(3):  # three workers take it and die
        victim = ReliableFetch(Client(redis), lease=2)
        victim.watch("default")
        assert [item.payload for item in victim.fetch(["default"], 1)] == [raw]
        redis.delete(victim.lease_key)
        assert survivor.recover() == 1
    victim = ReliableFetch(Client(redis), lease=2)
    victim.watch("default")
    victim.fetch(["default"], 1)
    redis.delete(victim.lease_key)
    assert survivor.recover() == 0  # the fourth time: poison
    assert redis.llen("queue:default") == 0
    (dead,) = redis.zrange("dead", 0, -1)
    job = json.loads(dead)
    assert job["error_class"] == POISON_ERROR_CLASS
    assert "more than 3 times" in job["error_message"]
    assert {
        k: v for k, v in job.items() if k not in ("error_class", "error_message", "failed_at")
    } == json.loads(raw)
    assert redis.ttl("celery-sidekiq:recoveries") > 0


def test_max_recoveries_zero_never_counts(redis: redis_lib.Redis) -> None:
    push(redis, [1])
    survivor = ReliableFetch(Client(redis), lease=5, max_recoveries=0)
    for _ in range(5):
        victim = ReliableFetch(Client(redis), lease=2)
        victim.watch("default")
        victim.fetch(["default"], 1)
        redis.delete(victim.lease_key)
        assert survivor.recover() == 1
    assert not redis.exists("celery-sidekiq:recoveries")


@pytest.mark.parametrize("bad", [True, 1.5, -1, "3"])
def test_a_bad_max_recoveries_fails_at_startup_saying_what_to_change(
    redis: redis_lib.Redis, bad: Any
) -> None:
    with pytest.raises(ValueError, match="max_recoveries"):
        ReliableFetch(Client(redis), max_recoveries=bad)
