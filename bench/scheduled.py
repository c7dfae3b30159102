"""Scheduled jobs: what waiting jobs cost a worker's memory, and how late they run.

* Memory: a solo worker, idle, then N jobs due in an hour. Celery's native transport hands ETA
  tasks to the worker, which holds them (and their messages) in memory until due; here they
  wait in the ``schedule`` ZSET and the worker only sees them once due. RSS of the worker's
  main process (``VmRSS``) once it is steady, before and after.
* Lateness: M jobs due over a few seconds, each recording when it ran; lateness = run - due.
  Ours is bounded by the poller's interval (a poll every 0.5 to 1.5 intervals, as Sidekiq);
  native runs ETA tasks off an in-memory timer, for comparison.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.drain import fresh
from bench.harness import BenchError, Marks, NativeMessages, Worker, rss_kb, running, wait_until
from celery_sidekiq.bulk import push_bulk
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

#: How far in the future the memory test's jobs are due: nothing may run during the test.
FAR = 3600.0

#: Seconds between the first lateness job being enqueued and the first one being due.
LEAD = 3.0


def _url(transport: str, port: int) -> str:
    return f"{'redis' if transport == 'native' else 'sidekiq'}://127.0.0.1:{port}/0"


def _ready(transport: str, app: Any, client: redis.Redis, marks: Marks, worker: Worker) -> None:
    """Run one job through the worker, so it is consuming (and warm) before measuring."""
    if transport == "native":
        NativeMessages.push(client, [NativeMessages(app, client).message("bench.mark", ["ready"])])
    else:
        Client(client).push(jobs.build("bench.mark", ["ready"]))
    marks.wait("ready", 60, worker)


def steady_rss(worker: Worker, timeout: float = 30.0) -> int:
    """VmRSS (kB) once two readings half a second apart differ by under 1%."""
    last = rss_kb(worker.pid)

    def steady() -> int | None:
        nonlocal last
        worker.check_alive()
        now = rss_kb(worker.pid)
        stable = abs(now - last) <= last / 100
        last = now
        return now if stable else None

    return int(wait_until(steady, timeout, "a steady RSS", interval=0.5))


def _solo_run(
    transport: str, port: int, work_dir: Path, label: str, poll_interval: float
) -> tuple[redis.Redis, Marks, Celery, Worker]:
    """A fresh run and its ``-P solo`` worker (not started yet), polling every ``poll_interval``,
    logging to ``<label>-<transport>.log``."""
    client, marks, app = fresh(transport, port, work_dir)
    env = {"BENCH_POLL_INTERVAL": str(poll_interval)}
    log = work_dir / f"{label}-{transport}.log"
    return client, marks, app, Worker(_url(transport, port), marks.dir, log, "solo", 1, env)


def memory_run(
    transport: str, port: int, count: int, work_dir: Path, poll_interval: float
) -> dict[str, Any]:
    client, marks, app, worker = _solo_run(transport, port, work_dir, "rss", poll_interval)
    try:
        # KILL at the end: a warm shutdown of the native worker would first hand 100,000
        # held messages back to Redis, which is not what is measured.
        with running(worker, kill=True):
            _ready(transport, app, client, marks, worker)
            before = steady_rss(worker)
            started = time.monotonic()
            due = time.time() + FAR
            if transport == "native":
                native = NativeMessages(app, client)
                NativeMessages.push(client, (native.message(eta=due) for _ in range(count)))
                wait_until(
                    worker.watching(lambda: client.llen("default") == 0),
                    600,
                    "the worker to take every ETA message",
                    0.1,
                )
            else:
                push_bulk("bench.noop", [[] for _ in range(count)], app=app, eta=due)
                # The poller looks at the schedule every 0.5 to 1.5 intervals: give it three.
                end = time.monotonic() + max(3 * poll_interval, 3.0)
                wait_until(worker.watching(lambda: time.monotonic() > end), 60, "three polls", 0.1)
            taken = time.monotonic() - started
            after = steady_rss(worker, timeout=120)
            held = (
                int(client.hlen("unacked"))
                if transport == "native"
                else int(client.zcard("schedule"))
            )
    finally:
        app.close()
        client.close()
    if held != count:
        raise BenchError(f"{transport}: {held} scheduled jobs held or waiting, not {count}")
    return {
        "transport": transport,
        "jobs": count,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_growth_mb": (after - before) / 1024,
        # How long the native worker took to pull every ETA message into memory; ours never do.
        "seconds_to_take": taken if transport == "native" else None,
    }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.4999)))
    return sorted_values[rank - 1]


def lateness_run(
    transport: str, port: int, count: int, spread: float, work_dir: Path, poll_interval: float
) -> dict[str, Any]:
    client, marks, app, worker = _solo_run(transport, port, work_dir, "lateness", poll_interval)
    try:
        with running(worker, kill=True):
            _ready(transport, app, client, marks, worker)
            first = time.time() + LEAD
            etas = [first + spread * n / count for n in range(count)]
            if transport == "native":
                stamp = app.tasks["bench.stamp"]
                for eta in etas:
                    stamp.apply_async((eta,), eta=datetime.fromtimestamp(eta, timezone.utc))
            else:
                push_bulk("bench.stamp", [[eta] for eta in etas], app=app, eta=etas)
            if time.time() > first:
                raise BenchError(f"{transport}: enqueueing {count} jobs took longer than {LEAD}s")
            timeout = LEAD + spread + 10 * poll_interval + 60
            wait_until(
                worker.watching(lambda: len(marks.stamps()) >= count),
                timeout,
                f"{count} stamps",
                0.1,
            )
    finally:
        app.close()
        client.close()
    stamps = marks.stamps()
    late = sorted(ran - eta for eta, ran, _ in stamps)
    promoted = sorted(at - eta for eta, _, at in stamps if not math.isnan(at))
    if transport == "sidekiq" and len(promoted) != len(stamps):
        raise BenchError(f"{len(stamps) - len(promoted)} jobs ran without an enqueued_at")
    return {
        "transport": transport,
        "jobs": len(late),
        "spread_s": spread,
        "poll_interval_s": poll_interval,
        "p50_s": percentile(late, 50),
        "p90_s": percentile(late, 90),
        "p99_s": percentile(late, 99),
        "max_s": late[-1],
        "min_s": late[0],
        # due -> in the queue: what the poller alone adds (the rest is the worker's backlog)
        "promotion_p50_s": percentile(promoted, 50) if promoted else None,
        "promotion_p99_s": percentile(promoted, 99) if promoted else None,
        "promotion_max_s": promoted[-1] if promoted else None,
    }
