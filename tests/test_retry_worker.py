"""Failures of Sidekiq jobs in a real Celery worker: the ``retry`` and ``dead`` sets, Sidekiq's way.

The worker runs ``tests/apps/bridge_app.py``; ``bridge.decline`` and ``bridge.fail`` always
raise, ``bridge.retry_self`` calls ``self.retry``, ``bridge.autoretry`` uses ``autoretry_for``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis as redis_lib
from support.recorded import runs
from support.waiting import wait_for

from kombu_sidekiq import backtrace
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker


def zset_jobs(redis: redis_lib.Redis, key: str) -> dict[str, tuple[dict[str, Any], float, bytes]]:
    """jid -> (job, score, member) of every member of ``key``."""
    out = {}
    for member, score in redis.zrange(key, 0, -1, withscores=True):
        job = json.loads(member)
        out[job["jid"]] = (job, score, member)
    return out


def wait_in(
    redis: redis_lib.Redis, key: str, jid: str, timeout: float = 20, **fields: Any
) -> tuple[dict[str, Any], float, bytes]:
    """The member of ``key`` for ``jid``, once it is there with ``fields``' values."""

    def found() -> tuple[dict[str, Any], float, bytes] | None:
        entry = zset_jobs(redis, key).get(jid)
        if entry and all(entry[0].get(name) == value for name, value in fields.items()):
            return entry
        return None

    return wait_for(found, timeout=timeout, message=f"job {jid} in {key} with {fields}")


def test_a_failing_job_goes_to_retry_with_sidekiqs_fields_then_to_its_retry_queue(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker(queues="default,low")
    job = jobs.build(
        "bridge.decline",
        ["card declined"],
        extra={
            "backtrace": True,
            "retry_queue": "low",
            "tags": ["billing"],
            "bid": "b-1",
            "x": {"k": [1]},
        },
    )
    Client(redis).push(job)
    entry, score, member = wait_in(redis, "retry", job["jid"])
    assert entry["error_class"] == "bridge_app.PaymentDeclined"
    assert entry["error_message"] == "card declined"
    assert entry["retry_count"] == 0
    assert isinstance(entry["failed_at"], float) and abs(entry["failed_at"] - time.time()) < 30
    assert "retried_at" not in entry
    assert entry["queue"] == "low"  # retry_queue
    assert {k: v for k, v in entry.items() if k in job and k != "queue"} == {
        k: v for k, v in job.items() if k != "queue"
    }
    assert list(entry)[: len(job)] == list(job)  # every original key kept, in its order
    lines = backtrace.decompress(entry["error_backtrace"])
    assert "\n" not in entry["error_backtrace"]  # strict Base64
    assert "bridge_app.py" in lines[0] and "in `decline'" in lines[0]  # innermost first
    # count 0: 15 s + rand(10) * 1
    assert 15 <= score - entry["failed_at"] <= 24 + 2
    assert redis.zcard("schedule") == 0 and redis.zcard("dead") == 0

    # Due now: the poller moves it to its retry_queue, the worker runs it and it fails again.
    redis.zadd("retry", {member: time.time() - 1}, xx=True)
    second = runs(redis, "bridge.decline", 2)[1]
    assert second["delivery_info"]["routing_key"] == "low"
    assert second["retries"] == 1  # Celery's request.retries = retry_count + 1
    entry2, score2, _ = wait_in(redis, "retry", job["jid"], retry_count=1)
    assert entry2["failed_at"] == entry["failed_at"] and entry2["retried_at"] > entry["failed_at"]
    assert 16 <= score2 - entry2["retried_at"] <= 16 + 9 * 2 + 2  # 1**4 + 15 + rand(10) * 2


def test_exhausted_jobs_die_and_retry_false_or_dead_false_are_dropped(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker()
    client = Client(redis)
    straight_to_dead = jobs.build("bridge.fail", ["retry 0"], retry=0)
    exhausted = jobs.build(
        "bridge.fail",
        ["retry 2, two failures already"],
        retry=2,
        extra={"retry_count": 1, "failed_at": 1.5},
    )
    not_retried = jobs.build("bridge.fail", ["retry false"], retry=False)
    not_kept = jobs.build("bridge.fail", ["dead false"], retry=0, extra={"dead": False})
    marker = jobs.build("bridge.add", [1, 2])
    for job in (straight_to_dead, exhausted, not_retried, not_kept, marker):
        client.push(job)
    runs(redis, "bridge.add")  # the solo worker runs jobs in order: the failures are handled
    dead = zset_jobs(redis, "dead")
    assert set(dead) == {straight_to_dead["jid"], exhausted["jid"]}
    first, score, _ = dead[straight_to_dead["jid"]]
    assert (first["retry_count"], first["error_class"], first["error_message"]) == (
        0,
        "ValueError",
        "retry 0",
    )
    assert abs(score - time.time()) < 30
    second = dead[exhausted["jid"]][0]
    assert (second["retry_count"], second["failed_at"]) == (2, 1.5)
    assert isinstance(second["retried_at"], float)
    assert redis.zcard("retry") == 0 and redis.zcard("schedule") == 0
    assert len(runs(redis, "bridge.fail", 4)) == 4


def test_a_tasks_sidekiq_hooks_retry_for_and_death_handlers_decide_as_sidekiq_rb(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker()  # sidekiq_version 7
    client = Client(redis)
    soon = jobs.build("bridge.flaky", ["soon"])  # sidekiq_retry_in: 30 s
    kill = jobs.build("bridge.flaky", ["kill"])  # sidekiq_retry_in: "kill"
    discard = jobs.build("bridge.flaky", ["discard"])  # sidekiq_retry_in: "discard"
    forget = jobs.build("bridge.flaky", ["forget"], retry=0)  # exhausted block: "discard"
    window = jobs.build(  # retry_for ran out: first failed two minutes ago
        "bridge.flaky",
        ["window"],
        extra={"retry_for": 60, "retry_count": 0, "failed_at": time.time() - 120},
    )
    for job in (soon, kill, discard, forget, window, jobs.build("bridge.add", [1, 2])):
        client.push(job)
    runs(redis, "bridge.add")  # the solo worker runs jobs in order: the failures are handled

    entry, score, _ = wait_in(redis, "retry", soon["jid"])
    assert 30 <= score - entry["failed_at"] <= 30 + 9 + 2  # the chosen delay, Sidekiq's jitter
    assert set(zset_jobs(redis, "retry")) == {soon["jid"]}
    assert set(zset_jobs(redis, "dead")) == {kill["jid"], window["jid"]}
    exhausted = {json.loads(e)["jid"] for e in redis.lrange("exhausted", 0, -1)}
    assert exhausted == {kill["jid"], forget["jid"], window["jid"]}  # never for a retry/discard
    # Sidekiq 7 runs death handlers for dead jobs, not for those a block discarded.
    deaths = [json.loads(d) for d in redis.lrange("deaths", 0, -1)]
    assert sorted(d["jid"] for d in deaths) == sorted([kill["jid"], window["jid"]])
    assert {d["error"] for d in deaths} == {"ConnectionError"}


def test_celerys_retry_autoretry_and_time_limits_land_in_retry_prefork_sidekiq_8(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker(
        pool="prefork",
        concurrency=2,
        env={"SIDEKIQ_SETUP": json.dumps({"poll_interval": 0.3, "sidekiq_version": 8})},
    )
    client = Client(redis)
    manual = jobs.build("bridge.retry_self", [1], version=8, extra={"bid": "b-2"})
    auto = jobs.build("bridge.autoretry", [], version=8)
    plain = jobs.build("bridge.fail", ["eight"], version=8)
    overrun = jobs.build("bridge.overrun", [30], version=8)
    for job in (manual, auto, plain, overrun):
        client.push(job)

    # self.retry(countdown=1): the retry set, not schedule, with Sidekiq's fields (ms for 8).
    entry, score, _ = wait_in(redis, "retry", manual["jid"], retry_count=0)
    assert (entry["error_class"], entry["error_message"]) == (
        "LookupError",
        "not ready yet (try 0)",
    )
    assert isinstance(entry["failed_at"], int) and entry["failed_at"] > 10**12
    assert entry["bid"] == "b-2" and entry["args"] == [1]
    assert 0 < score - entry["failed_at"] / 1000 <= 3  # Celery's countdown, not Sidekiq's backoff
    # Sidekiq 8 backoff for a plain failure: 15 + rand(10)
    failed, failed_score, _ = wait_in(redis, "retry", plain["jid"])
    assert isinstance(failed["failed_at"], int)
    assert 15 <= failed_score - failed["failed_at"] / 1000 <= 15 + 9 + 2

    # max_retries=2: three runs, then dead; autoretry_for with max_retries=1: two runs, then dead.
    dead = wait_in(redis, "dead", manual["jid"], timeout=30)[0]
    assert (dead["retry_count"], dead["error_message"]) == (2, "not ready yet (try 2)")
    assert isinstance(dead["retried_at"], int)
    assert [run["retries"] for run in runs(redis, "bridge.retry_self", 3)] == [0, 1, 2]
    auto_dead = wait_in(redis, "dead", auto["jid"], timeout=30)[0]
    assert (auto_dead["error_class"], auto_dead["retry_count"]) == ("ConnectionError", 1)
    assert len(runs(redis, "bridge.autoretry", 2)) == 2
    # A hard time limit kills the child: the main process records the failure instead.
    killed = wait_in(redis, "retry", overrun["jid"])[0]
    assert (killed["error_class"], killed["error_message"]) == (
        "billiard.exceptions.TimeLimitExceeded",  # what Celery raises
        "TimeLimitExceeded(1)",
    )
    assert redis.zcard("schedule") == 0
    assert set(zset_jobs(redis, "retry")) == {plain["jid"], overrun["jid"]}
