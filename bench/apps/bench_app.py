"""The app the benchmark's workers run: ``celery -A bench_app worker`` (cwd bench/apps).

Environment:

``BROKER_URL``           ``sidekiq://...`` (this project, through ``celery_sidekiq.setup``) or
                         ``redis://...`` (Celery's native Redis transport, left as Celery ships
                         it but for the queue name, Sidekiq's ``default``).
``BENCH_MARK_DIR``       where ``bench.mark`` and ``bench.stamp`` write (files, not Redis, so
                         that measuring adds no Redis command to the ones counted).
``BENCH_POLL_INTERVAL``  ``setup(poll_interval=...)`` for sidekiq:// (default: setup's own).
``BENCH_TRANSPORT_OPTIONS`` JSON of kombu transport options (the pick-up bench's
                         ``instant_pickup: false``, the design before issue 14).
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals
from celery.worker.control import inspect_command

BROKER_URL = os.environ["BROKER_URL"]
MARK_DIR = Path(os.environ.get("BENCH_MARK_DIR", "."))

app = Celery("bench_app", broker=BROKER_URL)
if os.environ.get("BENCH_TRANSPORT_OPTIONS"):
    app.conf.broker_transport_options = json.loads(os.environ["BENCH_TRANSPORT_OPTIONS"])
if BROKER_URL.startswith(("sidekiq://", "sidekiqs://")):
    import celery_sidekiq

    options: dict[str, Any] = {}
    if os.environ.get("BENCH_POLL_INTERVAL"):
        options["poll_interval"] = float(os.environ["BENCH_POLL_INTERVAL"])
    celery_sidekiq.setup(app, **options)
else:
    app.conf.task_default_queue = "default"


# Celery's own ``total_count`` is not exact on a threads pool (a Counter updated from every
# pool thread), and ``inspect stats`` cannot be serialized on sidekiq:// (its transport options
# hold the class registry), so the worker counts for the bench itself. ``next()`` on an
# itertools.count is atomic: no update is lost between threads.
_received = itertools.count()
_ran = itertools.count()


@signals.task_received.connect
def _count_received(**kwargs: Any) -> None:
    next(_received)


@inspect_command()
def bench_total(state: Any, **kwargs: Any) -> dict[str, int]:
    """Tasks this worker received, and ran in this process (all of them but on prefork)."""
    return {"received": _count(_received), "ran_here": _count(_ran)}


def _count(counter: itertools.count[int]) -> int:
    # An itertools.count tells its next value only through repr (or by consuming it).
    return int(repr(counter)[len("count(") : -1] or 0)


@app.task(name="bench.noop")
def noop(*args: Any) -> None:
    """The job being measured: nothing but one atomic count."""
    next(_ran)


@app.task(name="bench.mark")
def mark(name: str) -> None:
    """Write the wall clock to ``<mark dir>/<name>`` (atomically: the reader polls for it)."""
    next(_ran)
    now = repr(time.time())
    tmp = MARK_DIR / f".{name}.{os.getpid()}"
    tmp.write_text(now)
    tmp.replace(MARK_DIR / name)


@app.task(name="bench.stamp", bind=True)
def stamp(self: Any, eta: float) -> None:
    """Append ``<eta> <now> <promoted>`` to ``<mark dir>/stamps``, where ``promoted`` is when a
    poller moved the job to its queue (its ``enqueued_at``; ``nan`` on the native transport).
    One ``write`` with O_APPEND, so lines from several pool processes never interleave."""
    now = time.time()
    promoted = float("nan")
    raw = (self.request.properties or {}).get("sidekiq_job")
    if raw:
        from kombu_sidekiq.job import to_epoch_seconds

        promoted = to_epoch_seconds(json.loads(raw).get("enqueued_at")) or promoted
    line = f"{eta!r} {now!r} {promoted!r}\n".encode()
    fd = os.open(MARK_DIR / "stamps", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@app.task(name="bench.pickup", bind=True)
def pickup(self: Any, pushed: float) -> None:
    """Append ``<pushed> <now> <queue>`` to ``<mark dir>/pickups``: when the producer pushed
    this job, and when it started here (one O_APPEND write, as ``bench.stamp``)."""
    now = time.time()
    queue = (self.request.delivery_info or {}).get("routing_key")
    fd = os.open(MARK_DIR / "pickups", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{pushed!r} {now!r} {queue}\n".encode())
    finally:
        os.close(fd)
