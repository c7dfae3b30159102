"""The poller's promotion of ``retry`` and ``schedule`` (``Client.enqueue_due``, promote.lua,
bury.lua) against a real Redis, when members or keys are bad: one bad member never wedges the
poller, never stops the good ones behind it, and no job is ever lost or left looping.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import redis as redis_lib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import hostile

from kombu_sidekiq import job as jobs
from kombu_sidekiq import scripts
from kombu_sidekiq.client import DEAD_MAX_JOBS, DEAD_TIMEOUT, PROMOTE_BATCH, Client

SURROGATE = b'{"class":"A","args":["\\ud800"],"queue":"default","jid":"' + b"e" * 24 + b'"}'


def due_jobs(
    redis: redis_lib.Redis, zset: str, count: int, queue: str = "default", start: float = 0
) -> list[str]:
    """``count`` good jobs due in ``zset``, scores from ``start`` seconds ago on; their jids."""
    now = time.time()
    built = [jobs.build("Good", [n], queue=queue, scheduled=True) for n in range(count)]
    if built:
        redis.zadd(zset, {jobs.dumps(job): now - 1000 + start + n for n, job in enumerate(built)})
    return [job["jid"] for job in built]


def queued_jids(redis: redis_lib.Redis, queue: str = "default") -> list[str]:
    return [jobs.parse(raw)["jid"] for raw in redis.lrange(f"queue:{queue}", 0, -1)]


def enqueue_within(client: Client, seconds: float = 30) -> int:
    """``enqueue_due()`` in a thread, failing (not hanging the suite) if it never returns."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(client.enqueue_due()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"enqueue_due() still running after {seconds}s: it loops"
    assert result, "enqueue_due() raised (see the thread's traceback above)"
    return int(result[0])


def test_one_lone_surrogate_member_among_good_ones_wedges_nothing(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = due_jobs(redis, "schedule", 3) + due_jobs(redis, "retry", 2, start=10)
    redis.zadd("schedule", {SURROGATE: time.time() - 2000})  # first in line
    with caplog.at_level(logging.ERROR, "kombu_sidekiq.client"):
        assert Client(redis).enqueue_due() == 5
    assert sorted(queued_jids(redis)) == sorted(good)
    assert redis.zrange("dead", 0, -1) == [SURROGATE]  # untouched, byte for byte
    assert redis.zcard("schedule") == 0 and redis.zcard("retry") == 0
    assert "lone UTF-16 surrogate" in caplog.text


@pytest.mark.parametrize("name", sorted(hostile.EXAMPLES))
def test_every_kind_of_hostile_member_is_buried_or_promoted_never_stuck(
    redis: redis_lib.Redis, name: str
) -> None:
    raw = hostile.EXAMPLES[name]
    good = due_jobs(redis, "retry", 2) + due_jobs(redis, "schedule", 2)
    redis.zadd("retry", {raw: time.time() - 5000})
    redis.zadd("schedule", {raw: time.time() - 5000})
    moved = enqueue_within(Client(redis))
    assert redis.zcard("retry") == 0 and redis.zcard("schedule") == 0
    try:
        jobs.parse(raw)
    except jobs.InvalidJob:
        assert moved == 4 and redis.zrange("dead", 0, -1) == [raw]
        assert sorted(queued_jids(redis)) == sorted(good)
    else:  # a job with odd keys is still a job: it runs
        assert moved == 6 and redis.zcard("dead") == 0
        assert set(good) <= set(queued_jids(redis))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    members=st.lists(hostile.hostile_members(), min_size=1, max_size=6, unique=True),
    good_count=st.integers(0, 5),
)
def test_hostile_members_in_both_sets_never_stop_the_good_ones(
    redis: redis_lib.Redis, members: list[bytes], good_count: int
) -> None:
    redis.flushall()
    good = due_jobs(redis, "schedule", good_count) + due_jobs(redis, "retry", good_count)
    now = time.time()
    for n, raw in enumerate(members):
        redis.zadd("retry" if n % 2 else "schedule", {raw: now - 3000 + n})
    enqueue_within(Client(redis))
    refused = set()
    for raw in members:
        try:
            jobs.parse(raw)
        except jobs.InvalidJob:
            refused.add(raw)
    assert set(redis.zrange("dead", 0, -1)) == refused
    assert redis.zcard("retry") == 0 and redis.zcard("schedule") == 0
    assert set(good) <= set(queued_jids(redis))
    assert redis.llen("queue:default") == len(good) + len(members) - len(refused)


def test_a_queue_key_of_another_type_keeps_its_job_in_the_set(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.set("queue:stray", "a string where a list belongs")
    (stuck,) = due_jobs(redis, "schedule", 1, queue="stray")
    good = due_jobs(redis, "schedule", 2, start=5) + due_jobs(redis, "retry", 2)
    client = Client(redis)
    with caplog.at_level(logging.ERROR, "kombu_sidekiq.client"):
        assert enqueue_within(client) == 4
        assert enqueue_within(client) == 0  # tried again, left again, no loop
    assert sorted(queued_jids(redis)) == sorted(good)
    (left,) = redis.zrange("schedule", 0, -1)
    assert jobs.parse(left)["jid"] == stuck  # not lost, not buried: its queue is at fault
    assert redis.get("queue:stray") == b"a string where a list belongs"
    assert "queue:stray: WRONGTYPE" in caplog.text and stuck in caplog.text
    redis.delete("queue:stray")  # the operator fixes the key: the next poll moves the job
    assert client.enqueue_due() == 1
    assert queued_jids(redis, "stray") == [stuck] and redis.zcard("schedule") == 0


def test_more_stuck_members_than_a_batch_never_loop_and_the_rest_still_move(
    redis: redis_lib.Redis,
) -> None:
    redis.sadd("queue:stray", "a set where a list belongs")
    stuck = due_jobs(redis, "retry", PROMOTE_BATCH + 50, queue="stray")
    redis.zadd("retry", {b"[1]": time.time() - 2000})  # not a job, ahead of every one
    good = due_jobs(redis, "retry", PROMOTE_BATCH + 20, start=500)
    assert enqueue_within(Client(redis)) == len(good)
    assert sorted(queued_jids(redis)) == sorted(good)
    assert redis.zcard("retry") == len(stuck) and redis.zrange("dead", 0, -1) == [b"[1]"]


def test_a_dead_set_of_another_type_keeps_invalid_members_where_they_are(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.rpush("dead", "a list where the dead set belongs")
    invalid = [b"{broken %d" % n for n in range(PROMOTE_BATCH + 10)]
    redis.zadd("schedule", {raw: time.time() - 3000 + n for n, raw in enumerate(invalid)})
    good = due_jobs(redis, "schedule", 3) + due_jobs(redis, "retry", 3)
    with caplog.at_level(logging.ERROR, "kombu_sidekiq.client"):
        assert enqueue_within(Client(redis)) == 6
    assert sorted(queued_jids(redis)) == sorted(good)
    assert sorted(redis.zrange("schedule", 0, -1)) == sorted(invalid)  # none lost
    assert redis.lrange("dead", 0, -1) == [b"a list where the dead set belongs"]
    assert "the dead set refused an invalid job" in caplog.text


def test_a_set_that_cannot_be_read_does_not_stop_the_other(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.set("retry", "not a sorted set")
    good = due_jobs(redis, "schedule", 3)
    with caplog.at_level(logging.ERROR, "kombu_sidekiq.client"):
        assert Client(redis).enqueue_due() == 3
    assert sorted(queued_jids(redis)) == sorted(good)
    assert "cannot promote the due jobs of retry" in caplog.text


def test_a_queues_set_of_another_type_still_lets_jobs_reach_their_queue(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.set("queues", "not a set")
    good = due_jobs(redis, "schedule", 2)
    with caplog.at_level(logging.ERROR, "kombu_sidekiq.client"):
        assert Client(redis).enqueue_due() == 2
    assert sorted(queued_jids(redis)) == sorted(good)
    assert "queues: WRONGTYPE" in caplog.text


def test_a_client_decoding_replies_promotes_past_members_that_are_not_utf8(
    redis_server: Any, redis: redis_lib.Redis
) -> None:
    text_client = Client(redis_server.client(decode_responses=True))
    raw = b'{"class":"A","args":["\xff"]}'
    redis.zadd("schedule", {raw: time.time() - 2000})
    good = due_jobs(redis, "schedule", 2)
    assert text_client.enqueue_due() == 2
    assert sorted(queued_jids(redis)) == sorted(good)
    assert redis.zrange("dead", 0, -1) == [raw]


def test_out_of_memory_refuses_the_push_and_loses_nothing(redis_server_factory: Any) -> None:
    server = redis_server_factory(extra_args=["--maxmemory-policy", "noeviction"])
    with server.client() as redis:
        good = due_jobs(redis, "schedule", 3)
        redis.zadd("retry", {b"{broken": time.time() - 10})
        redis.config_set("maxmemory", 1)  # below what is used: every growing write is refused
        try:
            assert enqueue_within(Client(redis)) == 0
            assert redis.zcard("schedule") == 3 and redis.zrange("retry", 0, -1) == [b"{broken"]
        finally:
            redis.config_set("maxmemory", 0)
        assert Client(redis).enqueue_due() == 3
        assert sorted(queued_jids(redis)) == sorted(good)
        assert redis.zrange("dead", 0, -1) == [b"{broken"]


# -- the scripts themselves ---------------------------------------------------------------------


def test_promote_lua_pushes_before_it_removes_and_reports_what_it_left(
    redis: redis_lib.Redis,
) -> None:
    promote = redis.register_script(scripts.source("promote"))
    redis.zadd("schedule", {"a": 1, "b": 2, "c": 3})
    redis.hset("queue:h", "f", "v")
    reply = promote(
        keys=["schedule", "queues", "queue:x", "queue:h", "queue:y", "queue:x"],
        args=["a", "x", "A", "b", "h", "B", "gone", "y", "G", "c", "x", "C"],
    )
    assert reply[0] == 2 and reply[1] == 2 and b"queue:h: WRONGTYPE" in reply[2]
    assert len(reply) == 3  # "gone" was no member: not pushed, not reported
    assert redis.zrange("schedule", 0, -1) == [b"b"]
    assert redis.lrange("queue:x", 0, -1) == [b"C", b"A"] and not redis.exists("queue:y")
    assert redis.smembers("queues") == {b"x"}
    assert redis.hgetall("queue:h") == {b"f": b"v"}


def test_bury_lua_adds_before_it_removes(redis: redis_lib.Redis) -> None:
    bury = redis.register_script(scripts.source("bury"))
    now = time.time()
    args = [now, now - DEAD_TIMEOUT, DEAD_MAX_JOBS]
    redis.zadd("retry", {"m": 1})
    redis.set("dead", "x")
    with pytest.raises(redis_lib.ResponseError, match="dead: WRONGTYPE"):
        bury(keys=["retry", "dead"], args=["m", "m", *args])
    assert redis.zrange("retry", 0, -1) == [b"m"]
    redis.delete("dead")
    assert bury(keys=["retry", "dead"], args=["m", "m", *args]) == 1
    assert bury(keys=["retry", "dead"], args=["m", "m", *args]) == 0  # gone: nothing twice
    assert redis.zcard("retry") == 0 and redis.zrange("dead", 0, -1) == [b"m"]
    # Killing a dead entry again keeps it, with the new score.
    assert bury(keys=["dead", "dead"], args=["m", "m", now + 5, *args[1:]]) == 1
    assert redis.zscore("dead", "m") == pytest.approx(now + 5)


def test_a_retried_promotion_moves_nothing_twice(redis: redis_lib.Redis) -> None:
    # redis-py resends a script call whose reply a broken connection took; the second run
    # finds the members gone and pushes nothing.
    promote = redis.register_script(scripts.source("promote"))
    redis.zadd("schedule", {"a": 1})
    call = {"keys": ["schedule", "queues", "queue:x"], "args": ["a", "x", "A"]}
    assert promote(**call) == [1] and promote(**call) == [0]
    assert redis.lrange("queue:x", 0, -1) == [b"A"]
    assert redis.smembers("queues") == {b"x"}
