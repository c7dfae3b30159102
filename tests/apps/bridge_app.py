"""The Celery app the worker tests run: ``celery -A bridge_app worker``.

Every task records what it received in the Redis list ``results:<task name>`` (JSON with
``args``, ``kwargs``, ``id``, ``retries``, ``delivery_info`` and the raw job), so a test can
wait for it and compare values.

Environment: ``BROKER_URL`` (a ``sidekiq://`` URL), ``RESULT_BACKEND`` (optional),
``SIDEKIQ_SETUP`` (optional JSON of ``setup()`` options).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

import celery_sidekiq

app = Celery("bridge_app", broker=os.environ["BROKER_URL"], backend=os.environ.get("RESULT_BACKEND"))
celery_sidekiq.setup(app, **json.loads(os.environ.get("SIDEKIQ_SETUP") or '{"poll_interval": 0.5}'))
app.conf.worker_hijack_root_logger = False

_redis_url = os.environ["BROKER_URL"].replace("sidekiq://", "redis://", 1).replace("sidekiqs://", "rediss://", 1)
store = redis.Redis.from_url(_redis_url)


def record(task: Any, *args: Any, **kwargs: Any) -> None:
    request = task.request
    properties = request.properties or {}
    store.rpush(
        f"results:{task.name}",
        json.dumps(
            {
                "args": list(args),
                "kwargs": kwargs,
                "id": request.id,
                "retries": request.retries,
                "root_id": request.root_id,
                "parent_id": request.parent_id,
                "delivery_info": request.delivery_info,
                "job": properties.get("sidekiq_job"),
            }
        ),
    )


@app.task(bind=True, name="Workers::PyWorker")
def py_worker(self: Any, *args: Any, **kwargs: Any) -> None:
    """Runs jobs Ruby pushes as ``Workers::PyWorker``."""
    record(self, *args, **kwargs)


@app.task(bind=True, name="bridge.report", sidekiq_class="PaymentReportWorker")
def payment_report(self: Any, account_id: Any, month: Any = None) -> str:
    """A Pythonic task name mapped to a Ruby class name."""
    record(self, account_id, month=month)
    return f"report {account_id}"


@app.task(bind=True, name="bridge.add")
def add(self: Any, x: int, y: int) -> int:
    record(self, x, y)
    return x + y


@app.task(bind=True, name="bridge.tsum")
def tsum(self: Any, numbers: list[int]) -> int:
    record(self, numbers)
    return sum(numbers)


@app.task(bind=True, name="bridge.sleep")
def sleep(self: Any, seconds: float) -> float:
    record(self, seconds)
    time.sleep(seconds)
    return seconds
