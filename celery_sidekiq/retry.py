"""What a failure does to the job a Celery worker runs: Sidekiq's way, or Celery's.

Two kinds of job, two contracts (the README's table has the whole rule):

* **Sidekiq's way**: a job from a Sidekiq producer (Ruby, Rust, a hand-written job, ``send_task``
  to a class with no Python task, ``push_bulk``), or for a task that asks for Sidekiq retries
  (``sidekiq_options={"retry": ...}``, ``@app.task(sidekiq_retry=...)``, ``apply_async(
  sidekiq_retry=...)``): the rules below, as sidekiq.rb's ``JobRetry`` applies them;
* **Celery's way**: a job a Celery producer wrote for a task that asked for nothing of the
  kind (it carries ``"celery": {"failures": "celery"}`` and ``retry: 0``). An exception is a
  FAILURE: Celery stores it, runs errbacks, ``link_error``, chain and chord error handling;
  ``self.retry`` and ``autoretry_for`` are Celery's own (a new message, due when Celery says,
  within ``max_retries``); and the job is in ``dead`` with Sidekiq's failure fields (retry it
  from the Web UI to run it again; ``dead: false`` keeps it out), as its ``retry: 0`` tells a
  Ruby consumer to do too.

``setup(failures=...)`` changes the rule for a whole app: ``"auto"`` (the default, as above),
``"sidekiq"`` (every job Sidekiq's way, and producers write ``retry: true`` jobs), ``"celery"``
(every job Celery's way, Ruby's too, unless its task asks for Sidekiq retries).

Sidekiq's way: when a task raises, the job goes back to Redis the way sidekiq.rb's
``JobRetry`` puts it there, so the Web UI's Retries and Dead tabs (and their "Retry now",
"Kill", "Delete") work on Python failures as on Ruby ones:

* the original job, every key kept, plus ``error_message`` (at most 10,000 characters),
  ``error_class`` (the exception's qualified name: ``ValueError``, ``billing.PaymentDeclined``),
  ``failed_at`` on the first failure and ``retried_at`` on later ones, ``retry_count`` (0 on the
  first failure), ``queue`` = the job's ``retry_queue`` if it has one, and ``error_backtrace``
  when the job asks for ``backtrace`` (true: every line, N: the first N);
* ``ZADD retry`` at now + Sidekiq's backoff for the configured ``sidekiq_version`` (count⁴ + 15 s
  + jitter; see :func:`backoff`) while ``retry_count`` < the job's limit: ``retry: N``, or
  ``setup(max_retries=...)`` (Sidekiq's 25) for ``retry: true``; the poller (ours or Ruby's)
  brings it back when due;
* else the job is exhausted and goes to ``dead``, trimmed as Sidekiq's morgue is (10,000 jobs,
  180 days) — ``retry: 0`` on its first failure — unless it says ``dead: false``;
* ``retry: false``: not retried and not kept, as in Sidekiq (Celery logs the failure);
* ``retry_for: N`` (Sidekiq 7.1+) also ends the retries N seconds after the first failure (8.x:
  only the window counts);
* a task's ``sidekiq_retry_in`` and ``sidekiq_retries_exhausted`` methods (:class:`Hooks`) and
  ``setup(death_handlers=...)`` act as Ruby's blocks and ``config.death_handlers`` do.

Celery's own retries, ``self.retry(countdown=...)`` and ``autoretry_for``, land in the same
``retry`` set with the same fields, due when Celery said. How the two limits combine:

* a failure the task does not handle follows the job's ``retry`` (Sidekiq's rule above);
* a retry the task asks for (``self.retry``, ``autoretry_for``) follows Celery's ``max_retries``:
  while under it, the job waits in ``retry`` for the countdown Celery computed; once over it,
  Celery gives up and so does Sidekiq: the job is exhausted and goes to ``dead`` (unless
  ``dead: false``, or ``retry: false`` which drops it), with no further Sidekiq retries;
* both count the same thing: ``request.retries`` is ``retry_count + 1`` (0 before the first
  failure), so ``self.request.retries`` is the number of failures so far in either scheme, and
  a job Sidekiq retried 5 times has used 5 of Celery's ``max_retries`` too.

In Celery's terms a job that will be retried ends in state ``RETRY`` (no errbacks run); one that
is dead or dropped ends in ``FAILURE``. Exceptions that are Celery's control flow (``Retry``,
``Ignore``, ``Reject``) are not failures. A hard ``time_limit`` (prefork kills the child) is a
failure like any other, recorded by the worker's main process; a child that dies otherwise
(OOM, kill -9) is not a failure: reliable fetch puts its job back in its queue.

The write to ``retry`` or ``dead`` moves the job out of its worker's in-flight hash in the same
atomic step (``fetch.settle``; for ``self.retry`` the transport does it), so Celery's ack that
follows finds nothing left to remove. If Redis refuses the write (or is away), the job is not
acknowledged: the task raises ``Reject(requeue=True)``, and the job goes back to its queue and
runs again. With ``task_acks_late=False`` Celery acknowledges a job before it runs, so a
refused write can only be logged (with the job's JSON), as the job is no longer held.

A job whose class no task here runs is handled before Celery sees it, by :class:`UnknownClass`:
``setup(unknown_class="retry")`` (default) fails it as sidekiq.rb fails a job of a missing class
(retried with backoff, then dead; with ``retry: false`` or ``dead: false`` it still goes to
``dead`` rather than being dropped, so work nobody saw fail is never lost);
``unknown_class="requeue"`` returns it to the back of its queue for another consumer (a Ruby
process that has the class).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import random
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple

from billiard.einfo import ExceptionWithTraceback
from celery import Celery, bootsteps
from celery.exceptions import NotRegistered, Reject, Retry, TaskPredicate, TimeLimitExceeded
from celery.signals import task_received

from kombu_sidekiq import backtrace
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.codec import (
    EXTENSION_KEY,
    RAW_JOB_PROPERTY,
    RETRY_JOB_PROPERTY,
    UNWRAPPERS,
    Registry,
    fails_the_celery_way,
)
from kombu_sidekiq.divert import Divert
from kombu_sidekiq.fetch import Destination, settle
from kombu_sidekiq.job import Job
from kombu_sidekiq.transport import INFLIGHT_PROPERTY, TAG_PROPERTY

from .middleware import Chain, Middleware
from .registry import asks_for_sidekiq_retries
from .unique import release_dead

logger = logging.getLogger(__name__)

#: Sidekiq's ``DEFAULT_MAX_RETRY_ATTEMPTS``: retries of a ``retry: true`` job before it dies
#: (26 executions in all, about 20 days).
DEFAULT_MAX_RETRIES: Final = 25

#: The largest ``retry_count`` written back: a count past it (another writer's) is exhausted
#: anyway, and ``count + 1`` must stay an integer every reader takes (2**53: a JSON double).
MAX_RETRY_COUNT: Final = 2**53 - 1

#: Sidekiq keeps this many characters of the exception message.
MAX_ERROR_MESSAGE: Final = 10_000

#: What ``setup(unknown_class=...)`` accepts.
UNKNOWN_CLASS_MODES: Final = ("retry", "requeue")

#: ``unknown_class="requeue"``: a job this worker already returned to its queue less than this
#: many seconds ago went round the queue without another consumer taking it...
REQUEUE_WINDOW: Final = 60.0

#: ... so it waits this long in ``schedule`` instead of being fetched again at once: a worker
#: alone on a queue spends one fetch per job every few seconds, never a busy loop.
REQUEUE_DELAY: Final = 5.0

#: How many recently requeued jids a worker remembers (oldest forgotten first).
REQUEUE_MEMORY: Final = 10_000

Action = Literal["retry", "dead", "drop"]


# -- Sidekiq's rules, pure ----------------------------------------------------------------------


def backoff(
    count: int,
    version: int,
    rand: Callable[[int], int] = random.randrange,
    base: int | None = None,
) -> int:
    """Seconds until the retry after failure number ``count`` (0-based), with Sidekiq's jitter.

    6.x and 7.x: ``count**4 + 15 + rand(10) * (count + 1)``; 8.x: ``count**4 + 15 +
    rand(10 * (count + 1))``. ``rand(n)`` is a uniform integer in ``[0, n)``. ``base`` replaces
    ``count**4 + 15`` (what a task's ``sidekiq_retry_in`` chose); the jitter stays.

    >>> [backoff(count, 7, rand=lambda n: 0) for count in range(6)]
    [15, 16, 31, 96, 271, 640]
    """
    if base is None:
        base = count**4 + 15
    # A count below 0 comes from a job whose retry_count the UI's "Retry now" took under -1
    # (or a hand-written one): its jitter is the first failure's, not an empty range.
    spread = max(count, 0) + 1
    if version >= 8:
        return base + rand(10 * spread)
    return base + rand(10) * spread


def retry_limit(retry: bool | int, max_retries: int) -> int:
    """How many retries a job's ``retry`` option allows: N for an integer, else the default."""
    if isinstance(retry, bool):
        return max_retries if retry else 0
    return retry


def out_of_retries(job: Job, count: int, limit: int, version: int, now: float) -> bool:
    """Sidekiq's exhaustion rule after failure number ``count``: the count reached ``limit``;
    from 7.1 also (8.1: only) when ``retry_for`` seconds have passed since the first failure.

    >>> out_of_retries({"retry_for": 60, "failed_at": 1000.0}, 0, 25, 7, now=1061.0)
    True
    >>> out_of_retries({"retry_for": 60, "failed_at": 1000.0}, 30, 25, 8, now=1001.0)
    False
    """
    window = job.get("retry_for")
    if version < 7 or isinstance(window, bool) or not isinstance(window, (int, float)):
        return count >= limit
    # Sidekiq's client refuses a longer window; clamped, a huge one cannot overflow the sum.
    window = max(-jobs.RETRY_FOR_MAX, min(window, jobs.RETRY_FOR_MAX))
    first = jobs.to_epoch_seconds(job.get("failed_at"))
    over = first is not None and first + window < now
    return over if version >= 8 else over or count >= limit


def qualified_name(kind: type[BaseException]) -> str:
    """``error_class``: the exception class with its module, bare for builtins (``KeyError``)."""
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def _scrub(text: str) -> str:
    # Redis takes UTF-8; a lone surrogate (from a surrogateescape decode) would fail the write,
    # so it is replaced, as Sidekiq scrubs invalid bytes.
    return text.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class Failure:
    """What a failed job records: ``error_class``, ``error_message``, and the exception."""

    error_class: str
    message: str
    exc: BaseException | None = None

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        try:
            message = str(exc)[:MAX_ERROR_MESSAGE]
        except Exception:  # a __str__ that raises must not lose the job
            message = "!!! ERROR MESSAGE THREW AN ERROR !!!"
        return cls(qualified_name(type(exc)), _scrub(message), exc)

    def backtrace(self, limit: int | None) -> list[str]:
        lines = backtrace.lines_of(self.exc, limit) if self.exc is not None else []
        return [_scrub(line) for line in lines]


def record_failure(job: Job, failure: Failure, queue: str, version: int) -> int:
    """Set Sidekiq's failure fields on ``job`` (``JobRetry#attempt_retry``); return ``retry_count``.

    ``queue`` is the queue the job was read from; a ``retry_queue`` overrides it.
    """
    retry_queue = job.get("retry_queue")
    # A retry_queue that is no queue name (another writer's bug) must not make the job
    # unreadable: it is retried in the queue it came from.
    job["queue"] = retry_queue if isinstance(retry_queue, str) and retry_queue else queue
    job["error_message"] = failure.message
    job["error_class"] = failure.error_class
    now = jobs.now_timestamp(version)
    count = job.get("retry_count")
    if isinstance(count, int) and not isinstance(count, bool):
        # A count past any real one stays writable (JSON integers of 4,300 digits are not).
        count = min(count, MAX_RETRY_COUNT)
        # The UI's "Retry now" decrements it first, so -1 is a valid value here.
        job["retried_at"] = now
        job["retry_count"] = count = count + 1
    else:
        job["failed_at"] = now
        job["retry_count"] = count = 0
    wanted = job.get("backtrace")
    if wanted is True or (isinstance(wanted, int) and not isinstance(wanted, bool)):
        limit = None if wanted is True else int(wanted)
        job["error_backtrace"] = backtrace.compress(failure.backtrace(limit))
    return count


@dataclass(frozen=True)
class Verdict:
    """What happens to a failed job: ``retry`` in ``delay`` seconds, ``dead``, or ``drop``.

    ``died``: the job's retries are over (dead, or discarded by ``dead: false`` or a hook), so
    the death handlers run, as sidekiq.rb runs them after ``retries_exhausted``.
    """

    action: Action
    job: Job
    delay: int = 0
    died: bool = False

    def divert(self) -> Divert:
        """The verdict as a transport intake returns it (a drop is not one)."""
        if self.action == "retry":
            return Divert("retry", jobs.dumps(self.job), time.time() + self.delay)
        if self.action == "dead":
            return Divert("dead", jobs.dumps(self.job))
        raise ValueError("a dropped job goes nowhere")


class InFlight(NamedTuple):
    """Where a delivered job waits until it is settled: its worker's in-flight hash and its
    field there (the message properties ``sidekiq_inflight`` and ``sidekiq_tag``)."""

    key: str
    tag: int


#: ``sidekiq_retry_in(self, count, exc, job)``: seconds until the next retry, ``"kill"``
#: (dead now), ``"discard"`` (dropped now), or ``None`` for Sidekiq's backoff.
RetryIn = Callable[[int, BaseException | None, Job], Any]

#: ``sidekiq_retries_exhausted(self, job, exc)``: called before a job dies; ``"discard"``
#: drops it instead of keeping it in ``dead``.
RetriesExhausted = Callable[[Job, BaseException | None], Any]

#: A death handler, ``handler(job, exc)``: runs once a job's retries are over (sidekiq.rb's
#: ``config.death_handlers``), in the process that ran the job.
DeathHandler = Callable[[Job, BaseException | None], Any]


@dataclass(frozen=True)
class Hooks:
    """A task's answers to Sidekiq's per-class blocks, read from the task (its methods)::

    @app.task(bind=True, sidekiq_retry_in=lambda task, count, exc, job: 10 * (count + 1))
    def sync(self, account_id): ...

    class Sync(app.Task):
        def sidekiq_retry_in(self, count, exc, job):
            return "kill" if isinstance(exc, PermissionError) else None

        def sidekiq_retries_exhausted(self, job, exc):
            notify_owner(job["args"][0])
    """

    retry_in: RetryIn | None = None
    exhausted: RetriesExhausted | None = None

    @classmethod
    def of(cls, task: Any) -> Hooks:
        return cls(
            getattr(task, "sidekiq_retry_in", None),
            getattr(task, "sidekiq_retries_exhausted", None),
        )


NO_HOOKS: Final = Hooks()


class JobRetry:
    """Sidekiq's decision for a failed job, and the Redis write that carries it out.

    >>> retrier = JobRetry(version=7, max_retries=25)
    >>> job = jobs.build("HardJob", [1], retry=0)
    >>> retrier.decide(job, Failure("ValueError", "boom"), "default").action
    'dead'
    """

    def __init__(
        self, version: int = jobs.DEFAULT_SIDEKIQ_VERSION, max_retries: int = DEFAULT_MAX_RETRIES
    ) -> None:
        self.version = version
        self.max_retries = max_retries

    def decide(
        self,
        job: Job,
        failure: Failure,
        queue: str,
        *,
        exhausted: bool = False,
        keep: bool = False,
        hooks: Hooks = NO_HOOKS,
    ) -> Verdict:
        """Record ``failure`` on ``job`` and say where it goes (``JobRetry#attempt_retry``).

        ``exhausted``: no retry whatever the budget (Celery's ``max_retries`` ran out).
        ``keep``: never drop; what ``retry: false`` or ``dead: false`` would drop goes to
        ``dead`` instead (for jobs that never ran, such as an unknown class: dropping them
        would lose work nobody saw fail). ``hooks``: the task's ``sidekiq_retry_in`` and
        ``sidekiq_retries_exhausted``.
        """
        retry = jobs.retry_option(job)
        if retry is False and not keep:
            return Verdict("drop", job)  # not a death: sidekiq.rb re-raises, no handlers
        count = record_failure(job, failure, queue, self.version)
        limit = retry_limit(retry, self.max_retries)
        if not exhausted and not out_of_retries(job, count, limit, self.version, time.time()):
            route = self._delay_for(count, failure, job, hooks)
            if route == "discard":  # death handlers ran for it from Sidekiq 8.0.7
                return self._discard(job, died=self.version >= 8)
            if route != "kill":
                return Verdict("retry", job, int(route))
        return self._retries_exhausted(job, failure, keep, hooks)

    def _delay_for(self, count: int, failure: Failure, job: Job, hooks: Hooks) -> int | str:
        chosen = None
        if hooks.retry_in is not None:
            try:
                chosen = hooks.retry_in(count, failure.exc, dict(job))
            except Exception:  # sidekiq.rb logs it and falls back to its backoff
                logger.exception("sidekiq_retry_in of %s raised; default backoff", job["class"])
        if chosen in ("kill", "discard"):
            return str(chosen)
        if isinstance(chosen, (int, float)) and not isinstance(chosen, bool) and chosen > 0:
            return backoff(count, self.version, base=int(chosen))
        return backoff(count, self.version)

    def _retries_exhausted(self, job: Job, failure: Failure, keep: bool, hooks: Hooks) -> Verdict:
        route = None
        if hooks.exhausted is not None:
            try:
                route = hooks.exhausted(dict(job), failure.exc)
            except Exception:
                logger.exception("sidekiq_retries_exhausted of %s raised", job["class"])
        if keep:
            return Verdict("dead", job, died=True)
        if route == "discard":  # 7.2 to 8.0.6 skipped the death handlers for it
            return self._discard(job, died=self.version >= 8)
        if job.get("dead") is False:
            return self._discard(job, died=True)
        return Verdict("dead", job, died=True)

    def _discard(self, job: Job, *, died: bool) -> Verdict:
        if self.version >= 8:
            job["discarded_at"] = jobs.now_timestamp(self.version)  # what handlers see
        return Verdict("drop", job, died=died)

    def store(self, client: Client, verdict: Verdict, held: InFlight | None = None) -> bool:
        """Write the verdict: ``ZADD retry`` (score = when due), or the morgue (with its trim).

        ``held``: where the job waits in its worker's in-flight hash; the write then takes it
        out of flight in the same atomic step (``fetch.settle``), so it is never in ``retry``
        and in flight at once, nor in neither. False if it was no longer in flight (recovered
        meanwhile, so back in its queue): nothing is stored. If it raises, nothing was written
        and the job is still in flight.
        """
        payload = jobs.dumps(verdict.job)
        if verdict.action not in ("retry", "dead"):
            return True
        if verdict.action == "dead":
            logger.info("Adding dead %s job %s", verdict.job.get("class"), verdict.job.get("jid"))
        due = time.time() + verdict.delay
        if held is not None:
            to: Destination = "retry" if verdict.action == "retry" else "dead"
            queue = str(verdict.job.get("queue") or "")
            return settle(client, held.key, held.tag, queue, to, payload, at=due)
        if verdict.action == "retry":
            client.redis.zadd(client.keys.retry, {payload: due})
        else:
            client.kill(payload)
        return True


def run_death_handlers(handlers: tuple[DeathHandler, ...], job: Job, exc: Any) -> None:
    """Call each handler with the job and the exception; one that raises is logged, and the
    next still runs, as in sidekiq.rb."""
    for handler in handlers:
        try:
            handler(dict(job), exc)
        except Exception:
            logger.exception("death handler %r raised for job %s", handler, job.get("jid"))


# -- unknown classes -----------------------------------------------------------------------------


class UnknownClass:
    """The transport's intake (``kombu_sidekiq.divert``): jobs whose class no task here runs.

    It acts only in a worker (the worker step switches it on), so tools that read queues
    without running jobs never move anything. For each fetched job it returns ``None`` (a task
    runs it: deliver) or where the job goes instead; the transport moves it there atomically.
    """

    def __init__(
        self,
        app: Celery,
        registry: Registry,
        mode: str,
        retrier: JobRetry,
        death_handlers: tuple[DeathHandler, ...] = (),
        failures: str = "auto",
    ) -> None:
        self.app = app
        self.registry = registry
        self.mode = mode
        self.failures = failures
        self.retrier = retrier
        self.death_handlers = death_handlers
        self.active = False
        #: ``count(failed)`` of the worker's stats (the heartbeat sets it): sidekiq.rb counts a
        #: job of a missing class as processed and failed.
        self.count: Callable[[bool], None] | None = None
        self._lock = threading.Lock()
        self._requeued: OrderedDict[str, float] = OrderedDict()

    def __json__(self) -> str:
        # It rides in broker_transport_options, which `celery inspect stats` sends as JSON.
        return f"UnknownClass({self.mode!r})"

    def __call__(self, queue: str, job: Job, raw: str) -> Divert | None:
        if not self.active:
            return None
        klass = self.runner(job)
        if klass is None or self.registry.task_for(klass) in self.app.tasks:
            return None
        if self.mode == "requeue":
            return self.requeue(queue, job, raw)
        if self.failures != "sidekiq" and (self.failures == "celery" or fails_the_celery_way(job)):
            # Celery's way: Celery's consumer stores the FAILURE (NotRegistered) and rejects
            # the message, which puts the job in `dead`.
            return None
        return self.fail(queue, job, klass)

    @staticmethod
    def runner(job: Job) -> str | None:
        """The class whose task runs ``job``: its own, or the one a wrapper (ActiveJob) wraps;
        None for a wrapper that cannot be read (its own task fails it, with the reason)."""
        unwrap = UNWRAPPERS.get(job["class"])
        if unwrap is None:
            return str(job["class"])
        try:
            return unwrap(job).klass
        except Exception:
            return None

    def fail(self, queue: str, job: Job, klass: str) -> Divert:
        """sidekiq.rb's way: a failure (its NameError) that is retried with backoff, then dies."""
        message = (
            f"no task in this Celery app runs class {klass!r}: none is named so or declares "
            f"sidekiq_class={klass!r} (Ruby would say: uninitialized constant {klass})"
        )
        failure = Failure(qualified_name(NotRegistered), message, NotRegistered(message))
        verdict = self.retrier.decide(dict(job), failure, queue, keep=True)
        if self.count is not None:
            self.count(True)
        if verdict.died:
            run_death_handlers(self.death_handlers, verdict.job, failure.exc)
        logger.error(
            "queue %r: no task for class %r (jid %s): %s",
            queue, klass, job.get("jid"),
            f"retry in {verdict.delay}s" if verdict.action == "retry" else verdict.action,
        )  # fmt: skip
        return verdict.divert()

    def requeue(self, queue: str, job: Job, raw: str) -> Divert:
        """Back to the end of its queue for another consumer; parked for a while if it already
        went round once without one taking it."""
        jid = str(job.get("jid") or raw)
        now = time.monotonic()
        with self._lock:
            while self._requeued and (
                len(self._requeued) >= REQUEUE_MEMORY
                or next(iter(self._requeued.values())) < now - REQUEUE_WINDOW
            ):
                self._requeued.popitem(last=False)
            again = jid in self._requeued
            self._requeued[jid] = now
            self._requeued.move_to_end(jid)
        if not again:
            logger.info(
                "queue %r: no task for class %r (jid %s); requeued", queue, job["class"], jid
            )
            return Divert.queue(raw)  # unchanged, byte for byte
        logger.warning(
            "queue %r: no consumer took class %r (jid %s); it waits %.0fs in schedule",
            queue, job["class"], jid, REQUEUE_DELAY,
        )  # fmt: skip
        parked = dict(job)
        parked.pop("enqueued_at", None)  # schedule entries carry none (Sidekiq 7.1.2+)
        return Divert("schedule", jobs.dumps(parked), time.time() + REQUEUE_DELAY)


# -- around each job a worker runs ---------------------------------------------------------------


@dataclass
class _Execution:
    """The Sidekiq job a task is running in this thread."""

    task_id: str
    raw: str
    queue: str
    #: Where the job waits in flight until Celery acknowledges it: its failure is written by
    #: moving it from there (``fetch.settle``), so the job is never lost between the write and
    #: the ack. None for a job acknowledged before it ran (``task_acks_late=False``: the next
    #: fetch may already have given its field to another job) or delivered without the place.
    held: InFlight | None = None
    #: Celery's ``max_retries`` refused a ``self.retry``: the job dies instead of retrying.
    exhausted: bool = False


_current: contextvars.ContextVar[_Execution | None] = contextvars.ContextVar(
    "celery_sidekiq_execution", default=None
)

#: Marks a task whose ``run`` and ``retry`` are already wrapped.
_WRAPPED: Final = "__celery_sidekiq_wrapped__"


class Processor:
    """What runs around each Sidekiq job in a worker of one app: middleware and retries.

    Sidekiq's ``Processor`` does the same: the retry handler outermost, then the server
    middleware, then the job. Installed by wrapping each task's ``run`` and ``retry``
    (instance attributes, as Celery's own ``autoretry_for`` does), which every pool calls in
    the process and thread that executes the task.
    """

    def __init__(
        self,
        app: Celery,
        registry: Registry,
        *,
        version: int = jobs.DEFAULT_SIDEKIQ_VERSION,
        max_retries: int = DEFAULT_MAX_RETRIES,
        unknown_class: str = "retry",
        middleware: tuple[Middleware, ...] = (),
        death_handlers: tuple[DeathHandler, ...] = (),
        failures: str = "auto",
    ) -> None:
        self.app = app
        self.chain = Chain(middleware)
        self.retrier = JobRetry(version, max_retries)
        self.death_handlers = death_handlers
        self.failures = failures
        self.unknown = UnknownClass(
            app, registry, unknown_class, self.retrier, death_handlers, failures
        )

    def celery_way(self, task: Any, job: Job) -> bool:
        """Whether ``job``, run by ``task``, fails Celery's way (see the module docstring)."""
        if self.failures == "sidekiq" or (task is not None and asks_for_sidekiq_retries(task)):
            return False
        return self.failures == "celery" or fails_the_celery_way(job)

    def install(self) -> None:
        """Wrap every task of the app (idempotent; run again for tasks registered later)."""
        for task in list(self.app.tasks.values()):
            self.wrap(task)

    def wrap(self, task: Any) -> None:
        if getattr(task.run, _WRAPPED, False):
            return
        run, retry = task.run, task.retry

        # The wrappers look up the app's processor on each call, so a second setup() of the
        # app (new middleware, new options) applies to tasks wrapped by the first.
        @functools.wraps(run)
        def run_job(*args: Any, **kwargs: Any) -> Any:
            execution = _execution_of(task.request, acks_late=bool(task.acks_late))
            if execution is None:  # called directly or eagerly: no job, nothing to add
                return run(*args, **kwargs)
            token = _current.set(execution)
            try:
                return _processor(task, self).process(task, execution, lambda: run(*args, **kwargs))
            finally:
                _current.reset(token)

        @functools.wraps(retry)
        def retry_job(*args: Any, **kwargs: Any) -> Any:
            execution = _current.get()
            if execution is None or execution.task_id != task.request.id:
                return retry(*args, **kwargs)
            return _processor(task, self).retry(task, execution, retry, *args, **kwargs)

        setattr(run_job, _WRAPPED, True)
        task.run, task.retry = run_job, retry_job

    def process(self, task: Any, execution: _Execution, final: Callable[[], Any]) -> Any:
        """Run the middleware around the task; on failure, store the job where Sidekiq would."""
        try:
            if not self.chain:
                return final()
            return self.chain.invoke(jobs.parse(execution.raw), final)
        except Reject as exc:
            if getattr(exc, "requeue", False) and execution.held is not None:
                self._requeue(task, execution, execution.held)
            raise  # Celery rejects the message: a no-op once the job is back in its queue
        except TaskPredicate:
            raise  # Retry (self.retry stored it already), Ignore, Reject: not failures
        except Exception as exc:
            failure = Failure.of(exc)
            job = jobs.parse(execution.raw)
            # Celery's way: the failure is final (Celery stores FAILURE and runs the errbacks
            # once this re-raises), so the job dies now; Sidekiq's way: its `retry` decides.
            verdict = self.retrier.decide(
                job,
                failure,
                execution.queue,
                exhausted=execution.exhausted or self.celery_way(task, job),
                hooks=Hooks.of(task),
            )
            self._store(task.app, verdict, failure, execution.held)  # Reject if refused
            if verdict.action == "retry":
                # Celery then records state RETRY and runs no errbacks: the job is not done.
                raise Retry(exc=exc, when=verdict.delay) from exc
            raise

    def _requeue(self, task: Any, execution: _Execution, held: InFlight) -> None:
        """``Reject(requeue=True)`` from a task whose job fails Celery's way: the job goes back
        to its queue (behind the waiting jobs, where kombu's requeue puts a message) marked
        ``redelivered``, which its next run sees in ``request.delivery_info``, as on Celery's
        own transports. A Sidekiq job goes back unchanged (Celery's reject does that)."""
        job = jobs.parse(execution.raw)
        if not self.celery_way(task, job):
            return
        ext = job.get(EXTENSION_KEY)
        job[EXTENSION_KEY] = {**(ext if isinstance(ext, dict) else {}), "redelivered": True}
        try:
            with task.app.pool.acquire(block=True) as connection:
                client = connection.default_channel.sidekiq
                settle(client, held.key, held.tag, execution.queue, "tail", jobs.dumps(job))
        except Exception as exc:  # still in flight: Celery's reject requeues it unmarked
            logger.warning("could not requeue job %s marked redelivered: %s", job.get("jid"), exc)

    def retry(
        self, task: Any, execution: _Execution, retry: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """``self.retry``: Celery's own, with the job to store riding along.

        Celery checks ``max_retries``, computes the ETA and republishes the task; the transport
        sees the job in the message properties and writes it, with its failure fields, to
        ``retry`` at that ETA instead of writing a new job to ``schedule``.
        """
        job = jobs.parse(execution.raw)
        if self.celery_way(task, job):
            # Celery's own retry: a new message (a job in `schedule`, or in its queue), due
            # when Celery says; the job that ran is acknowledged once the task returns. Over
            # max_retries, Celery raises and the failure is final (process, above).
            return retry(*args, **kwargs)
        options = _retry_arguments(args, kwargs)
        exc = options["exc"] if options["exc"] is not None else sys.exc_info()[1]
        if not isinstance(exc, BaseException):
            when = options["eta"] or options["countdown"]
            exc = Retry(exc, when=task.default_retry_delay if when is None else when)
        record_failure(job, Failure.of(exc), execution.queue, self.retrier.version)
        if kwargs.get("queue"):  # self.retry(queue=...) moves the job, as Celery would
            job["queue"] = kwargs["queue"]
        kwargs[RETRY_JOB_PROPERTY] = jobs.dumps(job)
        held = execution.held
        if held is not None:  # the transport moves the job from flight into retry, one step
            kwargs[INFLIGHT_PROPERTY], kwargs[TAG_PROPERTY] = held.key, held.tag
        try:
            return retry(*args, **kwargs)
        except Reject as exc:
            if held is None or getattr(exc, "requeue", False):  # celery has no type hints
                raise
            # Task.retry turns a failed republish into Reject(requeue=False), which the
            # transport answers by burying the job in dead. The move into retry did not
            # happen, so the job is still in flight: back to its queue instead, to run again.
            # (Had it happened with its reply lost, the requeue finds nothing left in flight.)
            raise Reject(getattr(exc, "reason", exc), requeue=True) from exc
        except TaskPredicate:
            raise  # Retry: the normal way out
        except Exception:
            execution.exhausted = True  # over max_retries: Celery re-raises, the job dies
            raise

    def watch(self, request: Any) -> None:
        """Make a hard time limit a failure of the job, as any failure is.

        prefork kills the child that overran ``time_limit``, so the task never sees it; the main
        process learns it through the request's ``on_failure`` (a ``TimeLimitExceeded``) and
        ``on_timeout``, billiard calling them in that order, and Celery acknowledges the job in
        the first. So whichever comes first stores it in ``retry`` (or ``dead``), before that
        ack: it is not lost with the child, nor acknowledged if the write was refused. The
        wrappers hold the request weakly: no reference cycle per job.
        """
        ref = weakref.ref(request)
        own = vars(request)
        previous_timeout, previous_failure = own.get("on_timeout"), own.get("on_failure")
        stored = False

        def hard_limit(req: Any, timeout: float) -> None:
            nonlocal stored
            if not stored:
                stored = True
                self.timed_out(req, timeout)

        def on_failure(exc_info: Any, *args: Any, **kwargs: Any) -> Any:
            req = ref()
            if req is None:
                return None
            exc = getattr(exc_info, "exception", None)
            if isinstance(exc, ExceptionWithTraceback):  # how the pool hands it over
                exc = exc.exc
            # Only the hard limit: SoftTimeLimitExceeded is raised in the task, which stores it.
            if isinstance(exc, TimeLimitExceeded):
                hard_limit(req, exc.args[0] if exc.args else 0)
            if previous_failure is not None:
                return previous_failure(exc_info, *args, **kwargs)
            return type(req).on_failure(req, exc_info, *args, **kwargs)

        def on_timeout(soft: bool, timeout: float) -> Any:
            req = ref()
            if req is None:
                return None
            if not soft:
                hard_limit(req, timeout)
            if previous_timeout is not None:
                return previous_timeout(soft, timeout)
            return type(req).on_timeout(req, soft, timeout)

        request.on_failure, request.on_timeout = on_failure, on_timeout

    def timed_out(self, request: Any, timeout: float) -> None:
        message = getattr(request, "message", None)
        task = getattr(request, "task", None)
        execution = _execution_of(
            request,
            getattr(message, "properties", None),
            acks_late=bool(getattr(task, "acks_late", False)),
        )
        if execution is None:
            return
        exc = TimeLimitExceeded(timeout)
        failure = Failure(qualified_name(TimeLimitExceeded), f"TimeLimitExceeded({timeout})", exc)
        hooks = NO_HOOKS if task is None else Hooks.of(task)
        job = jobs.parse(execution.raw)
        verdict = self.retrier.decide(
            job, failure, execution.queue, exhausted=self.celery_way(task, job), hooks=hooks
        )
        try:
            self._store(self.app, verdict, failure, execution.held)
        except Reject:
            # Celery acknowledges the job once this returns. Rejected first (with requeue:
            # back to its queue), it is not lost with the failed write, and that ack is a no-op.
            request.reject(requeue=True)

    def _store(
        self, app: Celery, verdict: Verdict, failure: Failure, held: InFlight | None
    ) -> None:
        """Carry out the verdict; the job's end (unique lock freed, death handlers) follows
        only once it is stored: a job that goes back to its queue is not over."""
        if verdict.action != "drop" and not self._write(app, verdict, held):
            return
        if verdict.action != "retry":
            release_dead(app, verdict.job)
        if verdict.died:
            run_death_handlers(self.death_handlers, verdict.job, failure.exc)

    def _write(self, app: Celery, verdict: Verdict, held: InFlight | None) -> bool:
        """Store the failed job; False if it had left flight already (nothing stored).

        Raises Reject(requeue=True) if Redis refused the move (or is away): the job is still in
        flight, and acknowledging it would lose it; Celery rejects it instead, and the transport
        returns it to its queue.
        """
        try:
            with app.pool.acquire(block=True) as connection:
                stored = self.retrier.store(connection.default_channel.sidekiq, verdict, held)
        except Exception as exc:
            if held is not None:
                logger.error(
                    "could not store failed job %s in %r (%s); not acknowledged: it goes back "
                    "to its queue",
                    verdict.job.get("jid"), verdict.action, exc,
                )  # fmt: skip
                raise Reject(exc, requeue=True) from exc
            # Acknowledged already (it ran with task_acks_late=False): the log is all that is left.
            logger.exception(
                "could not store failed job %s in %r; its JSON: %s",
                verdict.job.get("jid"),
                verdict.action,
                jobs.dumps(verdict.job),
            )
            return True
        if not stored:
            logger.warning(
                "failed job %s had left flight (this worker's lease expired and a recovery "
                "returned it to its queue): not stored in %r, it runs again from there",
                verdict.job.get("jid"), verdict.action,
            )  # fmt: skip
        return stored


_RETRY_PARAMETERS: Final = ("args", "kwargs", "exc", "throw", "eta", "countdown", "max_retries")


def _retry_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The named parameters of a ``Task.retry`` call, however they were passed."""
    named = dict.fromkeys(_RETRY_PARAMETERS)
    named.update(zip(_RETRY_PARAMETERS, args, strict=False))
    named.update({key: kwargs[key] for key in _RETRY_PARAMETERS if key in kwargs})
    return named


def _execution_of(
    request: Any, properties: dict[str, Any] | None = None, *, acks_late: bool
) -> _Execution | None:
    """The job of a task request (the request context in the pool, or a worker ``Request``
    whose message ``properties`` are given), or None for a task that came without one.

    ``acks_late``: the task's; only then is the job still in flight when it fails.
    """
    if properties is None:
        properties = getattr(request, "properties", None) or {}
    raw = properties.get(RAW_JOB_PROPERTY)
    if not isinstance(raw, str):
        return None
    delivery = getattr(request, "delivery_info", None) or {}
    queue = delivery.get("routing_key") or ""
    key, tag = properties.get(INFLIGHT_PROPERTY), properties.get(TAG_PROPERTY)
    held = None
    if acks_late and isinstance(key, str) and isinstance(tag, int) and not isinstance(tag, bool):
        held = InFlight(key, tag)
    return _Execution(task_id=str(request.id), raw=raw, queue=queue, held=held)


def _processor(task: Any, default: Processor) -> Processor:
    processor = getattr(task.app, _PROCESSOR_ATTR, None)
    return processor if isinstance(processor, Processor) else default


def processor_of(app: Celery) -> Processor:
    """The :class:`Processor` ``setup`` attached to ``app``."""
    processor = getattr(app, _PROCESSOR_ATTR, None)
    if not isinstance(processor, Processor):
        raise RuntimeError("celery_sidekiq.setup(app) was not called for this app")
    return processor


_PROCESSOR_ATTR: Final = "_celery_sidekiq_processor"


def attach(app: Celery, processor: Processor) -> None:
    """Attach ``processor`` to ``app``: every task gets wrapped once the app has its tasks."""
    setattr(app, _PROCESSOR_ATTR, processor)

    def finalized(sender: Any = None, **kwargs: Any) -> None:
        processor.install()

    app.on_after_finalize.connect(finalized, weak=False)
    if app.finalized:
        processor.install()


class JobsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """In a worker: wrap tasks registered after the app was finalized, turn on the
    unknown-class check for the jobs this worker's consumer reads, and watch hard time limits."""

    label = "sidekiq jobs"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.app = worker.app
        self.processor = processor_of(worker.app)
        self.processor.install()
        self.processor.unknown.active = True

    def start(self, worker: Any) -> None:
        task_received.connect(self._received, weak=False)

    def stop(self, worker: Any) -> None:
        task_received.disconnect(self._received)

    shutdown = stop

    def _received(self, sender: Any = None, request: Any = None, **kwargs: Any) -> None:
        # Sent by every consumer in this process: watch only our app's requests.
        if request is not None and getattr(sender, "app", None) is self.app:
            self.processor.watch(request)
