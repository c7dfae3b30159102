"""The app of the failure-semantics tests: ``celery -A semantics_app worker``, and their producer.

Plain Celery tasks (they ask for no Sidekiq retries, so Celery producers write their jobs to
fail Celery's way) beside tasks that ask for Sidekiq's retries. Tasks record each run in the
Redis list ``results:<task name>``; errbacks record what they were called with in ``errbacks``.

Environment: ``BROKER_URL`` (a ``sidekiq://`` URL), ``RESULT_BACKEND``, ``SIDEKIQ_SETUP``
(optional JSON of ``setup()`` options).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import Reject

import celery_sidekiq

app = Celery(
    "semantics_app", broker=os.environ["BROKER_URL"], backend=os.environ.get("RESULT_BACKEND")
)
celery_sidekiq.setup(app, **json.loads(os.environ.get("SIDEKIQ_SETUP") or '{"poll_interval": 0.3}'))
app.conf.worker_hijack_root_logger = False

store = redis.Redis.from_url(os.environ["BROKER_URL"].replace("sidekiq://", "redis://", 1))


def record(task: Any, *args: Any) -> None:
    store.rpush(
        f"results:{task.name}",
        json.dumps({"args": list(args), "id": task.request.id, "retries": task.request.retries}),
    )


@app.task(shared=False, bind=True, name="sem.add")
def add(self: Any, x: int, y: int) -> int:
    record(self, x, y)
    return x + y


@app.task(shared=False, bind=True, name="sem.fail")
def fail(self: Any, message: str = "boom") -> None:
    """A plain Celery task that raises: the issue's example."""
    record(self, message)
    raise ValueError(message)


@app.task(shared=False, name="sem.on_err")
def on_err(request: Any, exc: BaseException, traceback: Any) -> None:
    """An errback (``link_error``): Celery calls it with the failed request and exception."""
    store.rpush("errbacks", json.dumps({"id": request.id, "exc": repr(exc)}))


@app.task(
    shared=False,
    bind=True,
    name="sem.autoretry",
    autoretry_for=(ConnectionError,),
    retry_kwargs={"countdown": 0.1},
    max_retries=2,
)
def autoretry(self: Any) -> None:
    """Always fails with ConnectionError, which autoretry_for retries twice."""
    record(self)
    raise ConnectionError("upstream unavailable")


@app.task(shared=False, bind=True, name="sem.retry_once", max_retries=3)
def retry_once(self: Any) -> int:
    """Asks for one retry (self.retry), then returns how many retries it took."""
    record(self)
    if self.request.retries == 0:
        raise self.retry(countdown=0.1)
    return int(self.request.retries)


@app.task(shared=False, bind=True, name="sem.reject_once", acks_late=True)
def reject_once(self: Any) -> str:
    """Rejects with requeue on its first run; the requeued job succeeds."""
    record(self)
    if store.incr(f"reject_once:{self.request.id}") == 1:
        raise Reject("first pass", requeue=True)
    return "second-pass"


@app.task(shared=False, bind=True, name="sem.overrun", time_limit=1)
def overrun(self: Any) -> None:
    """Sleeps past its 1 s hard time limit: prefork kills the child."""
    record(self)
    time.sleep(30)


@app.task(shared=False, bind=True, name="sem.not_kept", sidekiq_options={"dead": False})
def not_kept(self: Any) -> None:
    """A plain Celery task whose failed job is not kept in dead (``dead: false``)."""
    record(self)
    raise ValueError("not kept")


@app.task(shared=False, bind=True, name="sem.sidekiq_options", sidekiq_options={"retry": 3})
def sidekiq_retries(self: Any) -> None:
    """Asks for Sidekiq's retries in sidekiq_options: fails Sidekiq's way."""
    record(self)
    raise ValueError("retried by sidekiq")


@app.task(shared=False, bind=True, name="sem.sidekiq_retry", sidekiq_retry=True)
def sidekiq_retry(self: Any) -> None:
    """Asks for Sidekiq's retries with the task option sidekiq_retry."""
    record(self)
    raise ValueError("retried by sidekiq too")


@app.task(shared=False, bind=True, name="sem.properties", max_retries=1)
def properties(self: Any, retry: bool = False) -> dict[str, Any]:
    """Returns what the message brought (its properties, priority, redelivered), after one
    Celery retry when asked."""
    if retry and not self.request.retries:
        raise self.retry(countdown=0.1)
    props = self.request.properties or {}
    return {
        "app_id": props.get("app_id"),
        "message_id": props.get("message_id"),
        "priority": self.request.delivery_info.get("priority"),
        "retries": self.request.retries,
    }


@app.task(shared=False, bind=True, name="sem.redelivered", acks_late=True)
def redelivered(self: Any) -> str:
    """Celery's own integration test: Reject(requeue=True) unless the message is redelivered."""
    if not self.request.delivery_info.get("redelivered"):
        raise Reject("first delivery", requeue=True)
    return "second-pass"
