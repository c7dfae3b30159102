"""Drain: how fast one real ``celery worker`` empties a queue of no-op jobs, and what each job
costs in Redis commands, Redis CPU and worker CPU.

One run: the queue is filled first (a ``start`` mark, N no-ops, a ``done`` mark, in that
order), then a fresh worker starts. The drain is timed from the ``start`` mark (the first job
taken) to the ``done`` mark (the last one: the queue is empty and, on a solo pool, every job
has run; on a pool of c, up to c - 1 no-ops may still be finishing, a few microseconds each).
Counters are sampled at both marks, so worker start-up is not counted; afterwards the worker's
own task counts (``inspect stats``) must show every job, or the run is refused.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.harness import (
    FILL_BATCH,
    BenchError,
    Marks,
    NativeMessages,
    RedisSample,
    Worker,
    chunks,
    running,
    session_cpu,
    wait_until,
)
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

#: (label, celery -P, -c) of the pools compared.
POOLS = {
    "solo": ("solo", 1),
    "prefork": ("prefork", 2),
    "threads": ("threads", 8),
}

#: Broker URL scheme of each transport compared.
TRANSPORTS = ("native", "sidekiq")


def producer(transport: str, port: int) -> Celery:
    """The bench's own app on ``transport``, for templates, control and ``apply_async``."""
    import celery_sidekiq

    if transport == "native":
        app = Celery("bench_producer", broker=f"redis://127.0.0.1:{port}/0")
        app.conf.task_default_queue = "default"
    else:
        app = Celery("bench_producer", broker=f"sidekiq://127.0.0.1:{port}/0")
        celery_sidekiq.setup(app)
    for name in ("bench.noop", "bench.mark", "bench.stamp"):
        app.task(name=name)(_stub)
    return app


def fresh(transport: str, port: int, work_dir: Path) -> tuple[redis.Redis, Marks, Celery]:
    """The start of every measured run: an empty Redis, no marks, a producer app."""
    client = redis.Redis(port=port)
    client.flushall()
    marks = Marks(work_dir / "marks")
    marks.clear()
    return client, marks, producer(transport, port)


def _stub(*args: Any) -> None:
    """Runs in the worker, never here."""


def fill(transport: str, app: Celery, client: redis.Redis, count: int) -> int:
    """Queue ``start``, ``count`` no-ops and ``done``; return how many LPUSH calls it took."""
    if transport == "native":
        native = NativeMessages(app, client)
        payloads = [native.message("bench.mark", ["start"])]
        payloads += (native.message() for _ in range(count))
        payloads.append(native.message("bench.mark", ["done"]))
        return NativeMessages.push(client, payloads)
    batch = [jobs.build("bench.mark", ["start"])]
    batch += (jobs.build("bench.noop", []) for _ in range(count))
    batch.append(jobs.build("bench.mark", ["done"]))
    sidekiq = Client(client)
    calls = 0
    for part in chunks(batch, FILL_BATCH):
        sidekiq.push_bulk(part)
        calls += 1
    return calls


def queue_keys(transport: str) -> list[str]:
    return ["default"] if transport == "native" else ["queue:default", "default"]


def run_once(
    transport: str,
    pool: str,
    count: int,
    port: int,
    work_dir: Path,
    run: int,
) -> dict[str, Any]:
    """One drain of ``count`` no-ops; the figures of that run."""
    client, marks, app = fresh(transport, port, work_dir)
    try:
        fill(transport, app, client, count)
        pool_name, concurrency = POOLS[pool]
        url = f"{'redis' if transport == 'native' else 'sidekiq'}://127.0.0.1:{port}/0"
        log = work_dir / f"drain-{transport}-{pool}-{run}.log"
        worker = Worker(url, marks.dir, log, pool_name, concurrency)
        with running(worker):
            timeout = 120 + count / 200
            t_start = marks.wait("start", 120, worker)
            before, cpu_before = RedisSample.take(client), session_cpu(worker.pid)
            t_done = marks.wait("done", timeout, worker)
            after, cpu_after = RedisSample.take(client), session_cpu(worker.pid)
            left = sum(int(client.llen(key)) for key in queue_keys(transport))
            if left:
                raise BenchError(f"{left} jobs still queued after the done mark")
            _check_processed(app, worker, count + 2)
    finally:
        app.close()
        client.close()
    jobs_timed = count + 1  # from the start mark to the done mark, the done mark included
    seconds = t_done - t_start
    delta = after.minus(before)
    return {
        "run": run,
        "jobs": count,
        "seconds": seconds,
        "jobs_per_s": jobs_timed / seconds,
        "commands_per_job": delta.total / jobs_timed,
        "reads_per_job": delta.reads / jobs_timed,
        "redis_cpu_us_per_job": delta.cpu / jobs_timed * 1e6,
        "worker_cpu_us_per_job": (cpu_after - cpu_before) / jobs_timed * 1e6,
        "commands": dict(sorted(delta.calls.items(), key=lambda kv: -kv[1])),
    }


def _check_processed(app: Celery, worker: Worker, expected: int) -> None:
    """The worker received every job and (but on prefork, where the jobs run in other
    processes) ran it, by its own count: a remote control command, once the counters are read."""
    seen: list[dict[str, int]] = []
    wanted = {"received": expected, "ran_here": 0 if worker.pool == "prefork" else expected}

    def ask() -> bool:
        worker.check_alive()
        replies = app.control.broadcast(
            "bench_total", destination=[worker.nodename], reply=True, timeout=2.0, limit=1
        )
        for reply in replies or ():
            if worker.nodename in reply:
                seen.append(reply[worker.nodename])
        return bool(seen) and seen[-1] == wanted

    try:
        wait_until(ask, 20, f"the task counts of {worker.nodename}", interval=0.2)
    except BenchError:
        raise BenchError(
            f"the worker counts {seen[-1] if seen else 'nothing'}, not {wanted}; "
            f"log {worker.log_path}"
        ) from None


def hostname() -> str:
    return socket.gethostname()
