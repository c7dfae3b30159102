"""Enqueue: jobs per second a producer writes, each way of writing them timed in-process.

Every method starts from an empty Redis with its connection already open (one warm-up call,
then FLUSHALL), and the timer covers building and writing the jobs, not the caller's args list
(as with sidekiq.rb's ``push_bulk``, which gets an array of args arrays).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import redis

from bench.drain import producer
from bench.harness import FILL_BATCH, RUBY_DIR, BenchError, chunks
from celery_sidekiq.bulk import push_bulk
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

#: (key, label, bulk?) of every method, in table order. One-by-one methods get the smaller
#: job count: at a few thousand jobs/s, the large one would take minutes.
METHODS = (
    ("native_apply_async", "Celery apply_async, native redis://", False),
    ("sidekiq_apply_async", "Celery apply_async, sidekiq://", False),
    ("sidekiq_push_bulk", "celery_sidekiq.bulk.push_bulk", True),
    ("client_push_bulk", "kombu_sidekiq Client.push_bulk", True),
    ("ruby_push_bulk", "sidekiq.rb Sidekiq::Client.push_bulk", True),
    ("raw_pipeline", "raw JSON + pipelined LPUSH (ceiling)", True),
)


def _apply_async(transport: str) -> Callable[[int, int], float]:
    def measure(port: int, count: int) -> float:
        app = producer(transport, port)
        client = redis.Redis(port=port)
        try:
            task = app.tasks["bench.noop"]
            task.apply_async((0,))
            client.flushall()
            started = time.perf_counter()
            for n in range(count):
                task.apply_async((n,))
            seconds = time.perf_counter() - started
            _check(client, "default" if transport == "native" else "queue:default", count)
            return seconds
        finally:
            app.close()
            client.close()

    return measure


def _push_bulk(port: int, count: int) -> float:
    app = producer("sidekiq", port)
    client = redis.Redis(port=port)
    try:
        task = app.tasks["bench.noop"]
        args_list = [[n] for n in range(count)]
        push_bulk(task, [[0]])
        client.flushall()
        started = time.perf_counter()
        push_bulk(task, args_list, batch_size=FILL_BATCH)
        seconds = time.perf_counter() - started
        _check(client, "queue:default", count)
        return seconds
    finally:
        app.close()
        client.close()


def _client_push_bulk(port: int, count: int) -> float:
    client = redis.Redis(port=port)
    try:
        sidekiq = Client(client)
        sidekiq.push_bulk([jobs.build("bench.noop", [0])])
        client.flushall()
        numbers = range(count)
        started = time.perf_counter()
        for part in chunks(numbers, FILL_BATCH):
            sidekiq.push_bulk([jobs.build("bench.noop", [n]) for n in part])
        seconds = time.perf_counter() - started
        _check(client, "queue:default", count)
        return seconds
    finally:
        client.close()


def _raw_pipeline(port: int, count: int) -> float:
    """The least a Python producer can do: a job dict, ``json.dumps``, one LPUSH per 1,000."""
    client = redis.Redis(port=port)
    try:
        client.flushall()
        numbers = range(count)
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
        started = time.perf_counter()
        for part in chunks(numbers, FILL_BATCH):
            now = time.time()
            payloads = [
                dumps(
                    {
                        "class": "bench.noop",
                        "args": [n],
                        "queue": "default",
                        "jid": os.urandom(12).hex(),
                        "retry": True,
                        "created_at": now,
                        "enqueued_at": now,
                    }
                )
                for n in part
            ]
            with client.pipeline(transaction=False) as pipe:
                pipe.sadd("queues", "default")
                pipe.lpush("queue:default", *payloads)
                pipe.execute()
        seconds = time.perf_counter() - started
        _check(client, "queue:default", count)
        return seconds
    finally:
        client.close()


def _ruby_push_bulk(port: int, count: int) -> float:
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "BENCH_JOBS": str(count)}
    done = subprocess.run(
        ["ruby", str(RUBY_DIR / "push_bulk.rb")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"ruby push_bulk failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def _check(client: redis.Redis, key: str, count: int) -> None:
    queued = int(client.llen(key))
    if queued != count:
        raise BenchError(f"{key} holds {queued} jobs, not the {count} enqueued")


MEASURE: dict[str, Callable[[int, int], float]] = {
    "native_apply_async": _apply_async("native"),
    "sidekiq_apply_async": _apply_async("sidekiq"),
    "sidekiq_push_bulk": _push_bulk,
    "client_push_bulk": _client_push_bulk,
    "ruby_push_bulk": _ruby_push_bulk,
    "raw_pipeline": _raw_pipeline,
}


def run_once(port: int, one_by_one: int, bulk: int, run: int, ruby: bool) -> list[dict[str, Any]]:
    """Every method once (in table order, so each run spreads any machine noise over all)."""
    rows = []
    for key, _, is_bulk in METHODS:
        if key == "ruby_push_bulk" and not ruby:
            continue
        count = bulk if is_bulk else one_by_one
        seconds = MEASURE[key](port, count)
        rows.append(
            {
                "method": key,
                "run": run,
                "jobs": count,
                "seconds": seconds,
                "jobs_per_s": count / seconds,
            }
        )
    redis.Redis(port=port).flushall()
    return rows
