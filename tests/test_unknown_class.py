"""Jobs a Celery worker cannot run: classes no task runs, and payloads that are not jobs.

Neither is ever lost, and neither stops the worker: an unknown class fails as sidekiq.rb fails it
(or goes back to its queue, with ``unknown_class="requeue"``); a malformed payload goes to the
dead set as it was.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis as redis_lib
from support.recorded import inflight
from support.recorded import items as ran
from support.ruby import SidekiqProcessFactory
from support.waiting import wait_for

from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker


def test_an_unknown_class_is_retried_with_backoff_and_never_dropped(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    worker = celery_worker()
    client = Client(redis)
    unknown = jobs.build("Billing::Missing", [1], extra={"tags": ["t"]})
    unknown_no_retry = jobs.build("Billing::Missing", [2], retry=False)
    client.push(unknown)
    client.push(unknown_no_retry)
    client.push(jobs.build("bridge.add", [1, 2]))
    ran(redis, "results:bridge.add")  # in order, after both: the worker kept going

    ((member, score),) = redis.zrange("retry", 0, -1, withscores=True)
    entry = json.loads(member)
    assert entry["jid"] == unknown["jid"] and entry["tags"] == ["t"]
    assert entry["error_class"] == "celery.exceptions.NotRegistered"
    assert "'Billing::Missing'" in entry["error_message"]
    assert entry["retry_count"] == 0
    assert 15 <= score - entry["failed_at"] <= 24 + 2
    # retry: false drops a failed job in Sidekiq; a job that never ran is kept instead.
    (dead,) = (json.loads(m) for m in redis.zrange("dead", 0, -1))
    assert (
        dead["jid"] == unknown_no_retry["jid"]
        and dead["error_class"] == "celery.exceptions.NotRegistered"
    )
    assert redis.llen("queue:default") == 0
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")
    assert "no task for class 'Billing::Missing'" in worker.log_text()
    # Counted as sidekiq.rb counts a missing constant: processed and failed (next heartbeat).
    wait_for(
        lambda: redis.mget("stat:processed", "stat:failed") == [b"3", b"2"],
        timeout=15,
        message="stat:processed 3 and stat:failed 2",
    )
    # The one that died ran the death handlers (bridge_app's records them).
    (death,) = (json.loads(d) for d in redis.lrange("deaths", 0, -1))
    assert death == {"jid": unknown_no_retry["jid"], "error": "NotRegistered"}


def test_requeue_returns_an_unknown_class_to_its_queue_without_a_busy_loop(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker(
        env={"SIDEKIQ_SETUP": json.dumps({"poll_interval": 30, "unknown_class": "requeue"})}
    )
    job = jobs.build("RubyRecorder", ["for ruby"])
    sent = time.time()
    Client(redis).push(job)
    # Alone on the queue, the worker takes it back at once; seeing it again, it parks it in
    # schedule for a few seconds instead of fetching it in a loop.
    ((member, score),) = wait_for(
        lambda: redis.zrange("schedule", 0, -1, withscores=True),
        timeout=10,
        message="parked in schedule",
    )
    parked = json.loads(member)
    assert parked == {k: v for k, v in job.items() if k != "enqueued_at"}
    assert score >= sent + 4
    assert (
        redis.llen("queue:default") == 0 and redis.zcard("retry") == 0 and redis.zcard("dead") == 0
    )
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")


def test_requeued_unknown_classes_reach_a_ruby_consumer(
    sidekiq_rb: str,
    require_ruby: None,
    sidekiq_process: SidekiqProcessFactory,
    celery_worker: Any,
    redis: redis_lib.Redis,
) -> None:
    sidekiq_process(concurrency=1)
    celery_worker(
        env={"SIDEKIQ_SETUP": json.dumps({"poll_interval": 0.5, "unknown_class": "requeue"})}
    )
    pushed = [jobs.build("RubyRecorder", [n]) for n in range(8)]
    Client(redis).push_bulk(pushed)
    done = ran(redis, "results:RubyRecorder", 8, timeout=60)
    assert sorted(run["args"][0] for run in done) == list(range(8))
    assert redis.zcard("retry") == 0 and redis.zcard("dead") == 0


MALFORMED = [
    "not json at all",
    "[1, 2, 3]",
    '{"args": [1], "queue": "default", "jid": "a1"}',
    '{"class": "bridge.add", "args": "1, 2", "jid": "a2"}',
    '{"class": "bridge.add", "args": [1, 2], "jid": 42}',
    '{"class": "bridge.add", "args": [1, 2], "retry": "often"}',
    '{"class": "bridge.add", "args": [1, 2], "created_at": "yesterday"}',
]


def test_malformed_payloads_go_to_dead_as_they_were_and_the_worker_keeps_running(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    worker = celery_worker()
    for raw in MALFORMED:
        redis.lpush("queue:default", raw)
    Client(redis).push(jobs.build("bridge.add", [2, 3]))
    (run,) = ran(redis, "results:bridge.add")
    assert run["args"] == [2, 3]
    dead = {member.decode() for member in redis.zrange("dead", 0, -1)}
    assert dead == set(MALFORMED)  # byte for byte
    assert worker.running
    log = worker.log_text()
    assert log.count("invalid job moved to the dead set") == len(MALFORMED)
    for reason in (
        "not JSON",
        "a job is a JSON object, not array",
        "no 'class' string",
        "'args' must be a JSON array, not string",
        "'jid' must be a string, not number",
        "'retry' must be true, false or an integer",
        "'created_at' must be a number",
    ):
        assert reason in log
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")
