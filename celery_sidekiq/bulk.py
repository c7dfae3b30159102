"""``push_bulk``: enqueue many jobs of one task with one Redis round trip per batch.

Sidekiq's ``Sidekiq::Client.push_bulk`` for Celery apps. ``apply_async`` pays for a Celery
message per call (routing, headers, serialization, a kombu publish); a bulk push resolves the
task, its Sidekiq class and its options once, builds plain Sidekiq jobs and writes each batch
of ``batch_size`` in one round trip, a ``MULTI``/``EXEC`` (``SADD queues`` + one ``LPUSH``,
and one ``ZADD schedule``)::

    from celery_sidekiq.bulk import push_bulk

    jids = push_bulk(send_invoice, [[account_id] for account_id in accounts])
    push_bulk("Workers::Reindex", [[1], [2]], app=app, queue="low")   # a class only Ruby has
    push_bulk(send_invoice, [[1], [2]], countdown=60)                 # to the schedule ZSET

The jobs are the ones ``apply_async`` writes for the same task (class mapping, the task's
``sidekiq_options``, ``retry``, the routed queue), with two differences: the task id *is* the
jid (so ``AsyncResult(jid)`` works and the job needs no ``"celery"`` extension key), and
Celery's per-call metadata (kwargs, links, time limits) has no place here: use
``apply_async`` for those.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Final

import redis
from celery import Celery, Task

from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client, checked_payload
from kombu_sidekiq.codec import CALL_OPTIONS, JobOptions, Registry
from kombu_sidekiq.transport import Channel, PayloadTooLarge, oversize

__all__ = ["BATCH_SIZE", "push_bulk"]

logger = logging.getLogger(__name__)

#: Jobs per round trip, Sidekiq's ``push_bulk`` default: large enough that the round trip is
#: amortized, small enough that one pipeline never blocks Redis for long (about 1 ms).
BATCH_SIZE: Final = 1_000

#: Options that need a per-job step at enqueue time (a unique lock) that a bulk push skips.
_PER_JOB_OPTIONS: Final = frozenset({"unique_for", "unique_until"})

#: Per-call Sidekiq options ``push_bulk`` takes besides ``retry``.
BULK_OPTIONS: Final = tuple(name for name in CALL_OPTIONS if name not in _PER_JOB_OPTIONS)

When = datetime | float | int


def push_bulk(
    task_or_name: Task | str,
    args_list: Iterable[Sequence[Any]],
    *,
    queue: str | None = None,
    app: Celery | None = None,
    countdown: float | None = None,
    eta: When | Sequence[When] | None = None,
    retry: bool | int | None = None,
    batch_size: int = BATCH_SIZE,
    **sidekiq_options: Any,
) -> list[str]:
    """Enqueue one job of ``task_or_name`` per entry of ``args_list``; return their jids.

    ``task_or_name`` is a task, or a name (its Sidekiq class when only Ruby has it), then
    with ``app`` (default: Celery's current app). ``queue`` overrides the routed queue.
    ``countdown`` (seconds) or ``eta`` (an aware ``datetime`` or epoch seconds; a naive
    ``datetime`` is UTC, as Celery's ``enable_utc`` has it; or one per job, as Sidekiq's
    ``"at"`` array) schedules the jobs; a time already past enqueues at once. ``retry`` and
    ``sidekiq_options`` (``retry_queue``, ``backtrace``, ``tags``, ``dead``) override the
    task's ``sidekiq_options``.

    Every job is built, serialized and checked (JSON values only, no lone UTF-16 surrogate,
    no NaN, nesting Ruby can read) before anything is written, so bad input raises
    (``TypeError``/``ValueError``, naming its index in ``args_list``) with nothing enqueued.
    The jids are the task ids, in the order of ``args_list``; a consumer takes the jobs of
    each queue in that order.

    Each batch is one ``MULTI``/``EXEC``: a connection lost before Redis gets the ``EXEC``
    writes nothing of that batch. Batches are separate round trips, though: if Redis fails
    in the middle of a call, the batches before the failing one are written and stay, and
    the error raised says how many jobs that is (the first N of ``args_list``); the rest are
    not written. Two cases are not whole even within a batch: an error reply to one of its
    commands (a queue key holding another type, out of memory) leaves its other commands
    applied, as Redis never rolls back; and a connection lost after ``EXEC`` ran, taking the
    reply, makes redis-py's retry (if the client has one) write that batch a second time.
    """
    task, app = _resolve(task_or_name, app)
    name = task.name if task is not None else str(task_or_name)
    _check_options(batch_size, retry, sidekiq_options)
    batch = [_checked_args(index, args) for index, args in enumerate(args_list)]
    if not batch:
        return []
    at = _schedule(len(batch), countdown, eta)
    target = queue or _routed_queue(app, name, task)
    with app.pool.acquire(block=True) as connection:
        channel = connection.default_channel
        if not isinstance(channel, Channel):
            raise ValueError(
                f"push_bulk() writes Sidekiq jobs and needs a sidekiq:// broker; app "
                f"{app.main!r} uses {connection.as_uri()!r}"
            )
        options = _job_options(channel.registry, name, retry, sidekiq_options)
        payloads = _payloads(
            batch,
            options,
            target,
            at,
            channel.sidekiq_version,
            batch_size,
            channel.max_payload_bytes,
        )
        _write(channel.sidekiq, payloads, target, batch_size)
    return [jid for jid, _, _ in payloads]


def _resolve(task_or_name: Task | str, app: Celery | None) -> tuple[Task | None, Celery]:
    if isinstance(task_or_name, str):
        if not task_or_name:
            raise ValueError("push_bulk(): name a task or a Sidekiq class, not ''")
        if app is None:
            from celery import current_app

            app = current_app
        return app.tasks.get(task_or_name), app
    if isinstance(task_or_name, Task):
        return task_or_name, app or task_or_name.app
    raise TypeError(f"push_bulk() takes a task or a task name, not {type(task_or_name).__name__}")


def _check_options(batch_size: int, retry: Any, options: dict[str, Any]) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"push_bulk(batch_size={batch_size!r}): use a count >= 1, such as 1000")
    if retry is not None and not (
        isinstance(retry, bool) or (isinstance(retry, int) and retry >= 0)
    ):
        raise ValueError(f"push_bulk(retry={retry!r}): use true, false or a count >= 0")
    per_job = sorted(set(options) & _PER_JOB_OPTIONS)
    if per_job:
        raise TypeError(
            f"push_bulk() does not take {per_job}: unique locks are taken per job; "
            "enqueue unique jobs with apply_async"
        )
    unknown = sorted(set(options) - set(BULK_OPTIONS))
    if unknown:
        raise TypeError(
            f"push_bulk() got unknown options {unknown}; known: "
            f"{sorted(('retry', 'countdown', 'eta', 'queue', 'batch_size', *BULK_OPTIONS))}"
        )


def _checked_args(index: int, args: Any) -> list[Any]:
    # Sidekiq's push_bulk refuses anything but an array of arrays: a string or a dict here is
    # almost always a forgotten pair of brackets, which would enqueue garbage silently.
    if not isinstance(args, (list, tuple)):
        raise TypeError(
            f"push_bulk(): args_list[{index}] is a {type(args).__name__}; each entry is one "
            "job's positional args, a list (wrap a single argument: [[x], [y]])"
        )
    return args if type(args) is list else list(args)


def _schedule(count: int, countdown: float | None, eta: Any) -> list[float | None]:
    """Each job's due time in epoch seconds, or None to enqueue now."""
    if countdown is not None and eta is not None:
        raise ValueError("push_bulk(): give countdown or eta, not both")
    now = time.time()
    if countdown is not None:
        times: list[float] = [now + float(countdown)] * count
    elif eta is None:
        return [None] * count
    elif isinstance(eta, (datetime, int, float)):
        times = [_epoch(eta)] * count
    else:
        times = [_epoch(when) for when in eta]
        if len(times) != count:
            raise ValueError(
                f"push_bulk(): {len(times)} eta values for {count} jobs; "
                "give one per job or one for all"
            )
    # Sidekiq's client: a time that is not in the future means now.
    return [when if when > now else None for when in times]


def _epoch(when: Any) -> float:
    if isinstance(when, datetime):
        aware = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
        return aware.timestamp()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return float(when)
    raise TypeError(f"push_bulk(): eta {when!r} is not a datetime or epoch seconds")


def _routed_queue(app: Celery, name: str, task: Task | None) -> str:
    """The queue apply_async would pick: the task's own ``queue``, ``task_routes``, then
    ``task_default_queue``. Routers see no args: one route serves the whole batch."""
    options: dict[str, Any] = {}
    if task is not None:
        options = {k: v for k, v in task._get_exec_options().items() if v is not None}
    routed = app.amqp.router.route(options, name, (), {}, task)
    queue = routed.get("queue")
    return str(getattr(queue, "name", queue) or app.conf.task_default_queue)


def _job_options(
    registry: Registry, name: str, retry: bool | int | None, overrides: dict[str, Any]
) -> JobOptions:
    # The transport's own registry: class mapping and sidekiq_options come out exactly as
    # for apply_async on the same task.
    options = registry.job_options(name)
    per_job = sorted(set(options.extra) & _PER_JOB_OPTIONS)
    if per_job:
        raise ValueError(
            f"task {name!r} sets {per_job} in sidekiq_options: unique locks are taken per job, "
            "so enqueue it with apply_async, not push_bulk"
        )
    extra = {**options.extra, **{k: v for k, v in overrides.items() if v is not None}}
    return JobOptions(
        klass=options.klass,
        retry=options.retry if retry is None else retry,
        local=options.local,
        extra=extra,
    )


def _payloads(
    batch: list[list[Any]],
    options: JobOptions,
    queue: str,
    at: list[float | None],
    version: int,
    batch_size: int,
    max_bytes: int = 0,
) -> list[tuple[str, bytes, float | None]]:
    """(jid, JSON as UTF-8, due time) for every job, all serialized and checked before any
    write: a job that would fail later (a lone surrogate UTF-8 cannot encode) fails here.

    As sidekiq.rb's ``push_bulk`` does, each batch shares one job built the usual way (so
    one ``created_at``/``enqueued_at``) and each job is a copy with its own args and jid.
    """
    out: list[tuple[str, bytes, float | None]] = []
    for start in range(0, len(batch), batch_size):
        now, later = (
            jobs.build(
                options.klass,
                [],
                queue=queue,
                retry=options.retry,
                version=version,
                scheduled=scheduled,
                extra=options.extra,
            )
            for scheduled in (False, True)
        )
        for index in range(start, min(start + batch_size, len(batch))):
            when = at[index]
            job = dict(now if when is None else later)
            job["args"] = batch[index]
            job["jid"] = jid = jobs.new_jid()
            try:
                payload = checked_payload(job)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"push_bulk(): args_list[{index}] cannot be written as JSON ({exc}); "
                    "Sidekiq jobs carry JSON values only; nothing was written"
                ) from None
            reason = max_bytes and oversize(len(payload), max_bytes)
            if reason:
                raise PayloadTooLarge(
                    f"push_bulk(): args_list[{index}] is {reason}; nothing was written"
                )
            out.append((jid, payload, when))
    return out


def _write(
    client: Client,
    payloads: list[tuple[str, bytes, float | None]],
    queue: str,
    batch_size: int,
) -> None:
    """One ``MULTI``/``EXEC`` per batch: ``SADD queues`` + ``LPUSH`` of the batch (in order,
    so that the consumer's RPOP takes the first job first), and one ``ZADD`` for its
    scheduled jobs.

    The commands are ``Client.push_bulk``'s, but on payloads serialized beforehand: that
    method serializes as it writes, and checking every job before the first write through it
    would serialize each job twice, a third of a bulk push's cost.
    """
    keys = client.keys
    for start in range(0, len(payloads), batch_size):
        now = [p for _, p, when in payloads[start : start + batch_size] if when is None]
        later = {p: when for _, p, when in payloads[start : start + batch_size] if when is not None}
        try:
            with client.redis.pipeline(transaction=True) as tx:
                if now:
                    tx.sadd(keys.queues, queue)
                    tx.lpush(keys.queue(queue), *now)
                if later:
                    tx.zadd(keys.schedule, later)
                tx.execute()
        except redis.RedisError as exc:
            _partly_written(exc, start, len(payloads))
            raise


def _partly_written(exc: Exception, written: int, total: int) -> None:
    """Say on ``exc`` (and in the log) which jobs a failed call wrote: the caller must know
    what to send again, as sending everything again would enqueue the first batches twice."""
    note = (
        f"push_bulk(): args_list[:{written}] ({written} of {total} jobs) were written before "
        f"this error and stay; the batch from args_list[{written}] failed (after an error "
        "reply, its other commands may have run) and no later batch was sent"
    )
    logger.error("%s: %s", note, exc)
    add_note = getattr(exc, "add_note", None)  # Python 3.11+
    if add_note is not None:
        add_note(note)
