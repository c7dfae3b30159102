"""Rails ActiveJob from Celery: run the jobs Rails enqueues, enqueue jobs Rails runs.

Running: a task named like the ActiveJob class (or declaring it as ``sidekiq_class``) runs the
jobs that ``perform_later`` writes through Rails' Sidekiq adapter, with the arguments decoded
(see :mod:`kombu_sidekiq.activejob` for the value types)::

    @app.task(name="InvoiceJob")                # InvoiceJob.perform_later(42, notify: true)
    def invoice(invoice_id, notify=False): ...

    @app.task(bind=True, name="billing.remind", sidekiq_class="ReminderJob")
    def remind(self, user, when):               # ReminderJob.perform_later(user, 2.days.from_now)
        user.model_id, when                     # GlobalID("gid://shop/User/42"), aware datetime
        meta = activejob.metadata(self.request) # job_id, executions, locale, enqueued_at...

A job whose arguments cannot be decoded (an app's custom serializer) runs as its wrapper class,
whose task fails with :class:`ActiveJobDecodeError`: retried, and dead when out of retries.

Enqueueing, as ``InvoiceJob.set(queue: "mailers", wait: 5.minutes).perform_later(42)`` does::

    activejob.perform_later(app, "InvoiceJob", 42, notify=True)
    activejob.Job(app, "InvoiceJob", queue="mailers", wait=300).perform_later(42)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, NoReturn

from celery import Celery

from kombu_sidekiq.activejob import (
    DEFAULT_RAILS_VERSION,
    METADATA_HEADER,
    WRAPPER_CLASSES,
    ActiveJobDecodeError,
    ActiveJobEncodeError,
    Duration,
    GlobalID,
    Metadata,
    Range,
    Symbol,
    parse_rails_version,
    unwrap,
    wrap,
)
from kombu_sidekiq.client import Client
from kombu_sidekiq.codec import UNWRAP_ERROR_HEADER

__all__ = [
    "DEFAULT_RAILS_VERSION",
    "ActiveJobDecodeError",
    "ActiveJobEncodeError",
    "Duration",
    "Enqueued",
    "GlobalID",
    "Job",
    "Metadata",
    "Range",
    "Symbol",
    "metadata",
    "perform_later",
    "register_wrapper_tasks",
]


def metadata(request: Any) -> Metadata | None:
    """The ActiveJob metadata of the job a task runs (``self.request`` of a bound task).

    None when the task was not run from an ActiveJob job.

    >>> @app.task(bind=True, name="InvoiceJob")        # doctest: +SKIP
    ... def invoice(self, invoice_id):
    ...     meta = activejob.metadata(self.request)
    ...     meta.job_id, meta.executions, meta.locale, meta.enqueued_at
    """
    data = getattr(request, METADATA_HEADER, None)
    return Metadata.from_job_data(data) if isinstance(data, dict) else None


class Enqueued(NamedTuple):
    """What ``perform_later`` wrote: ActiveJob's ``job_id`` and Sidekiq's ``jid`` (which Rails
    calls ``provider_job_id``)."""

    job_id: str
    jid: str


@dataclass(frozen=True)
class Job:
    """An ActiveJob class of the Rails app, with the options of ActiveJob's ``set``.

    ``rails_version`` is the Rails the Ruby side runs: from "7.1" on, jobs carry
    ``scheduled_at`` and nanosecond timestamps, and Decimal and Range arguments can be sent
    (older Rails have no serializer for them). The default, "6.1", writes what every Rails from
    6.1 to 8.x reads. ``locale`` and ``timezone`` left at None let the Rails app's defaults
    apply (``I18n.locale``, ``Time.zone``). The wrapper class and the timestamp format follow
    ``setup(app, sidekiq_version=...)``.

    >>> invoices = Job(app, "InvoiceJob", queue="mailers", rails_version="7.1")  # doctest: +SKIP
    >>> invoices.perform_later(42, Decimal("9.99"), notify=True)                  # doctest: +SKIP
    Enqueued(job_id='0b6c…', jid='5f0e…')
    """

    app: Celery
    job_class: str
    queue: str = "default"
    wait: float | timedelta | None = None
    wait_until: datetime | float | None = None
    priority: int | None = None
    retry: bool | int = True
    rails_version: str = DEFAULT_RAILS_VERSION
    locale: str | None = "en"
    timezone: str | None = None

    def __post_init__(self) -> None:
        for name in ("job_class", "queue"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"activejob.Job({name}={value!r}): give a non-empty string")
        if self.wait is not None and self.wait_until is not None:
            raise ValueError("activejob.Job: give wait or wait_until, not both")
        if isinstance(self.wait_until, datetime) and self.wait_until.utcoffset() is None:
            raise ValueError(
                f"activejob.Job(wait_until={self.wait_until!r}) is naive: attach a tzinfo"
            )
        if self.priority is not None and (
            isinstance(self.priority, bool) or not isinstance(self.priority, int)
        ):
            raise ValueError(f"activejob.Job(priority={self.priority!r}): give an integer")
        if not (self.retry is True or self.retry is False or _count(self.retry)):
            raise ValueError(
                f"activejob.Job(retry={self.retry!r}): give true, false or a count >= 0"
            )
        parse_rails_version(self.rails_version)

    def due_at(self) -> float | None:
        """When the job is due, in epoch seconds; None to run it as soon as possible."""
        if isinstance(self.wait, timedelta):
            return time.time() + self.wait.total_seconds()
        if self.wait is not None:
            return time.time() + float(self.wait)
        if isinstance(self.wait_until, datetime):
            return self.wait_until.timestamp()
        return None if self.wait_until is None else float(self.wait_until)

    def perform_later(self, /, *args: Any, **kwargs: Any) -> Enqueued:
        """Enqueue ``job_class.perform_later(*args, **kwargs)`` for Rails; kwargs become Ruby
        keyword arguments. Values that ActiveJob cannot carry raise
        :class:`ActiveJobEncodeError` and nothing is written."""
        at = self.due_at()
        if at is not None and at <= time.time():
            at = None  # due already: straight to the queue, as Sidekiq's perform_at does
        with _client(self.app) as client:
            job = wrap(
                self.job_class,
                args,
                kwargs,
                queue=self.queue,
                priority=self.priority,
                locale=self.locale,
                timezone=self.timezone,
                at=at,
                retry=self.retry,
                sidekiq_version=client.version,
                rails_version=self.rails_version,
            )
            jid = client.push(job) if at is None else client.schedule(job, at)
        return Enqueued(job["args"][0]["job_id"], jid)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def perform_later(
    app: Celery,
    job_class: str,
    /,
    *args: Any,
    queue: str = "default",
    wait: float | timedelta | None = None,
    wait_until: datetime | float | None = None,
    priority: int | None = None,
    **kwargs: Any,
) -> Enqueued:
    """Enqueue an ActiveJob job that Rails runs, as ``job_class.perform_later`` would.

    ``wait`` (seconds or timedelta) or ``wait_until`` (aware datetime or epoch seconds) schedule
    it. Other keyword arguments become the job's Ruby keyword arguments; one named like an
    option here goes through :class:`Job` instead, which also takes ``rails_version``,
    ``retry``, ``locale`` and ``timezone``.

    >>> perform_later(app, "InvoiceJob", 42, notify=True, queue="mailers")  # doctest: +SKIP
    Enqueued(job_id='0b6c…', jid='5f0e…')
    """
    job = Job(app, job_class, queue=queue, wait=wait, wait_until=wait_until, priority=priority)
    return job.perform_later(*args, **kwargs)


@contextmanager
def _client(app: Celery) -> Iterator[Client]:
    # A connection of the app's producer pool: the broker URL, TLS, credentials and namespace
    # are Celery's, and the sidekiq channel holds a Client on that connection's Redis pool.
    with app.pool.acquire(block=True) as connection:
        client = getattr(connection.default_channel, "sidekiq", None)
        if not isinstance(client, Client):
            raise ValueError(
                "activejob.perform_later writes Sidekiq jobs: the app's broker must be "
                f"sidekiq:// or sidekiqs://, not {connection.transport_cls!r}"
            )
        yield client


def register_wrapper_tasks(app: Celery) -> None:
    """Give ``app`` a task for each ActiveJob wrapper class (``setup`` calls this).

    They run only the wrapper jobs that could not be unwrapped, and fail them with the reason,
    as Ruby's ``JobWrapper#perform`` fails on arguments it cannot deserialize.
    """
    for klass in WRAPPER_CLASSES:
        app.task(name=klass, bind=True, shared=False)(_fail_undecodable)


def _fail_undecodable(task: Any, *args: Any, **kwargs: Any) -> NoReturn:
    """Raise why this ActiveJob job could not be decoded; it then fails like any failing job."""
    reason = getattr(task.request, UNWRAP_ERROR_HEADER, None)
    if not reason:
        try:
            unwrap({"class": task.name, "args": list(args), "jid": task.request.id})
        except ActiveJobDecodeError as exc:
            reason = str(exc)
        else:
            reason = f"{task.name} job received without being unwrapped"
    raise ActiveJobDecodeError(reason)
