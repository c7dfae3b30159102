"""The Celery app of the unique-job worker tests: ``celery -A unique_app worker``.

Every task records in ``results:<task name>`` its args, its jid, its retry count and the value
its own unique lock had while the task body ran (``null`` when there was none), so a test can
tell when the lock went away.

Environment: ``BROKER_URL`` (a ``sidekiq://`` URL).
"""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

import celery_sidekiq
from kombu_sidekiq import job as jobs
from kombu_sidekiq import unique
from kombu_sidekiq.keys import Keys

app = Celery("unique_app", broker=os.environ["BROKER_URL"])
celery_sidekiq.setup(app, poll_interval=0.2)
app.conf.worker_hijack_root_logger = False

store = redis.Redis.from_url(os.environ["BROKER_URL"].replace("sidekiq://", "redis://", 1))


def record(task: Any, *args: Any) -> None:
    job = jobs.parse(task.request.properties["sidekiq_job"])
    lock = store.get(unique.lock_key(job, Keys()))
    entry = {
        "args": list(args),
        "jid": job["jid"],
        "retries": task.request.retries,
        "lock": lock.decode() if lock is not None else None,
    }
    store.rpush(f"results:{task.name}", json.dumps(entry))


@app.task(bind=True, name="unique.start", unique_for=60, unique_until="start")
def start(self: Any, n: int) -> None:
    record(self, n)


@app.task(bind=True, name="unique.success", unique_for=60, unique_until="success")
def success(self: Any, n: int) -> None:
    record(self, n)


@app.task(bind=True, name="unique.retried", unique_for=60, unique_until="success")
def retried(self: Any, n: int) -> None:
    """Asks for one Celery retry, then succeeds."""
    record(self, n)
    if self.request.retries == 0:
        raise self.retry(countdown=0.3)


@app.task(
    bind=True,
    name="unique.doomed",
    unique_for=60,
    unique_until="success",
    sidekiq_options={"retry": 0},
)
def doomed(self: Any, n: int) -> None:
    """Fails with no retry left: dead at once."""
    record(self, n)
    raise ValueError("never succeeds")


@app.task(bind=True, name="unique.ttl", unique_for=60)
def ttl(self: Any, n: int) -> None:
    record(self, n)
