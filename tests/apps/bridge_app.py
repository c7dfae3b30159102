"""The Celery app the worker tests run: ``celery -A bridge_app worker``.

Every task records what it received in the Redis list ``results:<task name>`` (JSON with
``args``, ``kwargs``, ``id``, ``retries``, ``delivery_info`` and the raw job), so a test can
wait for it and compare values.

Environment: ``BROKER_URL`` (a ``sidekiq://`` URL), ``RESULT_BACKEND`` (optional),
``SIDEKIQ_SETUP`` (optional JSON of ``setup()`` options), ``BRIDGE_MIDDLEWARE`` (set: run
the server middleware ``trace_jobs`` and ``gatekeeper`` below).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery

import celery_sidekiq


def trace_jobs(job: dict[str, Any], call_next: Any) -> Any:
    """Middleware (BRIDGE_MIDDLEWARE=1), outermost: records what it saw in ``middleware:seen``."""
    seen = {key: job.get(key) for key in ("class", "args", "jid", "queue", "retry")}
    store.rpush("middleware:seen", json.dumps({**seen, "link": "trace", "pid": os.getpid()}))
    return call_next()


def gatekeeper(job: dict[str, Any], call_next: Any) -> Any:
    """Middleware (BRIDGE_MIDDLEWARE=1), inner: first arg "skip" skips a job, "refuse" fails it."""
    store.rpush("middleware:seen", json.dumps({"jid": job.get("jid"), "link": "gate"}))
    first = job["args"][0] if job["args"] else None
    if first == "skip":
        return "skipped by middleware"
    if first == "refuse":
        raise PermissionError("refused by middleware")
    return call_next()


def record_death(job: dict[str, Any], exc: BaseException | None) -> None:
    """Death handler: records each job whose retries are over in ``deaths``."""
    store.rpush("deaths", json.dumps({"jid": job["jid"], "error": type(exc).__name__}))


app = Celery(
    "bridge_app", broker=os.environ["BROKER_URL"], backend=os.environ.get("RESULT_BACKEND")
)
celery_sidekiq.setup(
    app,
    **json.loads(os.environ.get("SIDEKIQ_SETUP") or '{"poll_interval": 0.5}'),
    middleware=[trace_jobs, gatekeeper] if os.environ.get("BRIDGE_MIDDLEWARE") else [],
    death_handlers=[record_death],
)
app.conf.worker_hijack_root_logger = False

_redis_url = (
    os.environ["BROKER_URL"]
    .replace("sidekiq://", "redis://", 1)
    .replace("sidekiqs://", "rediss://", 1)
)
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
    store.incr(f"done:{self.name}")
    return seconds


@app.task(bind=True, name="bridge.fail")
def fail(self: Any, message: str = "boom from python") -> None:
    """Always raises ValueError (failure counting, retry tests)."""
    record(self, message)
    raise ValueError(message)


class Flaky(app.Task):
    """Sidekiq's per-class blocks as task methods; the first arg picks what they answer."""

    def sidekiq_retry_in(self, count: int, exc: BaseException, job: dict[str, Any]) -> Any:
        choice = job["args"][0]
        return {"soon": 30, "kill": "kill", "discard": "discard"}.get(choice)

    def sidekiq_retries_exhausted(self, job: dict[str, Any], exc: BaseException) -> Any:
        store.rpush("exhausted", json.dumps({"jid": job["jid"], "count": job["retry_count"]}))
        return "discard" if job["args"][0] == "forget" else None


@app.task(bind=True, base=Flaky, name="bridge.flaky")
def flaky(self: Any, choice: str) -> None:
    """Always raises; ``Flaky``'s hooks decide what happens next."""
    record(self, choice)
    raise ConnectionError(choice)


class PaymentDeclined(Exception):
    """An application exception: its error_class is "bridge_app.PaymentDeclined"."""


@app.task(bind=True, name="bridge.decline")
def decline(self: Any, message: str = "card declined") -> None:
    """Always raises bridge_app.PaymentDeclined (retry tests: qualified error_class)."""
    record(self, message)
    raise PaymentDeclined(message)


@app.task(bind=True, name="bridge.retry_self", max_retries=2)
def retry_self(self: Any, countdown: float = 1) -> None:
    """Asks Celery for a retry on every run (self.retry with exc and countdown), max 2."""
    record(self, countdown)
    try:
        raise LookupError(f"not ready yet (try {self.request.retries})")
    except LookupError as exc:
        raise self.retry(exc=exc, countdown=countdown) from exc


@app.task(
    bind=True,
    name="bridge.autoretry",
    autoretry_for=(ConnectionError,),
    retry_kwargs={"countdown": 1},
    max_retries=1,
)
def autoretry(self: Any) -> None:
    """Fails with ConnectionError, which Celery's autoretry_for retries once."""
    record(self)
    raise ConnectionError("upstream unavailable")


@app.task(bind=True, name="bridge.overrun", time_limit=1)
def overrun(self: Any, seconds: float = 30) -> None:
    """Sleeps past its 1 s hard time limit: prefork kills the child running it."""
    record(self, seconds)
    time.sleep(seconds)
