"""A failed job's move to ``retry`` or ``dead`` is never acknowledged unless it happened.

The worker writes a failure by moving the job out of its in-flight hash into ``retry`` or
``dead`` in one step (``fetch.settle``). When Redis refuses that write, the job must not be
acknowledged (that would lose it): Celery rejects it with requeue, it goes back to its queue
and runs again, and once the fault is gone it lands where Sidekiq's rules say, once. The
faults are real error replies: a key of the wrong type makes ``ZADD`` answer WRONGTYPE.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis as redis_lib
from support.recorded import inflight, runs
from support.waiting import wait_for

from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker

# Every member of every list, hash and sorted set, read in one atomic step: a job moving
# between two keys is seen in exactly one of them, never in both nor in neither.
_EVERYTHING = """
local out = {}
for _, key in ipairs(redis.call('KEYS', '*')) do
  local kind = redis.call('TYPE', key)['ok']
  local values = {}
  if kind == 'list' then
    values = redis.call('LRANGE', key, 0, -1)
  elseif kind == 'hash' then
    values = redis.call('HVALS', key)
  elseif kind == 'zset' then
    values = redis.call('ZRANGE', key, 0, -1)
  end
  for _, value in ipairs(values) do
    out[#out + 1] = key
    out[#out + 1] = value
  end
end
return out
"""


def _place(key: str) -> str | None:
    """Where a job can be, by key; None for keys that only mention jobs (results:*, the
    heartbeat's work hash)."""
    if key in ("retry", "schedule", "dead") or key.startswith("queue:"):
        return key
    for kind in ("inflight", "landing"):
        if key.startswith(f"celery-sidekiq:{kind}:"):
            return kind
    return None


def located(redis: redis_lib.Redis) -> dict[str, list[str]]:
    """jid -> every place that job is in right now (one entry per copy), from one snapshot."""
    reply = redis.eval(_EVERYTHING, 0)
    found: dict[str, list[str]] = {}
    for key, value in zip(reply[::2], reply[1::2], strict=True):
        place = _place(key.decode())
        if place is None:
            continue
        try:
            job = json.loads(value)
        except ValueError:
            continue
        if isinstance(job, dict) and isinstance(job.get("jid"), str):
            found.setdefault(job["jid"], []).append(place)
    return found


def places(redis: redis_lib.Redis, jid: str) -> list[str]:
    """Every place the job with ``jid`` is in right now, one entry per copy."""
    return located(redis).get(jid, [])


def held_until_runs(redis: redis_lib.Redis, task: str, jid: str, count: int) -> None:
    """Wait until ``task`` ran ``count`` times, checking all along that the job is in exactly
    one place, in its queue or in flight: a refused write was not acknowledged."""

    def check() -> bool:
        where = places(redis, jid)
        assert len(where) == 1 and where[0] in ("queue:default", "inflight", "landing"), where
        return bool(redis.llen(f"results:{task}") >= count)

    wait_for(check, timeout=30, message=f"{task} ran {count} times")


def landed_once(redis: redis_lib.Redis, key: str, jid: str) -> dict[str, Any]:
    """Wait until the job is in ``key`` and nowhere else, with nothing left in flight."""
    wait_for(lambda: places(redis, jid) == [key], timeout=30, message=f"{jid} only in {key}")
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")
    assert places(redis, jid) == [key]
    ((member, _),) = [
        (m, s) for m, s in redis.zrange(key, 0, -1, withscores=True) if json.loads(m)["jid"] == jid
    ]
    return dict(json.loads(member))


def test_a_refused_retry_write_is_not_acknowledged_and_lands_once_the_fault_is_gone(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    # prefork: the write happens in the pool child, the ack (or reject) in the main process.
    worker = celery_worker(pool="prefork", concurrency=1)
    redis.set("retry", "not a sorted set")  # every ZADD retry now answers WRONGTYPE
    job = jobs.build("bridge.fail", ["refused"])
    Client(redis).push(job)

    # It runs again and again: each refused write left it in flight, and the reject put it
    # back in its queue. It never left those two places, and never got a failure recorded.
    held_until_runs(redis, "bridge.fail", job["jid"], 3)
    assert {run["retries"] for run in runs(redis, "bridge.fail", 3)} == {0}
    assert "not acknowledged: it goes back to its queue" in worker.log_text()

    redis.delete("retry")
    entry = landed_once(redis, "retry", job["jid"])
    assert (entry["error_class"], entry["retry_count"]) == ("ValueError", 0)
    assert redis.zcard("dead") == 0


def test_a_refused_dead_write_is_not_acknowledged_and_the_job_dies_once(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker()
    redis.set("dead", "not a sorted set")
    job = jobs.build("bridge.fail", ["no retries"], retry=0)
    Client(redis).push(job)

    held_until_runs(redis, "bridge.fail", job["jid"], 3)
    # Its retries are not over while it goes back to its queue: no death handler ran yet.
    assert redis.llen("deaths") == 0

    redis.delete("dead")
    entry = landed_once(redis, "dead", job["jid"])
    assert (entry["error_class"], entry["error_message"]) == ("ValueError", "no retries")
    # The death handler ran once, for the one death that was stored.
    wait_for(lambda: redis.llen("deaths") >= 1, timeout=10, message="the death handler ran")
    assert [json.loads(d)["jid"] for d in redis.lrange("deaths", 0, -1)] == [job["jid"]]


def test_celerys_own_retry_with_its_write_refused_goes_back_to_its_queue_not_to_dead(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    worker = celery_worker()
    redis.set("retry", "not a sorted set")
    # self.retry(countdown=60): once stored, it waits in retry for the rest of the test.
    job = jobs.build("bridge.retry_self", [60])
    Client(redis).push(job)

    # Task.retry turns the refused republish into Reject(requeue=False), which would bury
    # the job in dead; it goes back to its queue instead, unchanged (request.retries 0).
    held_until_runs(redis, "bridge.retry_self", job["jid"], 3)
    assert {run["retries"] for run in runs(redis, "bridge.retry_self", 3)} == {0}
    assert "Redis refused to store the job" in worker.log_text()

    redis.delete("retry")
    started = time.time()
    entry = landed_once(redis, "retry", job["jid"])
    assert (entry["error_class"], entry["retry_count"]) == ("LookupError", 0)
    (score,) = [s for m, s in redis.zrange("retry", 0, -1, withscores=True)]
    assert started + 50 < score < time.time() + 61  # Celery's countdown
    assert redis.zcard("dead") == 0


def test_a_refused_write_after_a_hard_time_limit_is_not_acknowledged(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    # The child is killed at the 1 s limit; the worker's main process writes the failure.
    celery_worker(pool="prefork", concurrency=1)
    redis.set("retry", "not a sorted set")
    job = jobs.build("bridge.overrun", [30])
    Client(redis).push(job)

    held_until_runs(redis, "bridge.overrun", job["jid"], 2)

    redis.delete("retry")
    entry = landed_once(redis, "retry", job["jid"])
    assert entry["error_class"] == "billiard.exceptions.TimeLimitExceeded"
    assert entry["retry_count"] == 0


def test_failures_leave_flight_as_they_land_and_the_freed_fields_serve_new_jobs(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker(pool="prefork", concurrency=2)
    client = Client(redis)
    failing = [jobs.build("bridge.fail", [f"retry {i}"]) for i in range(3)]
    dying = [jobs.build("bridge.fail", [f"dead {i}"], retry=0) for i in range(2)]
    own_retry = jobs.build("bridge.retry_self", [60])
    expected = {job["jid"]: ["retry"] for job in [*failing, own_retry]}
    expected |= {job["jid"]: ["dead"] for job in dying}
    for job in [*failing, *dying, own_retry]:
        client.push(job)
        client.push(jobs.build("bridge.add", [1, 1]))

    def landed() -> bool:
        # Never in retry (or dead) while still in flight: each move is one step.
        where = {jid: found for jid, found in located(redis).items() if jid in expected}
        assert all(len(found) == 1 for found in where.values()), where
        return where == expected

    wait_for(landed, timeout=30, message="every failure in retry or dead")
    runs(redis, "bridge.add", 6)
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")

    # Celery acknowledged each of them after its move: those acks free fields that are free
    # already, and the next fetches hand them to new jobs, which all run and leave flight.
    more = [jobs.build("bridge.add", [i, i]) for i in range(20)]
    for job in more:
        client.push(job)
    ran = {json.loads(run["job"])["jid"] for run in runs(redis, "bridge.add", 26)}
    assert ran >= {job["jid"] for job in more}
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")
    assert redis.zcard("retry") == 4 and redis.zcard("dead") == 2


def test_a_job_that_cannot_be_reencoded_goes_to_dead_untouched_and_the_worker_carries_on(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker()
    # What a Ruby producer may write (JSON allows the escape): a lone surrogate that no UTF-8
    # write of the job could carry, so a failure of it could never be stored in retry.
    raw = (
        '{"class":"bridge.fail","args":["\\ud800"],"retry":true,"queue":"default",'
        '"jid":"0123456789abcdef01234567","created_at":1700000000.5,"enqueued_at":1700000000.5}'
    )
    redis.sadd("queues", "default")
    redis.lpush("queue:default", raw)
    Client(redis).push(jobs.build("bridge.add", [2, 3]))

    runs(redis, "bridge.add")  # behind it in the queue: the worker went on
    assert redis.zrange("dead", 0, -1) == [raw.encode()]  # byte for byte
    assert redis.llen("results:bridge.fail") == 0  # refused before any task saw it
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")
    assert redis.zcard("retry") == 0
