"""The Celery app of the queue-order and pick-up tests: ``celery -A order_app worker``.

Tasks record into Redis with one command each, so a solo worker runs thousands a second:

``order.noop``   RPUSH ``order:log`` the queue it came from.
``order.spawn``  the same, then pushes one ``order.noop`` job to each queue named in its args
                 (SADD + LPUSH, as sidekiq.rb's client writes a job): work that arrives while
                 the worker runs.
``order.stamp``  RPUSH ``order:stamps`` ``[pushed, started, queue]``: ``pushed`` is its first
                 argument (the producer's clock when it pushed), ``started`` this worker's clock
                 as the task starts.

Environment: ``BROKER_URL`` (``sidekiq://``), ``SIDEKIQ_SETUP`` (JSON of ``setup()`` options),
``TRANSPORT_OPTIONS`` (JSON of kombu transport options).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import redis
from celery import Celery

import celery_sidekiq
from kombu_sidekiq import job as jobs

app = Celery("order_app", broker=os.environ["BROKER_URL"])
app.conf.broker_transport_options = json.loads(os.environ.get("TRANSPORT_OPTIONS") or "{}")
celery_sidekiq.setup(app, **json.loads(os.environ.get("SIDEKIQ_SETUP") or '{"poll_interval": 1}'))
app.conf.worker_hijack_root_logger = False
# Thousands of jobs a run: no "received" and "succeeded" line for each (the log keeps "ready.").
for name in ("celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(name).setLevel(logging.WARNING)

store = redis.Redis.from_url(os.environ["BROKER_URL"].replace("sidekiq://", "redis://", 1))


def _queue(task: Any) -> str:
    return str((task.request.delivery_info or {}).get("routing_key"))


@app.task(bind=True, name="order.noop")
def noop(self: Any, *args: Any) -> None:
    store.rpush("order:log", _queue(self))


@app.task(bind=True, name="order.spawn")
def spawn(self: Any, *queues: str) -> None:
    with store.pipeline(transaction=False) as pipe:
        pipe.rpush("order:log", _queue(self))
        for queue in queues:
            pipe.sadd("queues", queue)
            pipe.lpush(f"queue:{queue}", jobs.dumps(jobs.build("order.noop", [], queue=queue)))
        pipe.execute()


@app.task(bind=True, name="order.stamp")
def stamp(self: Any, pushed: float) -> None:
    started = time.time()
    store.rpush("order:stamps", json.dumps([pushed, started, _queue(self)]))
