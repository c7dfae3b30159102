"""A push, unique push or schedule sent twice leaves one copy: real Redis, real lost replies.

The fault is the one that makes a retry dangerous: the write landed, its reply did not. A proxy
(``support/lostreply.py``) forwards the command, waits for Redis's whole reply (so the write is
done), then cuts the connection instead of passing it on; the retry goes through. Both retries
that follow such a loss are exercised: the caller's (kombu's publish retry builds the job again,
so the retry carries the same jid with other timestamps) and redis-py's own (the connection's
``Retry``, ten attempts on a default ``redis.Redis()``). The other half of the fault, a request
that never reached Redis, must still end with the job written once.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.lostreply import LostReplyProxy
from support.redis_server import RedisServer

import celery_sidekiq
from kombu_sidekiq import job as jobs
from kombu_sidekiq import scripts, unique
from kombu_sidekiq.client import IN_DOUBT, RESEND_WINDOW, Client, InDoubt
from kombu_sidekiq.keys import Keys

#: An hour from now, when each test starts: the schedule time of the scheduled writes.
LATER = 3600.0


@pytest.fixture
def proxy(redis_server: RedisServer, redis: redis_lib.Redis) -> Iterator[LostReplyProxy]:
    # unique_push is loaded up front, so its EVALSHA runs (no NOSCRIPT) and its loss is a
    # real one; the NOSCRIPT way has its own test.
    redis.script_load(scripts.source("unique_push"))
    with LostReplyProxy(redis_server.port) as running:
        yield running


def caller_retries(proxy: LostReplyProxy) -> Client:
    """A client whose connection never retries (as kombu's connections): the caller does."""
    return Client(redis_lib.Redis(port=proxy.port, retry=Retry(NoBackoff(), 0)))


def redis_py_retries(proxy: LostReplyProxy) -> Client:
    """A client on a default ``redis.Redis()``: redis-py's own retry sends again."""
    return Client(redis_lib.Redis(port=proxy.port))


def rebuilt(job: jobs.Job) -> jobs.Job:
    """The job kombu's publish retry builds again: the same jid, other timestamps."""
    later = {key: job[key] + 1 for key in ("created_at", "enqueued_at") if key in job}
    return {**job, **later}


def stored(redis: redis_lib.Redis) -> list[bytes]:
    """Every job in queue:default and in schedule, as stored."""
    return [*redis.lrange("queue:default", 0, -1), *redis.zrange("schedule", 0, -1)]


class Write:
    """One way of writing a job: how to send it, which command's loss hurts, what it builds."""

    def __init__(
        self, name: str, command: str, send: Callable[[Client, jobs.Job, float], Any]
    ) -> None:
        self.name, self.command, self.send = name, command, send

    def job(self, args: list[Any]) -> jobs.Job:
        extra = {"unique_for": 60} if "unique" in self.name else None
        return jobs.build("Workers::Report", args, scheduled="schedule" in self.name, extra=extra)

    def __repr__(self) -> str:
        return self.name


def _lock(job: jobs.Job, delay: float = 0.0) -> unique.Lock:
    lock = unique.lock_for(job, Keys(), delay)
    assert lock is not None
    return lock


WRITES = [
    Write("push", "LPUSH", lambda client, job, at: client.push(job)),
    Write("schedule", "ZADD", lambda client, job, at: client.schedule(job, at)),
    Write("unique push", "EVALSHA", lambda client, job, at: unique.push(client, job, _lock(job))),
    Write(
        "unique schedule",
        "EVALSHA",
        lambda client, job, at: unique.push(client, job, _lock(job, LATER), at),
    ),
]


@pytest.mark.parametrize("write", WRITES, ids=repr)
def test_a_write_whose_reply_was_lost_is_found_by_the_callers_retry(
    write: Write, proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    client, at = caller_retries(proxy), time.time() + LATER
    job = write.job([1])
    proxy.lose_reply(write.command)
    with pytest.raises(redis_lib.ConnectionError):
        write.send(client, dict(job), at)
    (fault,) = proxy.faults
    assert fault.kind == "reply" and not fault.reply.startswith(b"-")  # it ran, unanswered
    first = stored(redis)
    assert len(first) == 1 and job["jid"] in IN_DOUBT

    assert write.send(client, rebuilt(job), at) == job["jid"]
    assert stored(redis) == first  # the first copy, alone
    assert proxy.names()[-1] == "EVAL"  # the checked path looked
    assert job["jid"] not in IN_DOUBT  # answered: the next write of it is a normal one again


@pytest.mark.parametrize("write", WRITES, ids=repr)
def test_redis_pys_own_retry_after_a_lost_reply_takes_the_checked_path(
    write: Write, proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    client, at = redis_py_retries(proxy), time.time() + LATER
    job = write.job([2])
    proxy.lose_reply(write.command)
    assert write.send(client, dict(job), at) == job["jid"]  # retried inside, then answered
    assert len(proxy.faults) == 1
    assert [json.loads(raw)["jid"] for raw in stored(redis)] == [job["jid"]]
    assert proxy.names()[-1] == "EVAL"
    assert job["jid"] not in IN_DOUBT


@pytest.mark.parametrize("write", WRITES, ids=repr)
def test_a_write_that_never_reached_redis_is_written_by_the_retry(
    write: Write, proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    client, at = caller_retries(proxy), time.time() + LATER
    job = write.job([3])
    proxy.lose_request(write.command)
    with pytest.raises(redis_lib.ConnectionError):
        write.send(client, dict(job), at)
    assert [fault.kind for fault in proxy.faults] == ["request"] and stored(redis) == []
    again = rebuilt(job)
    write.send(client, again, at)
    assert stored(redis) == [jobs.dumps(again).encode()]  # nothing lost


@pytest.mark.parametrize("write", WRITES, ids=repr)
def test_the_normal_path_sends_only_the_write(
    write: Write, proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    client = caller_retries(proxy)
    client.redis.ping()  # the connection's handshake, out of the way
    before = len(proxy.names())
    write.send(client, write.job([4]), time.time() + LATER)
    expected = {"LPUSH": ["SADD", "LPUSH"], "ZADD": ["ZADD"], "EVALSHA": ["EVALSHA"]}
    assert proxy.names()[before:] == expected[write.command]  # no lookup, no script load


def test_replies_lost_twice_in_a_row_still_leave_one_copy(
    proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    client = caller_retries(proxy)
    job = jobs.build("Workers::Report", [5])
    proxy.lose_reply("LPUSH", "EVAL", times=2)  # the first try, then the checked retry
    for _ in range(2):
        with pytest.raises(redis_lib.ConnectionError):
            client.push(rebuilt(job))
    client.push(rebuilt(job))
    assert [fault.command[0] for fault in proxy.faults] == [b"LPUSH", b"EVAL"]
    assert len(stored(redis)) == 1


def test_a_job_that_only_mentions_the_jid_is_not_taken_for_it(
    proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    client = caller_retries(proxy)
    job = jobs.build("Workers::Report", [6])
    proxy.lose_request("LPUSH")
    with pytest.raises(redis_lib.ConnectionError):
        client.push(dict(job))
    # a callback job naming the lost one, pushed meanwhile: it holds the jid, nested
    Client(redis).push(jobs.build("Workers::Then", [{"jid": job["jid"]}, job["jid"]]))
    client.push(rebuilt(job))
    assert sorted(json.loads(raw)["class"] for raw in stored(redis)) == [
        "Workers::Report",
        "Workers::Then",
    ]


def test_a_copy_a_worker_took_before_the_retry_looked_is_pushed_again(
    proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    # The documented limit: the job may run twice (at least once, never zero times).
    client = caller_retries(proxy)
    job = jobs.build("Workers::Report", [7])
    proxy.lose_reply("LPUSH")
    with pytest.raises(redis_lib.ConnectionError):
        client.push(dict(job))
    assert redis.rpop("queue:default")  # a worker took the first copy
    client.push(rebuilt(job))
    assert redis.llen("queue:default") == 1


def test_a_copy_pushed_past_the_window_in_the_meantime_is_not_found(
    proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    # The other documented limit: only the RESEND_WINDOW newest jobs are looked through.
    client = caller_retries(proxy)
    job = jobs.build("Workers::Report", [10])
    proxy.lose_reply("LPUSH")
    with pytest.raises(redis_lib.ConnectionError):
        client.push(dict(job))
    Client(redis).push_bulk(jobs.build("Workers::Other", [n]) for n in range(RESEND_WINDOW))
    client.push(rebuilt(job))
    assert redis.llen("queue:default") == RESEND_WINDOW + 2


def test_a_unique_retry_finds_its_copy_though_another_job_took_the_lock_since(
    proxy: LostReplyProxy, redis: redis_lib.Redis
) -> None:
    client = caller_retries(proxy)
    job = jobs.build("Workers::Report", [8], extra={"unique_for": 60})
    lock = _lock(job)
    proxy.lose_reply("EVALSHA")
    with pytest.raises(redis_lib.ConnectionError):
        unique.push(client, dict(job), lock)
    redis.set(lock.key, "another-jid")  # ours expired, and a job with the same args took it
    assert unique.push(client, rebuilt(job), lock) == job["jid"]  # not a DuplicateJob: it is in
    assert len(stored(redis)) == 1


def test_a_unique_push_to_a_server_without_the_script_sends_its_source(
    redis_server: RedisServer, redis: redis_lib.Redis
) -> None:
    redis.script_flush()  # a restarted server, or a new master after a failover
    client = Client(redis_server.client())
    job = jobs.build("Workers::Report", [9], extra={"unique_for": 60})
    unique.push(client, dict(job), _lock(job))
    assert redis.get(_lock(job).key) == job["jid"].encode()
    other = jobs.build("Workers::Report", [9], extra={"unique_for": 60})
    with pytest.raises(unique.DuplicateJob):
        unique.push(client, other, _lock(other))  # and the lock it took holds
    assert len(stored(redis)) == 1


# -- the memory --------------------------------------------------------------------------------


def test_the_in_doubt_memory_is_bounded_oldest_out_first() -> None:
    doubts = InDoubt(limit=3)
    for jid in "abcd":
        doubts.add(jid)
    doubts.add("b")  # added again: the newest again
    doubts.add("e")
    assert [jid for jid in "abcde" if jid in doubts] == ["b", "d", "e"]
    doubts.discard("d")
    assert len(doubts) == 2


@pytest.mark.parametrize("limit", [50, 100_000], ids=["evicting", "roomy"])
def test_the_in_doubt_memory_is_safe_across_threads(limit: int) -> None:
    doubts = InDoubt(limit=limit)
    barrier = threading.Barrier(8)

    def churn(n: int) -> None:
        barrier.wait()  # all at once, to contend for the lock
        for i in range(2000):
            doubts.add(f"{n}-{i}")
            if i % 2:
                doubts.discard(f"{n}-{i - 1}")

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    kept = {f"{n}-{i}" for n in range(8) for i in range(2000) if f"{n}-{i}" in doubts}
    assert len(kept) == len(doubts) <= limit
    assert all(int(jid.split("-")[1]) % 2 for jid in kept)  # no discard was lost
    if limit > 8 * 2000:
        assert len(kept) == 8 * 1000  # nor any add


# -- through Celery ------------------------------------------------------------------------------


def stub(*args: Any, **kwargs: Any) -> None:
    """Never runs: these tests only publish."""


@pytest.fixture
def app(proxy: LostReplyProxy) -> Iterator[Celery]:
    app = celery_sidekiq.setup(Celery("resend", broker=f"sidekiq://127.0.0.1:{proxy.port}/0"))
    app.task(name="Workers::Report", shared=False)(stub)
    app.task(name="Workers::Once", unique_for=600, shared=False)(stub)
    yield app
    app.close()


@pytest.mark.parametrize(
    ("task", "options", "command"),
    [
        ("Workers::Report", {}, "LPUSH"),
        ("Workers::Report", {"countdown": 600}, "ZADD"),
        ("Workers::Once", {}, "EVALSHA"),
        ("Workers::Once", {"countdown": 600}, "EVALSHA"),
    ],
    ids=["push", "schedule", "unique push", "unique schedule"],
)
@pytest.mark.parametrize("way", ["direct", "kombu"])
def test_apply_async_after_a_lost_reply_enqueues_once(
    app: Celery,
    proxy: LostReplyProxy,
    redis: redis_lib.Redis,
    task: str,
    options: dict[str, Any],
    command: str,
    way: str,
) -> None:
    # A UUID arg is not plain JSON: the producer leaves it to kombu's own publish (its envelope
    # and Channel._put), whose retry is kombu's too.
    arg: Any = 1 if way == "direct" else uuid.UUID(int=1)
    with app.connection_for_write() as connection:
        connection.default_channel.client.ping()  # connected before the fault is armed
    proxy.lose_reply(command)
    result = app.tasks[task].apply_async((arg,), **options)  # kombu's publish retry, inside
    (fault,) = proxy.faults
    assert not fault.reply.startswith(b"-")  # the first write ran
    (raw,) = stored(redis)
    job = json.loads(raw)
    assert job["jid"] == jobs.jid_for_task_id(result.id)
    if way == "kombu":
        assert job["args"][0]["__type__"] == "uuid"  # kombu's tagged form: it took kombu's way
    assert proxy.names()[-1] == "EVAL"  # the retry looked before it wrote
    if task == "Workers::Once":
        assert redis.get(unique.lock_key(job, Keys())) == job["jid"].encode()
