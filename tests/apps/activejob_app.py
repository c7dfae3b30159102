"""The Celery app the ActiveJob tests run: ``celery -A activejob_app worker``.

Each task records what it received in the Redis list ``results:<task name>`` as kombu JSON,
so a test reads back the very Python values (GlobalID, Duration, datetime, Decimal...) the task
got, with the task's ActiveJob metadata. Every task failure (or retry) is recorded in
``failures``.

Environment: ``BROKER_URL`` (a ``sidekiq://`` URL), ``SIDEKIQ_SETUP`` (optional JSON of
``setup()`` options).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import redis
from celery import Celery
from celery.signals import task_failure, task_retry
from kombu.utils import json as kombu_json

import celery_sidekiq
from celery_sidekiq import activejob

app = Celery("activejob_app", broker=os.environ["BROKER_URL"])
celery_sidekiq.setup(app, **json.loads(os.environ.get("SIDEKIQ_SETUP") or '{"poll_interval": 0.5}'))
app.conf.worker_hijack_root_logger = False

_redis_url = os.environ["BROKER_URL"].replace("sidekiq://", "redis://", 1)
store = redis.Redis.from_url(_redis_url)


def record(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    meta = activejob.metadata(task.request)
    doc = {
        "task": task.name,
        "id": task.request.id,
        "args": list(args),
        "kwargs": kwargs,
        "metadata": None if meta is None else asdict(meta),
    }
    store.rpush(f"results:{task.name}", kombu_json.dumps(doc))


@app.task(bind=True, name="PyAjJob")
def py_aj_job(self: Any, *args: Any, **kwargs: Any) -> None:
    """Runs ``PyAjJob.perform_later(...)`` from Rails: the task is named like the class."""
    record(self, args, kwargs)


@app.task(bind=True, name="aj.mapped", sidekiq_class="PyMappedJob")
def mapped(self: Any, *args: Any, **kwargs: Any) -> None:
    """A Pythonic task name running the ActiveJob class ``PyMappedJob``."""
    record(self, args, kwargs)


@app.task(bind=True, name="PyRetryJob")
def retrying(self: Any, *args: Any, **kwargs: Any) -> None:
    """Asks Celery for a retry on its first run (``self.retry``), as a flaky job would."""
    record(self, args, kwargs)
    if not self.request.retries:
        raise self.retry(countdown=60)


@task_failure.connect
def on_failure(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    record_failure(sender, exception)


@task_retry.connect
def on_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
    # A failing Sidekiq job that will be retried ends in Celery's RETRY state.
    record_failure(sender, getattr(reason, "exc", None) or reason)


def record_failure(task: Any, exception: BaseException | None) -> None:
    failure = {"task": getattr(task, "name", None), "type": type(exception).__name__}
    failure["message"] = str(exception)
    store.rpush("failures", json.dumps(failure))
