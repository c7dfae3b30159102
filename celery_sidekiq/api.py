"""The Python counterpart of ``Sidekiq::API``: look at and act on queues, sets and processes.

It reads what sidekiq.rb 6.4 to 8.x and rusty-sidekiq write (float-second and integer-millisecond
timestamps, ``<identity>:workers`` and ``<identity>:work``, rusty-sidekiq's nulls) and writes what
they read. Every class takes a *source*: a Celery app (its broker, and the namespace and Sidekiq
version given to :func:`celery_sidekiq.setup`), a plain ``redis.Redis`` with optional
:class:`~kombu_sidekiq.keys.Keys`, or a :class:`~kombu_sidekiq.client.Client`::

    from celery_sidekiq.api import DeadSet, ProcessSet, Queue, RetrySet, Stats

    stats = Stats(app)
    stats.processed, stats.failed, stats.enqueued, stats.retry_size
    stats.queues                                   # {"default": 12, "mailers": 3}, largest first
    Stats(redis.Redis(), keys=Keys("myapp")).dead_size               # no Celery app needed

    for job in Queue(app, "mailers"):              # a JobRecord per job, newest first
        if job.klass == "UserMailer" and job.args[:1] == [42]:
            job.delete()

    RetrySet(app).find_job("c65c0a3b81d5e7e3c5a748cf").retry()      # back to its queue now
    DeadSet(app).retry_all()
    for process in ProcessSet(app):
        print(process.identity, process.busy, process.concurrency)
        process.quiet()                            # the Web UI's "Quiet" button

Lists and sets are live data: other processes change them while you read. Single-job actions
move exactly the member that was read (a Lua script removes it and writes it elsewhere in one
step), so an action on a job that somebody else took meanwhile returns ``False`` and loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any, Final, TypeAlias, cast

import redis
from celery import Celery
from redis.client import NEVER_DECODE

from kombu_sidekiq import backtrace, scripts
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import (
    DEAD_MAX_JOBS,
    DEAD_TIMEOUT,
    Client,
    checked_payload,
    promote_reply,
)
from kombu_sidekiq.job import InvalidJob, Job
from kombu_sidekiq.keys import Keys
from kombu_sidekiq.transport import Transport

from .app import config_of

__all__ = [
    "DeadSet",
    "History",
    "JobRecord",
    "JobSet",
    "Process",
    "ProcessSet",
    "Queue",
    "RetrySet",
    "ScheduledSet",
    "SortedEntry",
    "Source",
    "Stats",
    "Work",
    "WorkSet",
    "Workers",
    "client_of",
    "requeued",
]

logger = logging.getLogger(__name__)

Source: TypeAlias = "Celery | redis.Redis | Client"
"""Where the API finds Redis: a Celery app, a ``redis.Redis``, or a ``kombu_sidekiq`` Client."""

Progress: TypeAlias = Callable[[int], None]
"""Called by bulk actions with how many more jobs they went through."""

#: How many entries one read of a list or set fetches, as Sidekiq's API pages them.
PAGE_SIZE: Final = 50

#: How many jobs one round trip of a bulk action (retry_all, kill_all) moves.
BULK_BATCH: Final = 100

#: Sidekiq's ``STATS_TTL`` horizon: day counters live five years, so history stops there.
HISTORY_MAX_DAYS: Final = 5 * 365

#: ActiveJob's envelope classes: Rails' adapter (Sidekiq 6.x-7.x) and Sidekiq 8's own.
ACTIVE_JOB_WRAPPERS: Final = frozenset(
    {"ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "Sidekiq::ActiveJob::Wrapper"}
)

#: ActionMailer's jobs, which the Web UI shows as ``Mailer#method``.
_MAILER_JOBS: Final = frozenset({"ActionMailer::DeliveryJob", "ActionMailer::MailDeliveryJob"})

#: The Web UI's signals to a process (``<identity>-signals``).
QUIET_SIGNAL: Final = "TSTP"
STOP_SIGNAL: Final = "TERM"
DUMP_SIGNAL: Final = "TTIN"

_APP_CLIENT_ATTR = "_celery_sidekiq_api_client"


# -- sources ---------------------------------------------------------------------------------


def client_of(source: Source, keys: Keys | None = None) -> Client:
    """The :class:`~kombu_sidekiq.client.Client` the API talks through, from any source.

    A Celery app connects through its broker URL (``sidekiq://`` or ``sidekiqs://``, with the
    app's TLS and transport options) and takes the namespace and Sidekiq version from
    ``setup()``; the client is made once per app and kept on it.
    """
    if isinstance(source, Client):
        return source if keys is None else Client(source.redis, keys, source.version)
    if isinstance(source, redis.Redis):
        return Client(source, keys or Keys())
    if isinstance(source, Celery):
        if keys is not None:
            raise TypeError(
                "keys= is for a plain redis client; an app's namespace comes from "
                "celery_sidekiq.setup(app, namespace=...)"
            )
        return _app_client(source)
    raise TypeError(
        "expected a Celery app, a redis.Redis or a kombu_sidekiq Client, "
        f"not {type(source).__name__}"
    )


def _app_client(app: Celery) -> Client:
    cached = getattr(app, _APP_CLIENT_ATTR, None)
    if isinstance(cached, Client):
        return cached
    config = config_of(app)
    connection = app.connection_for_write()
    try:
        if not isinstance(connection.transport, Transport):
            raise ValueError(
                f"celery_sidekiq.api needs the app's broker to be sidekiq:// or sidekiqs://, "
                f"not {connection.as_uri()!r}"
            )
        connection.ensure_connection(max_retries=1)
        redis_client = connection.default_channel.sidekiq.redis
    finally:
        # The redis client keeps its own connection pool, which reconnects on demand; the
        # kombu connection (and its BRPOP machinery) is not needed beyond this point.
        connection.release()
    client = Client(redis_client, Keys(config.namespace), config.sidekiq_version)
    setattr(app, _APP_CLIENT_ATTR, client)
    return client


# -- small readers -------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _epoch_seconds(value: Any) -> float | None:
    # An integer stamp is milliseconds, divided into seconds: an integer past a double's range
    # (10**400, from a broken writer) overflows the division and reads as no time at all.
    try:
        return jobs.to_epoch_seconds(value)
    except OverflowError:
        return None


def _time(value: Any) -> datetime | None:
    """A job timestamp as an aware UTC datetime (Sidekiq 8's rule: float = s, integer = ms)."""
    return _from_epoch(_epoch_seconds(value))


def _from_epoch(seconds: float | None) -> datetime | None:
    if seconds is None:
        return None
    try:
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):  # absurd values from a broken writer
        return None


def _seconds_since(value: Any, now: float | None = None) -> float:
    seconds = _epoch_seconds(value)
    if seconds is None:
        return 0.0
    return (time.time() if now is None else now) - seconds


def _number(value: Any, kind: Callable[[Any], Any] = int, default: Any = 0) -> Any:
    """``to_i``/``to_f`` of a Redis reply: garbage and nil read as ``default``."""
    if value is None:
        return default
    try:
        return kind(_text(value))
    except ValueError:
        try:
            return kind(float(_text(value)))
        except (ValueError, OverflowError):  # "nan"; "1e400" is an inf no int holds
            return default


def _raw(target: Any, *command: Any, **options: Any) -> Any:
    """Send ``command`` on ``target`` (a ``redis.Redis`` or a pipeline) and keep every string
    of its reply as bytes, whatever the client's ``decode_responses``: one member that is not
    UTF-8 would otherwise make redis-py raise while decoding the whole reply, hiding every
    other job of the page."""
    execute: Any = target.execute_command  # untyped in redis-py
    return execute(*command, **options, **{NEVER_DECODE: True})


def _decodes(client: Client) -> bool:
    return bool(client.redis.connection_pool.connection_kwargs.get("decode_responses"))


def _salvaged(value: str | bytes) -> Job:
    """What can safely be shown of a payload that is not a job: its top-level strings,
    numbers, booleans and nulls (jid, class, queue, the error fields), those that JSON and
    UTF-8 can carry; ``{}`` if it is not even a JSON object. Nothing nested is kept, so no
    reader walks a structure deeper than a job may be."""
    try:
        loaded = json.loads(value)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {key: item for key, item in loaded.items() if _shown(key) and _shown(item)}


def _shown(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)  # json.loads reads NaN and 1e400; JSON has neither
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # a lone surrogate escape reads, but cannot be written
        except UnicodeEncodeError:
            return False
        return True
    return False


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


# -- jobs ------------------------------------------------------------------------------------


class JobRecord:
    """A job in a queue, as ``Sidekiq::JobRecord``: its JSON read, nothing resolved.

    ``item`` is the parsed JSON object and ``value`` the exact string stored in Redis. A payload
    that is not a job (whatever :func:`kombu_sidekiq.job.parse` refuses: not JSON, not UTF-8, not
    an object, a key of the wrong type, a lone surrogate, nesting or numbers out of range) sets
    ``invalid`` and ``reason``, has the raw text as its only arg, and keeps in ``item`` only its
    top-level scalars (so its jid, class and errors still show); it can still be listed, found,
    killed and deleted. Reading a record never raises::

        job = Queue(app).find_job(jid)
        job.klass, job.args, job.enqueued_at, job.latency
        job["tags"], job.get("bid")        # any key of the payload
        job.delete()
    """

    def __init__(self, client: Client, value: str | bytes, queue: str | None = None) -> None:
        self._client = client
        if isinstance(value, bytes) and _decodes(client):
            # Read raw (see _raw); given back as the client would have given it, when it can.
            with contextlib.suppress(UnicodeDecodeError):
                value = value.decode("utf-8")
        self.value = value
        #: Why the payload is not a job, if it is not one.
        self.reason: str | None = None
        self._args: list[Any] | None = None
        try:
            item = jobs.parse(value)
        except InvalidJob as exc:
            # Sidekiq's rule: show the unreadable payload as the job's only arg.
            self.reason = exc.reason
            self._args = [_text(value)]
            item = _salvaged(value)
        self.invalid = self.reason is not None
        self.item: Job = item
        named = item.get("queue")
        self.queue: str | None = queue or (named if isinstance(named, str) else None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.jid} {self.klass} queue={self.queue}>"

    def __getitem__(self, key: str) -> Any:
        return self.item.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self.item.get(key, default)

    @property
    def klass(self) -> str | None:
        """The class Sidekiq runs (for ActiveJob, the wrapper; see :attr:`display_class`)."""
        klass = self.item.get("class")
        return klass if isinstance(klass, str) else None

    @property
    def args(self) -> list[Any]:
        """The job's args; rusty-sidekiq's ``null`` reads as ``[]``."""
        if self._args is not None:
            return self._args
        args = self.item.get("args")
        if args is None:
            return []
        return args if isinstance(args, list) else [args]

    @property
    def jid(self) -> str | None:
        jid = self.item.get("jid")
        return jid if isinstance(jid, str) else None

    @property
    def bid(self) -> str | None:
        """Sidekiq Pro's batch id, if any."""
        return _optional_text(self.item.get("bid"))

    @property
    def created_at(self) -> datetime:
        """When the job was first pushed (``enqueued_at``, then the epoch, if unknown)."""
        moment = _time(self.item.get("created_at")) or _time(self.item.get("enqueued_at"))
        return moment or datetime.fromtimestamp(0, timezone.utc)

    @property
    def enqueued_at(self) -> datetime | None:
        return _time(self.item.get("enqueued_at"))

    @property
    def failed_at(self) -> datetime | None:
        return _time(self.item.get("failed_at"))

    @property
    def retried_at(self) -> datetime | None:
        return _time(self.item.get("retried_at"))

    @property
    def retry_count(self) -> int | None:
        count = self.item.get("retry_count")
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    @property
    def error_class(self) -> str | None:
        return _optional_text(self.item.get("error_class"))

    @property
    def error_message(self) -> str | None:
        return _optional_text(self.item.get("error_message"))

    @property
    def error_backtrace(self) -> list[str] | None:
        """The backtrace lines, if the job stored any readable ones (Marshal data never loads)."""
        value = self.item.get("error_backtrace")
        if value is None:
            return None
        try:
            return backtrace.decompress(value)
        except backtrace.InvalidBacktrace:
            return None

    @property
    def tags(self) -> list[Any]:
        tags = self.item.get("tags")
        return tags if isinstance(tags, list) else []

    @property
    def latency(self) -> float:
        """Seconds since the job was enqueued (or created); 0.0 if it says neither."""
        stamp = self.item.get("enqueued_at")
        if stamp is None:
            stamp = self.item.get("created_at")
        return _seconds_since(stamp)

    @property
    def display_class(self) -> str:
        """The class a person thinks of: ActiveJob's wrapped class, ``Mailer#method`` for mail."""
        shown = self.item.get("display_class")
        if isinstance(shown, str):
            return shown
        klass = self.klass or ""
        if klass not in ACTIVE_JOB_WRAPPERS:
            return klass
        job_class = self._wrapped_class()
        if job_class in _MAILER_JOBS:
            arguments = self._active_job_arguments()
            return "#".join(str(part) for part in arguments[:2])
        return job_class or klass

    @property
    def display_args(self) -> list[Any]:
        """The args a person thinks of, as Sidekiq 7.1+'s Web UI shows them.

        ActiveJob: the job's own arguments with the ``_aj_*`` markers dropped and GlobalIDs as
        their string; mailers: the mail's params and args. ``encrypt`` jobs (Enterprise) hide
        their last arg.
        """
        if (self.klass or "") in ACTIVE_JOB_WRAPPERS:
            job_class = self._wrapped_class()
            shown = _without_active_job_markers(self._active_job_arguments())
            if not self.item.get("wrapped"):
                return []
            if job_class == "ActionMailer::DeliveryJob":
                return list(shown[3:])
            if job_class == "ActionMailer::MailDeliveryJob":
                mail = shown[3] if len(shown) > 3 else None
                return [mail.get("params"), mail.get("args")] if isinstance(mail, dict) else []
            return list(shown)
        args = list(self.args)
        if self.item.get("encrypt") and args:
            args[-1] = "[encrypted data]"
        return args

    def _wrapped_class(self) -> str | None:
        wrapped = self.item.get("wrapped")
        if isinstance(wrapped, str):
            return wrapped
        first = self.args[0] if self.args else None
        if isinstance(first, dict) and isinstance(first.get("job_class"), str):
            return str(first["job_class"])
        return first if isinstance(first, str) else None

    def _active_job_arguments(self) -> list[Any]:
        first = self.args[0] if self.args else None
        arguments = first.get("arguments") if isinstance(first, dict) else None
        return arguments if isinstance(arguments, list) else []

    def delete(self) -> bool:
        """Remove this job from its queue (``LREM`` of its exact payload); False if it is gone."""
        if self.queue is None:
            return False
        value: Any = self.value
        return bool(self._client.redis.lrem(self._client.keys.queue(self.queue), 1, value))

    def to_dict(self) -> dict[str, Any]:
        """The record as plain JSON-able data: the payload under ``item``, times as ISO 8601."""
        return {
            "jid": self.jid,
            "class": self.klass,
            "display_class": self.display_class,
            "queue": self.queue,
            "args": self.args,
            "display_args": self.display_args,
            "created_at": _iso(self.created_at),
            "enqueued_at": _iso(self.enqueued_at),
            "failed_at": _iso(self.failed_at),
            "retried_at": _iso(self.retried_at),
            "retry_count": self.retry_count,
            "error_class": self.error_class,
            "error_message": self.error_message,
            "tags": self.tags,
            "latency": self.latency,
            "invalid": self.invalid,
            "reason": self.reason,
            "item": self.item if not self.invalid else None,
            "value": _text(self.value) if self.invalid else None,
        }


def _without_active_job_markers(argument: Any) -> Any:
    """ActiveJob arguments as the Web UI shows them: GlobalIDs as strings, no ``_aj_*`` keys."""
    if isinstance(argument, list):
        return [_without_active_job_markers(item) for item in argument]
    if isinstance(argument, dict):
        if len(argument) == 1 and "_aj_globalid" in argument:
            return argument["_aj_globalid"]
        return {
            key: _without_active_job_markers(value)
            for key, value in argument.items()
            if not str(key).startswith("_aj_")
        }
    return argument


def requeued(
    payload: str | bytes, *, retry: bool, version: int = jobs.DEFAULT_SIDEKIQ_VERSION
) -> Job:
    """The job a sorted-set member becomes when it is pushed back to its queue by hand.

    As Sidekiq's ``SortedEntry#retry`` and ``#add_to_queue`` then ``Client.push`` do: a manual
    ``retry`` does not count against the job's retries (``retry_count -= 1``, down to -1 for a
    job that failed once, as Ruby does); the queue defaults to ``default``; ``enqueued_at`` is
    stamped in the unit the job already uses; every other key is kept. Raises
    :class:`~kombu_sidekiq.job.InvalidJob` for a member that is not a job.
    """
    job = jobs.parse(payload)
    count = job.get("retry_count")
    if retry and isinstance(count, int) and not isinstance(count, bool):
        job["retry_count"] = count - 1
    job["queue"] = job.get("queue") or "default"
    job.pop("at", None)  # client input only; left in, a Ruby push would schedule it again
    if not job.get("jid"):
        job["jid"] = jobs.new_jid()
    jobs.mark_enqueued(job, version)
    if job.get("created_at") is None:
        job["created_at"] = job["enqueued_at"]
    return job


# -- queues ----------------------------------------------------------------------------------


class Queue:
    """A Sidekiq queue (the LIST ``queue:<name>``), as ``Sidekiq::Queue``::

    Queue.all(app)                       # every queue in the ``queues`` SET, by name
    queue = Queue(app, "mailers")
    queue.size(), queue.latency()        # jobs waiting; seconds the oldest has waited
    for job in queue: ...                # newest first, pages of 50
    queue.find_job(jid).delete()         # or queue.delete(jid)
    queue.clear()                        # drop every job and forget the queue
    """

    def __init__(self, source: Source, name: str = "default", *, keys: Keys | None = None) -> None:
        self._client = client_of(source, keys)
        self.name = name

    @classmethod
    def all(cls, source: Source, *, keys: Keys | None = None) -> list[Queue]:
        """Every queue the ``queues`` SET names (the only ones the Web UI knows), sorted."""
        client = client_of(source, keys)
        names = sorted(_text(name) for name in client.redis.sscan_iter(client.keys.queues))
        return [cls(client, name) for name in names]

    def __repr__(self) -> str:
        return f"<Queue {self.name}>"

    @property
    def key(self) -> str:
        return self._client.keys.queue(self.name)

    def size(self) -> int:
        return int(self._client.redis.llen(self.key))

    def __len__(self) -> int:
        return self.size()

    def paused(self) -> bool:
        """Always False: pausing is a Sidekiq Pro feature (its ``paused`` SET is not read)."""
        return False

    def latency(self) -> float:
        """Seconds the oldest job (the list's tail, next to run) has waited; 0.0 if empty."""
        return _queue_latency(_raw(self._client.redis, "LINDEX", self.key, -1))

    def __iter__(self) -> Iterator[JobRecord]:
        for raw in self._raw_entries():
            yield JobRecord(self._client, raw, self.name)

    def _raw_entries(self) -> Iterator[bytes]:
        # Sidekiq's paging: after each page, the start shifts back by however many jobs left
        # the list meanwhile (consumed or deleted), so a job is rarely skipped or seen twice.
        initial = self.size()
        page = deleted = 0
        while True:
            start = page * PAGE_SIZE - deleted
            entries = cast(
                list[bytes],
                _raw(self._client.redis, "LRANGE", self.key, start, start + PAGE_SIZE - 1),
            )
            if not entries:
                return
            page += 1
            yield from entries
            deleted = initial - self.size()

    def find_job(self, jid: str) -> JobRecord | None:
        """The job with this jid, by a scan of the whole list (slow on long queues)."""
        needle = jid.encode()
        for raw in self._raw_entries():
            if needle in (raw if isinstance(raw, bytes) else raw.encode()):
                record = JobRecord(self._client, raw, self.name)
                if record.jid == jid:
                    return record
        return None

    def delete(self, jid: str) -> bool:
        """Remove the job with this jid; False if there is none."""
        record = self.find_job(jid)
        return record is not None and record.delete()

    def clear(self) -> int:
        """Delete every job and remove the name from ``queues``; returns how many jobs went."""
        with self._client.redis.pipeline(transaction=True) as tx:
            tx.llen(self.key)
            tx.unlink(self.key)
            tx.srem(self._client.keys.queues, self.name)
            size, _, _ = tx.execute()
        return int(size)


def _queue_latency(raw: Any) -> float:
    # Sidekiq's Queue#latency reads enqueued_at only (no created_at fallback), and a payload
    # it cannot read counts as no latency.
    if raw is None:
        return 0.0
    try:
        job = jobs.parse(raw)
    except InvalidJob:
        return 0.0
    return _seconds_since(job.get("enqueued_at"))


# -- sorted sets -----------------------------------------------------------------------------


class SortedEntry(JobRecord):
    """A job in ``schedule``, ``retry`` or ``dead``, as ``Sidekiq::SortedEntry``::

        entry = RetrySet(app).find_job(jid)
        entry.at, entry.error_class, entry.retry_count
        entry.retry()          # to its queue now, without using up a retry
        entry.add_to_queue()   # to its queue now, as it is
        entry.kill()           # to the dead set
        entry.reschedule(time.time() + 3600)
        entry.delete()

    Each action moves exactly this member in one atomic step and returns False if another
    process (a poller, another operator) took it first.
    """

    def __init__(self, parent: JobSet, value: str | bytes, score: float) -> None:
        super().__init__(parent._client, value)
        self.parent = parent
        self.score = float(score)

    def __repr__(self) -> str:
        return f"<SortedEntry {self.parent.name} {self.jid} {self.klass} at={_iso(self.at)}>"

    @property
    def at(self) -> datetime:
        """The score as a time: when it runs (schedule, retry) or when it died (dead)."""
        return _from_epoch(self.score) or datetime.fromtimestamp(0, timezone.utc)

    @property
    def error(self) -> bool:
        return bool(self.item.get("error_class"))

    def delete(self) -> bool:
        return self.parent._removed_one(self.parent._client.redis.zrem(self.parent.key, self.value))

    def retry(self) -> bool:
        """Push to the job's queue now; a manual retry does not count against its retries.

        Raises :class:`~kombu_sidekiq.job.InvalidJob` if it is no job, and
        ``redis.ResponseError`` if its queue refused the push (a key of another type, out of
        memory); either way the member stays where it is.
        """
        return self.parent._requeue([self.value], retry=True, strict=True)[0] == 1

    def add_to_queue(self) -> bool:
        """Push to the job's queue now, unchanged but for ``enqueued_at`` (raises as
        :meth:`retry` does)."""
        return self.parent._requeue([self.value], retry=False, strict=True)[0] == 1

    def kill(self) -> bool:
        """Move to the dead set (now as its score), trimming it as Sidekiq does.

        Needs no parsing: any member can be killed. Raises ``redis.ResponseError`` if the dead
        set refused it; then it stays where it is.
        """
        return self.parent._kill([self.value], strict=True)[0] == 1

    def reschedule(self, at: float | datetime) -> bool:
        """Move to another time in the same set; False if the member left it meanwhile.

        ``ZADD XX`` on the exact member: a job somebody else took is never put back.
        """
        score = at.timestamp() if isinstance(at, datetime) else float(at)
        with self.parent._client.redis.pipeline(transaction=True) as tx:
            member: Any = self.value
            tx.zadd(self.parent.key, {member: score}, xx=True)
            tx.zscore(self.parent.key, self.value)
            _, now_score = tx.execute()
        if now_score is None:
            return False
        self.score = float(now_score)
        return True

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.update(set=self.parent.name, score=self.score, at=_iso(self.at))
        return data


class JobSet:
    """A sorted set of jobs (score = epoch seconds), as ``Sidekiq::JobSet``; see the subclasses
    :class:`ScheduledSet`, :class:`RetrySet` and :class:`DeadSet`::

        retries = RetrySet(app)
        retries.size()
        for entry in retries: ...              # latest score first, pages of 50
        retries.find_job(jid)                  # a SortedEntry, or None
        retries.retry(jid), retries.kill(jid), retries.delete(jid)   # True if done
        retries.retry_all(), retries.kill_all()                      # how many moved
        retries.clear()
    """

    def __init__(self, source: Source, name: str, *, keys: Keys | None = None) -> None:
        self._client = client_of(source, keys)
        self.name = name
        # Entries this object removed; iteration pages shift by it, as Sidekiq's do.
        self._removed = 0
        self._promote = self._client.redis.register_script(scripts.source("promote"))
        self._bury = self._client.redis.register_script(scripts.source("bury"))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    @property
    def key(self) -> str:
        return self._client.keys.key(self.name)

    def size(self) -> int:
        return int(self._client.redis.zcard(self.key))

    def _scored(
        self, start: Any, stop: Any, *, byscore: bool = False, desc: bool = False
    ) -> list[tuple[bytes, float]]:
        # As redis-py's zrange sends it (ZREVRANGE for a reversed rank range), read raw.
        if desc and not byscore:
            command = ["ZREVRANGE", self.key, start, stop]
        else:
            command = ["ZRANGE", self.key, start, stop, *(["BYSCORE"] if byscore else [])]
        reply = _raw(self._client.redis, *command, "WITHSCORES", withscores=True)
        return cast(list[tuple[bytes, float]], reply)

    def __len__(self) -> int:
        return self.size()

    def __iter__(self) -> Iterator[SortedEntry]:
        # Pages from the end (highest score first). Removals through this object shift the
        # pages still to come, so the next start moves back by that many.
        removed_before = self._removed
        page = -1
        while True:
            start = page * PAGE_SIZE + (self._removed - removed_before)
            elements = self._scored(start, start + PAGE_SIZE - 1)
            if not elements:
                return
            page -= 1
            for member, score in reversed(elements):
                yield SortedEntry(self, member, score)

    def page(
        self, start: int = 0, count: int = PAGE_SIZE, *, reverse: bool = False
    ) -> list[SortedEntry]:
        """``count`` entries from rank ``start``: lowest score first, or highest if ``reverse``."""
        if count <= 0:
            return []
        elements = self._scored(start, start + count - 1, desc=reverse)
        return [SortedEntry(self, member, score) for member, score in elements]

    def scan(self, match: str, count: int = 100) -> Iterator[SortedEntry]:
        """Entries whose JSON contains ``match`` (a glob if it has ``*``), via ``ZSCAN``."""
        pattern = match if "*" in match else f"*{match}*"
        cursor = 0
        while True:
            cursor, pairs = _raw(
                self._client.redis, "ZSCAN", self.key, cursor, "MATCH", pattern, "COUNT", count
            )
            for member, score in pairs:
                yield SortedEntry(self, member, score)
            if cursor == 0:
                return

    def fetch(
        self, score: float | tuple[float, float], jid: str | None = None
    ) -> list[SortedEntry]:
        """Entries at a score or within ``(low, high)``, optionally only those of ``jid``."""
        low, high = score if isinstance(score, tuple) else (score, score)
        elements = self._scored(low, high, byscore=True)
        entries = [SortedEntry(self, member, member_score) for member, member_score in elements]
        return [entry for entry in entries if jid is None or entry.jid == jid]

    def find_job(self, jid: str) -> SortedEntry | None:
        """The entry of ``jid``: Redis filters members by the jid text, we check the field."""
        for entry in self.scan(f"*{_glob_escape(jid)}*"):
            if entry.jid == jid:
                return entry
        return None

    def delete(self, jid: str) -> bool:
        entry = self.find_job(jid)
        return entry is not None and entry.delete()

    def retry(self, jid: str) -> bool:
        entry = self.find_job(jid)
        return entry is not None and entry.retry()

    def add_to_queue(self, jid: str) -> bool:
        entry = self.find_job(jid)
        return entry is not None and entry.add_to_queue()

    def kill(self, jid: str) -> bool:
        entry = self.find_job(jid)
        return entry is not None and entry.kill()

    def schedule(self, at: float | datetime, job: Job) -> None:
        """Add ``job`` with score ``at`` (epoch seconds or a datetime)."""
        score = at.timestamp() if isinstance(at, datetime) else float(at)
        self._client.redis.zadd(self.key, {checked_payload(job): score})

    def clear(self) -> int:
        """Delete the whole set; returns how many entries went."""
        with self._client.redis.pipeline(transaction=True) as tx:
            tx.zcard(self.key)
            tx.unlink(self.key)
            size, _ = tx.execute()
        self._removed += int(size)
        return int(size)

    def retry_all(self, progress: Progress | None = None) -> int:
        """Retry every job (as :meth:`SortedEntry.retry`); returns how many moved.

        Goes through the entries present when it starts, oldest score first, ``BULK_BATCH``
        per round trip. A member that is not a job, or whose queue refuses it, stays where it
        is (logged); whatever the members, it does not raise for one of them.
        """
        return self._move_all(lambda members: self._requeue(members, retry=True), progress)

    def add_all_to_queue(self, progress: Progress | None = None) -> int:
        """Push every job to its queue now, unchanged; returns how many moved."""
        return self._move_all(lambda members: self._requeue(members, retry=False), progress)

    def kill_all(self, progress: Progress | None = None) -> int:
        """Move every entry to the dead set; returns how many moved. Members the dead set
        refuses (a key of another type) stay where they are, logged."""
        return self._move_all(self._kill, progress)

    # -- moves -------------------------------------------------------------------------------

    def _move_all(
        self, move: Callable[[Sequence[bytes]], tuple[int, int]], progress: Progress | None
    ) -> int:
        # Bounded by the size at the start: jobs that arrive meanwhile (a worker failing the
        # retried jobs again) wait for the next call instead of keeping this one going forever.
        # Members left in place (not jobs) sit at the low end, so the next batch starts past them.
        budget = self.size()
        moved = left = 0
        while budget > 0:
            members = cast(
                list[bytes],
                _raw(
                    self._client.redis, "ZRANGE", self.key, left, left + min(BULK_BATCH, budget) - 1
                ),
            )
            if not members:
                break
            done, skipped = move(members)
            moved += done
            left += skipped
            budget -= len(members)
            if progress is not None:
                progress(len(members))
        return moved

    def _requeue(
        self, members: Sequence[str | bytes], *, retry: bool, strict: bool = False
    ) -> tuple[int, int]:
        """Push members to their queues in one script call; ``(moved, left in the set)``.

        A member that is not a job, or whose queue refuses the push, is left where it is and
        logged; ``strict`` raises instead: :class:`InvalidJob` for the first, the refusal as
        ``redis.ResponseError`` for the second."""
        keys: list[str | bytes] = [self.key, self._client.keys.queues]
        argv: list[str | bytes] = []
        pushed: list[str | bytes] = []
        left = 0
        for member in members:
            try:
                job = requeued(member, retry=retry, version=self._client.version)
                queue = job["queue"]
                # Encoded here, not by redis-py when it packs the whole call: whatever fails
                # for one member fails for that member only.
                triple = [member, queue.encode(), jobs.dumps(job).encode()]
                key = self._client.keys.queue(queue).encode()
            except Exception as exc:  # requeued raises InvalidJob; anything else: same fate
                reason = exc.reason if isinstance(exc, InvalidJob) else repr(exc)
                if strict:
                    if isinstance(exc, InvalidJob):
                        raise
                    raise InvalidJob(reason) from exc
                logger.warning(
                    "%s: leaving a member that is not a job: %s: %r",
                    self.name,
                    reason,
                    member[:200],
                )
                left += 1
                continue
            keys.append(key)
            argv += triple
            pushed.append(member)
        moved = 0
        if argv:
            # promote.lua moves a member only if it is still in the set and its push succeeded.
            moved, refused = promote_reply(self._promote(keys=keys, args=argv))
            self._removed += moved
            for position, error in refused:
                if position == 0:
                    logger.warning("%s: jobs pushed, but %s", self.name, error)
                    continue
                if strict:
                    raise redis.ResponseError(error)
                logger.warning(
                    "%s: leaving a job its queue refused: %s: %r",
                    self.name,
                    error,
                    pushed[position - 1][:200],
                )
                left += 1
        return moved, left

    def _kill(self, members: Sequence[str | bytes], *, strict: bool = False) -> tuple[int, int]:
        """Move members to the dead set, as they are; ``(moved, left in the set)``.

        A member the dead set refuses stays where it is, logged; ``strict`` raises the refusal
        (``redis.ResponseError``) instead."""
        # bury.lua: ZADD to dead with now as score, then ZREM from this set, trim by age and
        # count; the member goes to the morgue exactly as it was, as Sidekiq's DeadSet#kill
        # stores it.
        now = time.time()
        dead = self._client.keys.dead
        with self._client.redis.pipeline(transaction=False) as pipe:
            for member in members:
                self._bury(
                    keys=[self.key, dead],
                    args=[member, member, now, now - DEAD_TIMEOUT, DEAD_MAX_JOBS],
                    client=pipe,
                )
            replies = pipe.execute(raise_on_error=False)
        moved = left = 0
        for member, reply in zip(members, replies, strict=True):
            if isinstance(reply, redis.ResponseError):
                if strict:
                    raise reply
                logger.warning(
                    "%s: the dead set refused a member, so it stays: %s: %r",
                    self.name,
                    reply,
                    member[:200],
                )
                left += 1
            else:
                moved += int(reply)
        self._removed += moved
        return moved, left

    def _removed_one(self, reply: Any) -> bool:
        removed = bool(reply)
        self._removed += int(removed)
        return removed


class ScheduledSet(JobSet):
    """``schedule``: jobs to run later (score = when). ``add_to_queue`` runs one now."""

    def __init__(self, source: Source, *, keys: Keys | None = None) -> None:
        super().__init__(source, "schedule", keys=keys)


class RetrySet(JobSet):
    """``retry``: failed jobs waiting for their next try (score = when)."""

    def __init__(self, source: Source, *, keys: Keys | None = None) -> None:
        super().__init__(source, "retry", keys=keys)


class DeadSet(JobSet):
    """``dead``: jobs out of retries (score = when they died); Sidekiq keeps at most
    ``DEAD_MAX_JOBS`` - 1 of them, for at most six months."""

    def __init__(self, source: Source, *, keys: Keys | None = None) -> None:
        super().__init__(source, "dead", keys=keys)

    def add(self, job: str | bytes | Job) -> None:
        """Put a job (JSON or a dict) in the dead set now and trim, as ``DeadSet#kill`` does."""
        payload = checked_payload(job) if isinstance(job, dict) else job
        self._client.kill(payload)

    def trim(self) -> None:
        """Drop what is older than six months and what exceeds the size limit."""
        now = time.time()
        with self._client.redis.pipeline(transaction=True) as tx:
            tx.zremrangebyscore(self.key, "-inf", now - DEAD_TIMEOUT)
            tx.zremrangebyrank(self.key, 0, -DEAD_MAX_JOBS)
            tx.execute()


# -- stats -----------------------------------------------------------------------------------


class Stats:
    """A snapshot of the figures of the Web UI's dashboard, as ``Sidekiq::Stats``::

        stats = Stats(app)
        stats.processed, stats.failed              # executions ever, failures ever
        stats.enqueued, stats.queues               # jobs waiting; {queue: size}, largest first
        stats.scheduled_size, stats.retry_size, stats.dead_size
        stats.processes_size, stats.workers_size   # processes; jobs running
        stats.default_queue_latency                # seconds the oldest "default" job waited
        stats.history(7).processed                 # {"2026-05-01": 1200, ...}, today first
        stats.refresh()                            # read again

    Read in three round trips (the two SET scans, then one pipeline).
    """

    processed: int
    failed: int
    scheduled_size: int
    retry_size: int
    dead_size: int
    processes_size: int
    workers_size: int
    enqueued: int
    default_queue_latency: float
    queues: dict[str, int]

    def __init__(self, source: Source, *, keys: Keys | None = None) -> None:
        self._client = client_of(source, keys)
        self.refresh()

    def refresh(self) -> Stats:
        redis_client, keys = self._client.redis, self._client.keys
        processes = [_text(p) for p in redis_client.sscan_iter(keys.processes)]
        queues = [_text(q) for q in redis_client.sscan_iter(keys.queues)]
        with redis_client.pipeline(transaction=False) as pipe:
            pipe.get(keys.key("stat:processed"))
            pipe.get(keys.key("stat:failed"))
            pipe.zcard(keys.schedule)
            pipe.zcard(keys.retry)
            pipe.zcard(keys.dead)
            pipe.scard(keys.processes)
            _raw(pipe, "LINDEX", keys.queue("default"), -1)
            for identity in processes:
                pipe.hget(keys.key(identity), "busy")
            for queue in queues:
                pipe.llen(keys.queue(queue))
            replies = pipe.execute()
        head, busy, lengths = (
            replies[:7],
            replies[7 : 7 + len(processes)],
            replies[7 + len(processes) :],
        )
        self.processed = _number(head[0])
        self.failed = _number(head[1])
        self.scheduled_size, self.retry_size, self.dead_size, self.processes_size = (
            int(n) for n in head[2:6]
        )
        self.default_queue_latency = _queue_latency(head[6])
        self.workers_size = sum(_number(b) for b in busy)
        sizes = {queue: int(n) for queue, n in zip(queues, lengths, strict=True)}
        self.enqueued = sum(sizes.values())
        self.queues = dict(sorted(sizes.items(), key=lambda pair: (-pair[1], pair[0])))
        return self

    def history(self, days: int = 30, start: date | None = None) -> History:
        """Processed and failed per day, ``days`` days back from ``start`` (today, UTC)."""
        return History(self._client, days, start)

    def reset(self, *names: str) -> None:
        """Set ``stat:processed`` and/or ``stat:failed`` (both by default) to 0."""
        chosen = [name for name in ("failed", "processed") if not names or name in names]
        if chosen:
            self._client.redis.mset({self._client.keys.key(f"stat:{name}"): 0 for name in chosen})

    def to_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "failed": self.failed,
            "enqueued": self.enqueued,
            "scheduled_size": self.scheduled_size,
            "retry_size": self.retry_size,
            "dead_size": self.dead_size,
            "processes_size": self.processes_size,
            "workers_size": self.workers_size,
            "default_queue_latency": self.default_queue_latency,
            "queues": dict(self.queues),
        }


class History:
    """Per-day counters (``stat:processed:YYYY-MM-DD``, UTC), as ``Sidekiq::Stats::History``::

    History(app, 7).failed          # {"2026-05-07": 3, "2026-05-06": 0, ...}, newest first
    """

    def __init__(
        self, source: Source, days: int, start: date | None = None, *, keys: Keys | None = None
    ) -> None:
        if not 1 <= days <= HISTORY_MAX_DAYS:
            raise ValueError(
                f"days must be in 1..{HISTORY_MAX_DAYS} (five years of data), not {days!r}"
            )
        self._client = client_of(source, keys)
        self.days = days
        self.start = start or datetime.now(timezone.utc).date()
        self._cache: dict[str, dict[str, int]] = {}

    @property
    def processed(self) -> dict[str, int]:
        return self._counts("processed")

    @property
    def failed(self) -> dict[str, int]:
        return self._counts("failed")

    def _counts(self, stat: str) -> dict[str, int]:
        if stat not in self._cache:
            dates = [
                (self.start - timedelta(days=n)).strftime("%Y-%m-%d") for n in range(self.days)
            ]
            keys = [self._client.keys.key(f"stat:{stat}:{day}") for day in dates]
            values = self._client.redis.mget(keys)
            self._cache[stat] = {
                day: _number(value) for day, value in zip(dates, values, strict=True)
            }
        return self._cache[stat]


# -- processes -------------------------------------------------------------------------------


class Process:
    """A live Sidekiq process (Ruby, Rust, or a Celery worker), as ``Sidekiq::Process``::

        process.identity, process.hostname, process.pid, process.tag, process.queues
        process.busy, process.concurrency, process.beat, process.stopping, process.rss_kb
        process["version"]        # any key of its info
        process.quiet()           # stop fetching jobs (the Web UI's "Quiet")
        process.stop()            # shut down (the Web UI's "Stop")
        process.dump_threads()    # log every thread's backtrace

    Signals travel through ``<identity>-signals``, which the process reads at its next beat
    (within 5 to 10 s). rusty-sidekiq never reads them.
    """

    def __init__(self, client: Client, info: dict[str, Any], fields: dict[str, Any]) -> None:
        self._client = client
        self.info = info
        # The SET member is what the process polls signals under; info repeats it.
        self.identity: str = str(fields.get("identity") or info.get("identity") or "")
        self.busy: int = _number(fields.get("busy"))
        self.beat: datetime | None = _from_epoch(_number(fields.get("beat"), float, None))
        quiet = _optional_text(fields.get("quiet"))
        # "true"/"false" from sidekiq.rb; rusty-sidekiq sends its bool as "1"/"0".
        self.stopping: bool = quiet in ("true", "1")
        self.rss_kb: int = _number(fields.get("rss"))
        self.rtt_us: int = _number(fields.get("rtt_us"))
        # 8.1.2+ keep concurrency in its own field and drop it from info.
        field_concurrency = fields.get("concurrency")
        self.concurrency: int = (
            _number(field_concurrency)
            if field_concurrency is not None
            else _number(info.get("concurrency"))
        )

    def __repr__(self) -> str:
        return f"<Process {self.identity} busy={self.busy}/{self.concurrency}>"

    def __getitem__(self, key: str) -> Any:
        return self.info.get(key)

    @property
    def hostname(self) -> str | None:
        return _optional_text(self.info.get("hostname"))

    @property
    def pid(self) -> int | None:
        pid = self.info.get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def tag(self) -> str | None:
        return _optional_text(self.info.get("tag"))

    @property
    def labels(self) -> list[str]:
        labels = self.info.get("labels")
        return [str(label) for label in labels] if isinstance(labels, list) else []

    @property
    def queues(self) -> list[str]:
        """Its queues; from 8.0.9's ``capsules`` when ``queues`` is missing."""
        queues = self.info.get("queues")
        if isinstance(queues, list):
            return [str(queue) for queue in queues]
        capsules = self.info.get("capsules")
        names: list[str] = []
        if isinstance(capsules, dict):
            for capsule in capsules.values():
                weights = capsule.get("weights") if isinstance(capsule, dict) else None
                names += [name for name in (weights or {}) if name not in names]
        return names

    @property
    def version(self) -> str | None:
        return _optional_text(self.info.get("version"))

    @property
    def embedded(self) -> bool:
        return bool(self.info.get("embedded"))

    @property
    def started_at(self) -> datetime | None:
        return _from_epoch(_number(self.info.get("started_at"), float, None))

    def quiet(self) -> None:
        self._signal(QUIET_SIGNAL)

    def stop(self) -> None:
        self._signal(STOP_SIGNAL)

    def dump_threads(self) -> None:
        self._signal(DUMP_SIGNAL)

    def _signal(self, name: str) -> None:
        if self.embedded and name != DUMP_SIGNAL:
            raise ValueError(f"{self.identity} is an embedded process: it ignores quiet and stop")
        # A signal unread for a minute expires: a dead process must not obey it after a restart
        # under the same identity (identities have a random nonce, so this is belt and braces).
        key = self._client.keys.key(f"{self.identity}-signals")
        with self._client.redis.pipeline(transaction=True) as tx:
            tx.lpush(key, name)
            tx.expire(key, 60)
            tx.execute()

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info,
            "identity": self.identity,
            "queues": self.queues,
            "busy": self.busy,
            "concurrency": self.concurrency,
            "beat": _iso(self.beat),
            "stopping": self.stopping,
            "rss_kb": self.rss_kb,
            "rtt_us": self.rtt_us,
        }


#: The process hash fields a listing reads; ``concurrency`` is a field of its own from 8.1.2.
_PROCESS_FIELDS: Final = ("info", "busy", "beat", "quiet", "rss", "rtt_us", "concurrency")


class ProcessSet:
    """The live processes (the ``processes`` SET and each one's hash), as ``Sidekiq::ProcessSet``::

    processes = ProcessSet(app)     # also prunes processes whose hash expired
    for process in processes: ...   # sorted by identity
    processes.get(identity)         # one Process, or None
    processes.size(), processes.total_concurrency(), processes.total_rss_kb()
    """

    def __init__(self, source: Source, *, keys: Keys | None = None, clean: bool = True) -> None:
        self._client = client_of(source, keys)
        if clean:
            self.cleanup()

    def cleanup(self) -> int:
        """Drop members whose hash is gone (the process died without saying goodbye).

        At most once a minute across the fleet, under Sidekiq's own ``process_cleanup`` lock.
        Returns how many were dropped.
        """
        redis_client, keys = self._client.redis, self._client.keys
        if not redis_client.set(keys.key("process_cleanup"), "1", nx=True, ex=60):
            return 0
        identities = [_text(p) for p in redis_client.sscan_iter(keys.processes)]
        with redis_client.pipeline(transaction=False) as pipe:
            for identity in identities:
                pipe.hget(keys.key(identity), "info")
            infos = pipe.execute()
        gone = [identity for identity, info in zip(identities, infos, strict=True) if info is None]
        return int(redis_client.srem(keys.processes, *gone)) if gone else 0

    def identities(self) -> list[str]:
        return sorted(_text(p) for p in self._client.redis.sscan_iter(self._client.keys.processes))

    def __iter__(self) -> Iterator[Process]:
        identities = self.identities()
        keys = self._client.keys
        with self._client.redis.pipeline(transaction=False) as pipe:
            for identity in identities:
                pipe.hmget(keys.key(identity), *_PROCESS_FIELDS)
            rows = pipe.execute()
        for identity, row in zip(identities, rows, strict=True):
            process = self._process(identity, row)
            if process is not None:
                yield process

    def get(self, identity: str) -> Process | None:
        """The process with this identity, if it is registered and beating."""
        keys = self._client.keys
        with self._client.redis.pipeline(transaction=True) as tx:
            tx.sismember(keys.processes, identity)
            tx.hmget(keys.key(identity), *_PROCESS_FIELDS)
            member, row = tx.execute()
        return self._process(identity, row) if member else None

    def _process(self, identity: str, row: list[Any]) -> Process | None:
        fields = dict(zip(_PROCESS_FIELDS, row, strict=True))
        if fields["info"] is None:  # stopped between the scan and the read
            return None
        try:
            info = json.loads(fields["info"])
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            info = None
        if not isinstance(info, dict):
            logger.warning(
                "process %s: its info is not a JSON object: %r", identity, fields["info"][:200]
            )
            info = {}
        fields["identity"] = identity
        return Process(self._client, info, fields)

    def size(self) -> int:
        """Members of ``processes`` (not pruned: may count one that died in the last minute)."""
        return int(self._client.redis.scard(self._client.keys.processes))

    def __len__(self) -> int:
        return self.size()

    def total_concurrency(self) -> int:
        return sum(process.concurrency for process in self)

    def total_rss_kb(self) -> int:
        return sum(process.rss_kb for process in self)

    def leader(self) -> str:
        """Sidekiq Enterprise's leader identity (``dear-leader``), or ``""``."""
        return _optional_text(self._client.redis.get(self._client.keys.key("dear-leader"))) or ""


# -- work in progress ------------------------------------------------------------------------


class Work:
    """A job running right now, as ``Sidekiq::Work``: ``process_id``, ``thread_id``,
    ``queue``, ``run_at`` and the ``job`` (a :class:`JobRecord`)."""

    def __init__(
        self, client: Client, process_id: str, thread_id: str, entry: dict[str, Any]
    ) -> None:
        self.process_id = process_id
        self.thread_id = thread_id
        self.queue: str | None = _optional_text(entry.get("queue"))
        run_at = _number(entry.get("run_at"), float, None)
        # Integer seconds in every version; a millisecond value is read as such all the same.
        if run_at is not None and run_at >= 1e11:
            run_at /= 1000.0
        self.run_at: datetime | None = _from_epoch(run_at)
        payload = entry.get("payload")
        # The payload is the job's JSON string (double-encoded); older writers stored the object,
        # written back here with ASCII escapes, so that parse sees a lone surrogate and NaN.
        self.payload: str = (
            payload
            if isinstance(payload, str)
            else json.dumps(payload or {}, separators=(",", ":"))
        )
        self.job = JobRecord(client, self.payload, self.queue)

    def __repr__(self) -> str:
        return f"<Work {self.process_id} {self.thread_id} {self.job.klass}>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "process_id": self.process_id,
            "thread_id": self.thread_id,
            "queue": self.queue,
            "run_at": _iso(self.run_at),
            "job": self.job.to_dict(),
        }


class Workers:
    """The jobs running right now across the fleet, as ``Sidekiq::Workers`` (``WorkSet``)::

        for work in Workers(app):
            print(work.process_id, work.thread_id, work.job.klass, work.run_at)
        Workers(app).size()               # sum of the processes' ``busy``
        Workers(app).find_work(jid)

    Reads ``<identity>:work`` (Sidekiq 6.4.2+) and ``<identity>:workers`` (6.4.1 and older) of
    every process whose hash still exists; sorted by ``run_at``, oldest first. The data is as old
    as each process's last beat.
    """

    def __init__(self, source: Source, *, keys: Keys | None = None) -> None:
        self._client = client_of(source, keys)

    def __iter__(self) -> Iterator[Work]:
        redis_client, keys = self._client.redis, self._client.keys
        identities = sorted(_text(p) for p in redis_client.sscan_iter(keys.processes))
        with redis_client.pipeline(transaction=False) as pipe:
            for identity in identities:
                pipe.exists(keys.key(identity))
                pipe.hgetall(keys.key(f"{identity}:work"))
                pipe.hgetall(keys.key(f"{identity}:workers"))
            replies = pipe.execute()
        works: list[Work] = []
        for n, identity in enumerate(identities):
            alive, new_style, old_style = replies[3 * n : 3 * n + 3]
            if not alive:
                continue
            # A writer that serves both versions writes both hashes with the same tids.
            entries = {_text(k): v for k, v in old_style.items()}
            entries.update({_text(k): v for k, v in new_style.items()})
            works += self._works(identity, entries)
        works.sort(key=lambda work: work.run_at or datetime.fromtimestamp(0, timezone.utc))
        return iter(works)

    def _works(self, identity: str, entries: dict[str, Any]) -> Iterable[Work]:
        for tid, raw in sorted(entries.items()):
            try:
                entry = json.loads(raw)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                entry = None
            if isinstance(entry, dict):
                yield Work(self._client, identity, tid, entry)
            else:
                logger.warning(
                    "work of %s thread %s is not a JSON object: %r", identity, tid, raw[:200]
                )

    def size(self) -> int:
        redis_client, keys = self._client.redis, self._client.keys
        identities = [_text(p) for p in redis_client.sscan_iter(keys.processes)]
        if not identities:
            return 0
        with redis_client.pipeline(transaction=False) as pipe:
            for identity in identities:
                pipe.hget(keys.key(identity), "busy")
            return sum(_number(busy) for busy in pipe.execute())

    def __len__(self) -> int:
        return self.size()

    def find_work(self, jid: str) -> Work | None:
        return next((work for work in self if work.job.jid == jid), None)


WorkSet = Workers
