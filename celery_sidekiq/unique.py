"""Unique jobs for Celery tasks: ``unique_for`` and ``unique_until``.

A task (or one call) that sets ``unique_for`` takes rusty-sidekiq's lock
``sidekiq:unique:<queue>:<class>:<sha256 of the args>`` in the script that pushes its job, so
Python and Rust producers dedupe each other::

    @app.task(name="Workers::Report", unique_for=3600)                # a task option
    def report(account_id): ...

    report.delay(42)                                                  # pushed, lock taken
    report.delay(42)                                                  # raises DuplicateJob
    report.apply_async((42,), unique_for=timedelta(minutes=5))       # per call
    report.apply_async((42,), countdown=600)                          # locked 600 s + 3600 s

A duplicate pushes nothing and raises :class:`DuplicateJob` from ``apply_async``/``delay``;
:func:`apply_unique` returns ``None`` instead, as Sidekiq's ``perform_async`` returns ``nil``.

A call is not its own duplicate. When a reply is lost, Celery publishes again with the same task
id (so the same jid): the lock is found held by that jid, the job found waiting in its queue, and
the retry returns as the first push would have, with one job enqueued. If the job is no longer
waiting (a worker took it first, or the first push never landed), it is pushed again: the job
runs at least once, and in that race may run twice (``kombu_sidekiq.unique.push``).

``unique_until`` says when the lock goes: ``"ttl"`` (default, rusty-sidekiq's) when it expires,
``"start"`` when a worker starts the job, ``"success"`` when the job succeeds (or dies: a dead
job never will). A release deletes
the lock only if the job still owns it (its jid is the lock's value), and never happens on a
retry. Retries (``self.retry()``, Sidekiq's retry set), restores and promotions of scheduled
jobs never check the lock.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import task_prerun, task_success

from kombu_sidekiq import job as jobs
from kombu_sidekiq import unique
from kombu_sidekiq.codec import RAW_JOB_PROPERTY
from kombu_sidekiq.unique import UNIQUE_UNTIL, DuplicateJob

__all__ = ["UNIQUE_UNTIL", "DuplicateJob", "apply_unique", "install", "release_dead"]

logger = logging.getLogger(__name__)


def apply_unique(task: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
    """``task.apply_async(args, kwargs, **options)``, but ``None`` for a duplicate.

    >>> result = apply_unique(report, (42,), unique_for=60)    # doctest: +SKIP
    >>> if result is None: print("already enqueued")           # doctest: +SKIP
    """
    try:
        return task.apply_async(args, kwargs, **options)
    except DuplicateJob:
        return None


def install(app: Celery) -> None:
    """Release locks of ``unique_until`` jobs in this app's workers (``setup`` calls it)."""
    # Signals are process-wide; each handler finds its app through the task, so connecting
    # once serves every app, and dispatch_uid keeps a second setup() from doubling them.
    task_prerun.connect(_on_start, weak=False, dispatch_uid="celery_sidekiq.unique.start")
    task_success.connect(_on_success, weak=False, dispatch_uid="celery_sidekiq.unique.success")


def _on_start(sender: Any = None, task: Any = None, **_: Any) -> None:
    _release(task or sender, "start")


def _on_success(sender: Any = None, **_: Any) -> None:
    _release(sender, "success")


def release_dead(app: Celery, job: jobs.Job) -> None:
    """A job that died (or was dropped) will never succeed: free its ``unique_until="success"``
    lock now, as sidekiq-unique-jobs' death handler does, rather than let it refuse the same
    args until it expires. A ``"ttl"`` lock keeps rusty-sidekiq's meaning and waits."""
    if job.get("unique_for") is not None and unique.until(job) == "success":
        _release_job(app, job, "death")


def _release(task: Any, moment: str) -> None:
    properties = getattr(getattr(task, "request", None), "properties", None) or {}
    raw = properties.get(RAW_JOB_PROPERTY)
    if not isinstance(raw, str) or '"unique_until"' not in raw:  # the common case, cheaply
        return
    try:
        job = jobs.parse(raw)
    except jobs.InvalidJob:
        return
    if job.get("unique_for") is None or unique.until(job) != moment:
        return
    _release_job(task.app, job, moment)


def _release_job(app: Celery, job: jobs.Job, moment: str) -> None:
    try:
        with app.pool.acquire(block=True) as connection:
            released = unique.release(connection.default_channel.sidekiq, job)
    except Exception as exc:  # Redis away: the lock still expires with its TTL
        logger.warning(
            "unique lock of job %s not released: %s: %s", job.get("jid"), type(exc).__name__, exc
        )
        return
    if released:
        logger.debug("unique lock of job %s released at %s", job.get("jid"), moment)
