"""Server middleware in real workers: order, the raw job, skip, fail; and the example app.

``tests/apps/bridge_app.py`` with ``BRIDGE_MIDDLEWARE=1`` runs two links: ``trace_jobs``
(outermost; records what it saw) and ``gatekeeper`` (skips jobs whose first arg is "skip",
fails those with "refuse").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from support.recorded import inflight, items
from support.waiting import wait_for

from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_links_run_in_order_around_the_task_and_may_skip_or_fail_it(
    pool: str, celery_worker: Any, redis: redis_lib.Redis
) -> None:
    worker = celery_worker(pool=pool, concurrency=2, env={"BRIDGE_MIDDLEWARE": "1"})
    client = Client(redis)
    run = jobs.build("Workers::PyWorker", ["run", 1], extra={"bid": "b-7"})
    skip = jobs.build("Workers::PyWorker", ["skip"])
    refuse = jobs.build("Workers::PyWorker", ["refuse"])
    for job in (skip, refuse, run):
        client.push(job)

    (ran,) = items(redis, "results:Workers::PyWorker", 1)
    assert ran["args"] == ["run", 1]
    entry = wait_for(
        lambda: redis.zrange("retry", 0, -1), timeout=20, message="refused job in retry"
    )
    failed = json.loads(entry[0])
    assert failed["jid"] == refuse["jid"]
    assert (failed["error_class"], failed["error_message"]) == (
        "PermissionError",
        "refused by middleware",
    )
    seen = items(redis, "middleware:seen", 6)
    by_jid: dict[str, list[dict[str, Any]]] = {}
    for link in seen:
        by_jid.setdefault(link["jid"], []).append(link)
    for job in (run, skip, refuse):
        trace, gate = by_jid[job["jid"]]
        assert (trace["link"], gate["link"]) == ("trace", "gate")  # outermost first
        assert (trace["class"], trace["args"], trace["queue"], trace["retry"]) == (
            job["class"],
            job["args"],
            "default",
            True,
        )
    if pool == "prefork":
        assert {link["pid"] for link in seen if link["link"] == "trace"} - {worker.pid}, (
            "runs in the pool children"
        )
    # The skipped job is done: acknowledged, never retried, never run.
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="every job acknowledged")
    assert redis.zcard("dead") == 0 and redis.zcard("retry") == 1
    assert redis.llen("results:Workers::PyWorker") == 1


def test_the_example_skips_jobs_of_expired_users(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    worker = celery_worker(app_module="middleware_expired_users", app_dir=EXAMPLES)
    redis.sadd("users:expired", 7)
    client = Client(redis)
    for user_id in (7, 8, "not-an-id"):
        client.push(jobs.build("NewsletterJob", [user_id, "2026-11"]))
    wait_for(
        lambda: redis.llen("newsletters:sent") >= 2, timeout=20, message="two newsletters sent"
    )
    assert redis.lrange("newsletters:sent", 0, -1) == [b"8:2026-11", b"not-an-id:2026-11"]
    assert "user 7 has expired" in worker.log_text()
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="every job acknowledged")
    assert redis.zcard("retry") == 0 and redis.zcard("dead") == 0
