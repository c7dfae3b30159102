"""The Celery app of the fault tests and the chaos soak: ``celery -A chaos_app worker``.

One task, ``Chaos::Work`` (Ruby pushes that class name too), which sleeps a little and records
each run in the Redis hash ``chaos:runs`` (field: a new id per run, value: JSON with the job's
id, the worker incarnation, pid and time). Recording goes to ``RECORD_URL``, the real Redis,
not through the fault proxy the broker URL may point at, and it retries until Redis answers
(up to two minutes); a retried write sets the same field, so a run is never counted twice.

Environment: ``BROKER_URL`` (a ``sidekiq://`` URL), ``RECORD_URL`` (``redis://``, default: the
broker's server), ``TRANSPORT_OPTIONS`` (JSON, kombu transport options such as
``polling_interval`` and ``health_check_interval``), ``SIDEKIQ_SETUP`` (JSON of ``setup()``
options), ``CHAOS_WORKER`` (a label for this worker process, recorded with each run),
``CHAOS_BEAT`` (seconds: ``celery beat`` enqueues a ``Chaos::Work`` job that often).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

import redis
from celery import Celery

import celery_sidekiq

logger = logging.getLogger(__name__)

#: The hash each run is recorded in.
RUNS = "chaos:runs"

#: Seconds a task keeps trying to record its run before it gives up (and fails).
RECORD_PATIENCE = 120.0

app = Celery("chaos_app", broker=os.environ["BROKER_URL"])
app.conf.broker_transport_options = json.loads(os.environ.get("TRANSPORT_OPTIONS") or "{}")
celery_sidekiq.setup(app, **json.loads(os.environ.get("SIDEKIQ_SETUP") or '{"poll_interval": 1}'))
app.conf.worker_hijack_root_logger = False
if os.environ.get("CHAOS_BEAT"):  # celery -A chaos_app beat -S sidekiq: a job every N s
    app.conf.beat_schedule = {
        "chaos-tick": {
            "task": "Chaos::Work",
            "schedule": float(os.environ["CHAOS_BEAT"]),
            "args": ("beat", 0, 0.0),
        }
    }

_record_url = os.environ.get("RECORD_URL") or os.environ["BROKER_URL"].replace(
    "sidekiq://", "redis://", 1
)
WORKER = os.environ.get("CHAOS_WORKER", "worker")
_store: redis.Redis | None = None
_store_pid = 0


def store() -> redis.Redis:
    """The recording client of this process (a new one after a fork)."""
    global _store, _store_pid
    if _store is None or _store_pid != os.getpid():
        _store = redis.Redis.from_url(_record_url, socket_timeout=10, socket_connect_timeout=2)
        _store_pid = os.getpid()
    return _store


def record(run: dict[str, Any]) -> None:
    key, value = uuid.uuid4().hex, json.dumps(run)
    deadline = time.monotonic() + RECORD_PATIENCE
    while True:
        try:
            store().hset(RUNS, key, value)
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise
            logger.warning("chaos: recording run of %s: %s; trying again", run["id"], exc)
            time.sleep(0.2)


@app.task(bind=True, name="Chaos::Work")
def work(self: Any, source: str = "?", seq: int = 0, sleep: float = 0.0) -> None:
    """Sleep ``sleep`` seconds, then record this run (once per run, whatever Redis does)."""
    if sleep:
        time.sleep(sleep)
    record(
        {
            "id": self.request.id,
            "source": source,
            "seq": seq,
            "worker": WORKER,
            "pid": os.getpid(),
            "t": time.time(),
        }
    )
