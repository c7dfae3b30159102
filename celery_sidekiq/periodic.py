"""Periodic jobs: ``celery -A proj beat -S sidekiq`` and rusty-sidekiq's ``periodic`` ZSET.

The beat scheduler writes the app's ``beat_schedule`` into the ``periodic`` ZSET (rusty-sidekiq's
format) and fires what is due there, its own entries and those rusty-sidekiq processes or
:func:`register` wrote. Any number of beats (and rusty-sidekiq processes) may run: each fire
time is claimed by a compare-and-set in Redis and enqueued once::

    app.conf.beat_schedule = {
        "nightly-report": {"task": "Workers::Report", "schedule": crontab(minute=0, hour=3),
                           "args": [42], "options": {"queue": "reports"}},
        "heartbeat": {"task": "Workers::Ping", "schedule": 10.0},      # */10 * * * * *
    }

    celery_sidekiq.periodic.register(app, "0 */5 * * * *", report, args=[42])
    celery_sidekiq.periodic.destroy_all(app)                            # DEL periodic

Schedules: a ``crontab`` (evaluated in UTC, so the app's timezone must be UTC) or a fixed
interval that a seconds-first cron expresses exactly (1-30 s dividing a minute, whole minutes
dividing an hour, whole hours dividing a day, one day, one week); anything else is refused at
startup, saying why. An entry carries positional args, ``options={"queue": ...,
"sidekiq_retry": ...}`` and nothing else; a fired job has ``retry: false`` unless it says so.

A ``beat_schedule`` entry owns its name: when beat starts, a member with that name but other
fields (an edited cron, new args) is replaced. Members with other names stay until
:func:`destroy_all`. Missed fires: see :mod:`kombu_sidekiq.periodic` (``CATCH_UP``).

Nothing in Redis stops beat. A bad ``beat_schedule`` entry does, at startup, naming it: that is
the app's own code. But a member of the ZSET that cannot be read (whoever wrote it, whenever
it arrives) is moved aside to ``periodic:invalid`` and logged once, and the entries behind it
fire on time (see :mod:`kombu_sidekiq.periodic`). Redis itself: a lost connection (down,
restarting, unreachable) is logged once and retried every :data:`RETRY_WAIT` seconds; an error
reply to the ZSET's own commands (``periodic`` holding another type, a read-only replica, OOM)
is logged once and retried every ``max_interval``; so is a failure of this code. Beat writes
``beat_schedule`` on the first tick that reaches Redis when it could not at startup, and says
when Redis answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import redis
from celery import Celery, beat
from celery.schedules import crontab, maybe_schedule, schedule
from kombu.exceptions import OperationalError

from kombu_sidekiq.client import Client
from kombu_sidekiq.periodic import (
    DEFAULT_NAME,
    Entry,
    InvalidCron,
    InvalidEntry,
    Periodic,
    entry_from,
)

from .scheduled import client_for

__all__ = ["DEFAULT_NAME", "Scheduler", "cron_for", "destroy_all", "entries_for", "register"]

logger = logging.getLogger(__name__)

#: Options a ``beat_schedule`` entry may carry; a periodic member has room for nothing else.
ENTRY_OPTIONS: Final = frozenset({"queue", "sidekiq_retry"})

#: Seconds beat sleeps at most between looks at the ZSET, so entries that other processes add
#: fire on time (rusty-sidekiq looks every 30 s).
MAX_INTERVAL: Final = 5.0

#: Seconds beat waits after it lost Redis, before it tries again.
RETRY_WAIT: Final = 1.0

#: What a lost or unreachable Redis raises: redis-py's own errors (but error replies), socket
#: errors, and kombu's OperationalError from ``ensure_connection``.
_UNAVAILABLE: Final = (redis.ConnectionError, redis.TimeoutError, OSError, OperationalError)


def register(
    app: Celery,
    cron: str | Any,
    task_or_class: Any,
    *,
    name: str | None = None,
    queue: str | None = None,
    args: Sequence[Any] | None = None,
    retry: bool | int | None = None,
) -> str:
    """Add a periodic entry to the app's ``periodic`` ZSET; return its member.

    ``cron`` is rusty-sidekiq's seconds-first cron (``"0 */5 * * * *"``) or a Celery schedule
    that :func:`cron_for` translates. ``task_or_class`` is a task (its Sidekiq class is used) or
    a class name that only Ruby or Rust has. ``name`` defaults to rusty-sidekiq's own default,
    so an entry registered with the same fields in Rust is the same entry. An entry already
    there keeps its next fire time.
    """
    entry = _entry(app, cron, task_or_class, name=name, queue=queue, args=args, retry=retry)
    with _periodic(app) as periodic:
        periodic.add(entry)
    return entry.member()


def destroy_all(app: Celery) -> None:
    """Delete every periodic entry (``DEL periodic``), as rusty-sidekiq's ``destroy_all``."""
    with _periodic(app) as periodic:
        periodic.destroy_all()


def cron_for(value: Any, app: Celery | None = None) -> str:
    """rusty-sidekiq's cron for a Celery schedule (``crontab``, interval, seconds).

    >>> cron_for(crontab(minute=0, hour="*/6", day_of_week="mon-fri"))
    '0 0 0,6,12,18 * * 2-6'
    >>> cron_for(timedelta(seconds=15)), cron_for(300)
    ('*/15 * * * * *', '0 */5 * * * *')
    """
    if isinstance(value, str):
        return _checked_cron(value)
    value = maybe_schedule(value, app=app)
    if isinstance(value, crontab):
        _require_utc(value, app)
        return " ".join(
            (
                "0",
                _cron_field(value.minute, range(60)),
                _cron_field(value.hour, range(24)),
                _cron_field(value.day_of_month, range(1, 32)),
                _cron_field(value.month_of_year, range(1, 13)),
                _cron_field({day + 1 for day in value.day_of_week}, range(1, 8)),  # Sunday = 1
            )
        )
    if isinstance(value, schedule) and type(value) is schedule:
        return _interval_cron(value.run_every)
    raise ValueError(
        f"{value!r} cannot be stored in the periodic ZSET: use a crontab, or a fixed interval "
        "that a cron expresses (such as 10 s, 5 min, 2 h, 1 day)"
    )


def _checked_cron(text: str) -> str:
    try:
        Entry(text, "Check")
    except (InvalidCron, InvalidEntry) as exc:
        raise ValueError(str(exc)) from None
    return text


def _require_utc(value: crontab, app: Celery | None) -> None:
    tz = app.timezone if app is not None else value.tz
    offsets = {tz.utcoffset(datetime(2026, month, 1)) for month in (1, 7)}
    if offsets != {timedelta(0)}:
        raise ValueError(
            f"{value!r}: periodic entries fire in UTC (rusty-sidekiq's rule), but the app's "
            f"timezone is {tz}; set timezone='UTC' and write the crontab in UTC hours"
        )


def _cron_field(values: set[int], everything: range) -> str:
    if set(everything) <= values:
        return "*"
    ordered = sorted(values)
    runs: list[list[int]] = []
    for value in ordered:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ",".join(str(a) if a == b else f"{a}-{b}" if b > a + 1 else f"{a},{b}" for a, b in runs)


def _interval_cron(every: timedelta) -> str:
    seconds = every.total_seconds()
    whole = int(seconds)
    if whole == seconds and whole >= 1:
        minutes, hours = whole // 60, whole // 3600
        if whole < 60 and 60 % whole == 0:
            return "* * * * * *" if whole == 1 else f"*/{whole} * * * * *"
        if whole % 60 == 0 and minutes < 60 and 60 % minutes == 0:
            return "0 * * * * *" if minutes == 1 else f"0 */{minutes} * * * *"
        if whole % 3600 == 0 and hours < 24 and 24 % hours == 0:
            return "0 0 * * * *" if hours == 1 else f"0 0 */{hours} * * *"
        if whole == 86400:
            return "0 0 0 * * *"
        if whole == 7 * 86400:
            return "0 0 0 * * 1"  # Sundays, as @weekly
    raise ValueError(
        f"every {seconds:g} s cannot be a cron: use seconds dividing a minute (1, 2, 5, 10, 15, "
        "20, 30), minutes dividing an hour, hours dividing a day, 1 day or 1 week, or a crontab"
    )


def entries_for(app: Celery) -> list[Entry]:
    """The periodic entries of ``app.conf.beat_schedule``; a bad one raises ValueError naming it."""
    entries = []
    for name, spec in (app.conf.beat_schedule or {}).items():
        try:
            entries.append(_beat_entry(app, name, spec))
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"beat_schedule[{name!r}]: {exc}") from None
    return entries


def _beat_entry(app: Celery, name: str, spec: dict[str, Any]) -> Entry:
    unknown = set(spec) - {"task", "schedule", "args", "kwargs", "options", "relative"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    if spec.get("kwargs"):
        raise ValueError(
            "a periodic job carries positional args only (rusty-sidekiq's format): "
            "move the kwargs into args"
        )
    options = dict(spec.get("options") or {})
    extra = set(options) - ENTRY_OPTIONS
    if extra:
        raise ValueError(
            f"options {sorted(extra)} cannot be stored in a periodic entry; "
            f"it keeps only {sorted(ENTRY_OPTIONS)}"
        )
    return _entry(
        app,
        spec["schedule"],
        spec["task"],
        name=name,
        queue=options.get("queue"),
        args=spec.get("args"),
        retry=options.get("sidekiq_retry"),
    )


def _entry(
    app: Celery,
    cron: Any,
    task_or_class: Any,
    *,
    name: str | None,
    queue: str | None,
    args: Sequence[Any] | None,
    retry: bool | int | None,
) -> Entry:
    task_name = task_or_class if isinstance(task_or_class, str) else task_or_class.name
    task = app.tasks.get(task_name)
    klass = getattr(task, "sidekiq_class", None) or task_name
    try:
        return entry_from(
            cron_for(cron, app),
            klass,
            name=name,
            queue=queue or _queue_of(app, task_name, task),
            args=args,
            retry=retry,
        )
    except (InvalidCron, InvalidEntry) as exc:
        raise ValueError(str(exc)) from None


def _queue_of(app: Celery, task_name: str, task: Any) -> str | None:
    """The task's queue, None for ``default`` (written null, as rusty-sidekiq's default)."""
    queue = getattr(task, "queue", None)
    if not isinstance(queue, str):
        route = app.amqp.router.route({}, task_name, (), {}, None).get("queue")
        queue = getattr(route, "name", route)
    return None if queue in (None, "", "default") else str(queue)


@contextmanager
def _periodic(app: Celery) -> Iterator[Periodic]:
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        client = getattr(channel, "sidekiq", None)
        if not isinstance(client, Client):
            raise ValueError(
                f"celery_sidekiq.periodic needs a sidekiq:// broker, not {connection.as_uri()!r}"
            )
        yield Periodic(client)


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """``celery beat -S sidekiq``: fires the entries of the ``periodic`` ZSET.

    Startup writes ``beat_schedule`` there (a bad entry stops beat, naming it; Redis away,
    the first tick that reaches it does). Each tick claims every due fire, then sleeps until
    the earliest next one, or :data:`MAX_INTERVAL` at most. A tick never raises: see the
    module's docstring for what it does when Redis fails.
    """

    #: Seconds between looks when nothing is due sooner (``beat_max_loop_interval`` overrides).
    max_interval = MAX_INTERVAL

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        self._connection: Any = None
        self._periodic: Periodic | None = None
        self._client: Any = None
        self._unwritten: list[Entry] | None = None  # beat_schedule, until it is in Redis
        self._trouble: str | None = None  # what the last failed tick logged
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        entries = entries_for(self.app)  # raises for a bad entry: the app's own error
        for entry in entries:  # so does one with no fire left, here rather than at a later tick
            if entry.schedule.next_after(time.time()) is None:
                raise ValueError(f"beat_schedule[{entry.name!r}]: {entry.cron!r} never fires again")
        self._unwritten = entries
        try:
            self._write_schedule()
        except (redis.ResponseError, *_UNAVAILABLE) as exc:
            self._failed(exc)  # Redis away or refusing: the first tick that reaches it writes

    def _write_schedule(self) -> None:
        entries = self._unwritten
        if entries is None:
            return
        periodic = self._connect()
        names = {entry.name for entry in entries}
        members = {entry.member().encode() for entry in entries}
        # read_all moves members nobody can read aside: they are no entry, of any name.
        stale = [
            member
            for member, _, old in periodic.read_all()
            if old.name in names and member not in members
        ]
        if stale:
            logger.info("beat: replacing %d changed periodic entries", len(stale))
            periodic.remove(*stale)
        added = sum(periodic.add(entry) for entry in entries)
        self._unwritten = None
        logger.info(
            "beat: %d beat_schedule entries in %s (%d new)", len(entries), periodic.key, added
        )

    def _connect(self) -> Periodic:
        if self._client is None:
            self._connection = self.app.connection_for_write()
            self._client = client_for(self._connection)
        client = self._client()
        if self._periodic is None:
            self._periodic = Periodic(client)
        self._periodic.client = client  # a new one after a reconnect
        return self._periodic

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            self._write_schedule()
            periodic = self._connect()
            for fire in periodic.enqueue_due():
                logger.info(
                    "beat: enqueued %s (%s) for %s, jid %s",
                    fire.entry.name,
                    fire.entry.klass,
                    _iso(fire.at),
                    fire.jid,
                )
            upcoming = periodic.next_due()
        except Exception as exc:  # beat's loop must go on whatever failed: say so, try again
            return self._failed(exc)
        if self._trouble is not None:
            logger.info("beat: %s answers again", self._periodic.key if self._periodic else "Redis")
            self._trouble = None
        wait = float(self.max_interval) if upcoming is None else upcoming - time.time()
        return max(min(wait, float(self.max_interval)), 0.01)

    def _failed(self, exc: Exception) -> float:
        """Log a failed look at the ZSET once (until what fails changes); the seconds to wait."""
        level, exc_info = logging.ERROR, None
        if isinstance(exc, redis.ResponseError):  # an error reply: Redis is there, and refuses
            what, wait = f"Redis refused a periodic command: {exc}", float(self.max_interval)
        elif isinstance(exc, _UNAVAILABLE):  # gone for now: an outage, a restart, a failover
            what, wait = f"periodic ZSET unavailable: {type(exc).__name__}: {exc}", RETRY_WAIT
            level = logging.WARNING
        else:  # a bug here: the traceback says where
            what, wait = f"periodic tick failed: {type(exc).__name__}: {exc}", self.max_interval
            exc_info = exc
        wait = min(float(wait), float(self.max_interval))
        if what != self._trouble:
            logger.log(
                level,
                "beat: %s (retrying every %g s; logged again only if it changes)",
                what,
                wait,
                exc_info=exc_info,
            )
            self._trouble = what
        return wait

    def close(self) -> None:
        if self._connection is not None:
            self._connection.release()
            self._connection = None
            self._client = self._periodic = None

    @property
    def info(self) -> str:
        return "    . periodic -> the periodic ZSET (rusty-sidekiq format)"


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat()
