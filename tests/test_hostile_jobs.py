"""Hostile jobs in a real worker's queue: each goes to ``dead`` untouched, with its reason in
the log, while the good jobs fetched in the same batch run and the worker carries on.

The payloads are the ones a review found killing a worker ("Unrecoverable error", exit 1):
JSON nested 5,000 deep, a wrong type in the ``celery`` key, a lone surrogate escape; plus
their siblings (out-of-range numbers, non-UTF-8 bytes, 150-deep nesting that Ruby's parser
refuses).
"""

from __future__ import annotations

from typing import Any

import pytest
import redis as redis_lib
from support.recorded import inflight, runs
from support.waiting import wait_for

from kombu_sidekiq import job as jobs

HOSTILE: list[bytes] = [
    b"[" * 5000 + b"]" * 5000,
    b'{"class":"Workers::PyWorker","args":' + b"[" * 150 + b"]" * 150 + b"}",
    b'{"class":"Workers::PyWorker","args":["\\ud800"],"jid":"a1"}',
    b'{"class":"Workers::PyWorker","args":[1e400],"jid":"a2"}',
    b'{"class":"Workers::PyWorker","args":["\xff"],"jid":"a3"}',
    b'{"class":"Workers::PyWorker","args":[],"jid":"a4","celery":{"retries":"x"}}',
    b'{"class":"Workers::PyWorker","args":[],"jid":"a5","celery":{"kwargs":[1]}}',
    b'{"class":"Workers::PyWorker","args":[],"jid":"a6","celery":{"timelimit":"soon"}}',
    b'{"class":"Workers::PyWorker","args":[],"jid":"a7","retry_count":"x"}',
]


@pytest.mark.worker
@pytest.mark.parametrize("pool", ["solo", "prefork", "threads"])
def test_hostile_jobs_go_to_dead_and_the_good_ones_beside_them_run(
    celery_worker: Any, redis: redis_lib.Redis, pool: str
) -> None:
    good = [jobs.dumps(jobs.build("Workers::PyWorker", [n])) for n in range(6)]
    mixed: list[bytes | str] = []
    for n, payload in enumerate(HOSTILE):
        mixed += [payload, good[n % len(good)]] if n < len(good) else [payload]
    redis.sadd("queues", "default")
    redis.lpush("queue:default", *mixed)  # one batch holds good and hostile jobs together
    worker = celery_worker(pool=pool, concurrency=2)
    ran = runs(redis, "Workers::PyWorker", count=len(good) + 3, timeout=60)
    assert sorted(run["args"][0] for run in ran if run["args"]) == list(range(6))
    # a job the codec cannot read as a task message still reaches dead, not a crash
    wait_for(  # each hostile job either ran (read with defaults) or is in dead
        lambda: (
            redis.zcard("dead") + redis.llen("results:Workers::PyWorker")
            >= len(HOSTILE) + len(good)
        ),
        timeout=30,
        message="every hostile job in dead",
    )
    dead = set(redis.zrange("dead", 0, -1))
    assert set(HOSTILE[:5]) <= dead  # unreadable: untouched, byte for byte
    wait_for(lambda: inflight(redis) == 0, timeout=30, message="nothing left in flight")
    assert worker.running
    assert "Unrecoverable error" not in worker.log_text()
