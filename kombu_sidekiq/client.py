"""Writing jobs into Redis the way sidekiq.rb's client and scheduler do.

>>> import redis
>>> client = Client(redis.Redis())                                   # doctest: +SKIP
>>> client.push(build("HardJob", [1, "x"]))                          # doctest: +SKIP
'c65c0a3b81d5e7e3c5a748cf'
>>> jids = client.push_bulk([build("HardJob", [n]) for n in range(1000)])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import Any, Final, cast

import redis

from . import job as jobs
from . import scripts
from .job import Job, build
from .keys import Keys

__all__ = [
    "DEAD_MAX_JOBS",
    "DEAD_TIMEOUT",
    "IN_DOUBT",
    "Client",
    "InDoubt",
    "build",
    "script_command",
]

logger = logging.getLogger(__name__)

#: Sidekiq's ``dead_max_jobs``: the dead set keeps at most this many jobs (minus one, as
#: Sidekiq's rank arithmetic does).
DEAD_MAX_JOBS: Final = 10_000

#: Sidekiq's ``dead_timeout_in_seconds``: dead jobs older than six months are dropped.
DEAD_TIMEOUT: Final = 180 * 24 * 3600

#: How many due jobs one promotion round trip moves. Sidekiq moves one per script call; a batch
#: keeps a burst of due jobs (a restart after downtime) from costing a round trip each.
PROMOTE_BATCH: Final = 100

#: How many of a queue's newest jobs (or of the schedule's members within a second of the time)
#: the checked path of a write looks through for an earlier copy. The earlier attempt is a
#: moment old, so its copy is among the newest unless this many jobs were pushed after it; the
#: bound keeps a long queue from blocking Redis in the script.
RESEND_WINDOW: Final = 1000

#: The most jids :data:`IN_DOUBT` remembers; past it, the oldest is forgotten first.
IN_DOUBT_LIMIT: Final = 10_000

#: What a write whose reply was lost raises: it may or may not have landed. An error reply is
#: not among them: the server answered, saying what it did.
LOST_REPLY: Final = (redis.ConnectionError, redis.TimeoutError, OSError)


class InDoubt:
    """The jids whose last write lost its reply: their next write takes the checked path.

    Process-wide rather than per :class:`Client`: kombu's publish retry runs after a reconnect,
    on a new channel and so a new client. Bounded (:data:`IN_DOUBT_LIMIT`, oldest out first): a
    jid is only in doubt between a failed attempt and its retry, so only a flood of failed
    writes that are never retried could push out one that still matters. Safe across threads:
    a lookup is one dict read (atomic), changes take a lock.
    """

    def __init__(self, limit: int = IN_DOUBT_LIMIT) -> None:
        self.limit = limit
        self._jids: dict[str, None] = {}
        self._lock = threading.Lock()

    def __contains__(self, jid: object) -> bool:
        return jid in self._jids

    def __len__(self) -> int:
        return len(self._jids)

    def add(self, jid: str) -> None:
        with self._lock:
            self._jids.pop(jid, None)  # added again: the newest again
            self._jids[jid] = None
            while len(self._jids) > self.limit:
                del self._jids[next(iter(self._jids))]

    def discard(self, jid: str) -> None:
        with self._lock:
            self._jids.pop(jid, None)

    def _after_fork(self) -> None:
        # A thread of the parent may have held the lock at the fork: the child's copy of it
        # would stay locked forever.
        self._lock = threading.Lock()


#: The one in-doubt memory of this process.
IN_DOUBT: Final = InDoubt()
os.register_at_fork(after_in_child=IN_DOUBT._after_fork)


class Client:
    """Pushes, schedules, promotes and buries jobs in one Redis, under one namespace."""

    def __init__(
        self,
        connection: redis.Redis,
        keys: Keys | None = None,
        version: int = jobs.DEFAULT_SIDEKIQ_VERSION,
    ) -> None:
        self.redis = connection
        self.keys = keys or Keys()
        self.version = version
        self._promote = connection.register_script(scripts.source("promote"))
        self._bury = connection.register_script(scripts.source("bury"))

    def push(self, job: Job) -> str:
        """Enqueue now: ``SADD queues`` and ``LPUSH queue:<q>`` in one round trip.

        Sent again after a lost reply, it leaves one copy (see :meth:`write_once`).
        """
        queue = job["queue"]
        jid = str(job["jid"])
        payload = jobs.dumps(job)
        key = self.keys.queue(queue)
        self.write_once(
            jid,
            (("SADD", self.keys.queues, queue), ("LPUSH", key, payload)),
            lambda: script_command(
                "push_once", (self.keys.queues, key), (queue, payload, jid, "", RESEND_WINDOW)
            ),
        )
        return jid

    def write_once(
        self,
        jid: str,
        commands: Sequence[tuple[Any, ...]],
        checked: Callable[[], tuple[Any, ...]],
    ) -> Any:
        """Send the write of job ``jid`` so that sending it twice leaves one copy; return the
        last reply.

        ``commands`` is the normal path, sent as it is: one round trip, nothing looked up.
        ``checked()`` makes the checked path: one script command, sent by source (a restarted
        server has no cached scripts), that looks for ``jid`` where the write goes and writes
        only if it is absent (``push_once.lua``, ``unique_push.lua``); sending it again is
        harmless. A write whose reply is lost (a connection error or timeout while sending or
        reading: it may have landed) puts ``jid`` in :data:`IN_DOUBT`, and the next write of
        that jid (kombu's publish retry, which builds the job again: same jid, other
        timestamps) takes the checked path, then forgets it. redis-py's own retry inside
        :meth:`round_trip` takes the checked path too. A NOSCRIPT reply to a normal-path
        ``EVALSHA`` ran nothing: the checked path goes instead.

        The limits: a worker may take the first copy before the retry looks, and then the
        retry pushes it again: the job may run twice (at least once, never zero times). The
        lookup covers the :data:`RESEND_WINDOW` newest jobs of the queue (for a schedule, that
        many members within a second of its time): a copy pushed further down in the meantime
        is not found. The memory is this process's: a write repeated by another process is
        not checked.
        """
        doubtful = jid in IN_DOUBT

        def again() -> tuple[tuple[Any, ...], ...]:
            IN_DOUBT.add(jid)  # a retry within round_trip: the first send may have landed
            return (checked(),)

        try:
            try:
                if doubtful:
                    replies = self.round_trip(checked())
                else:
                    replies = self.round_trip(*commands, again=again)
            except redis.exceptions.NoScriptError:
                replies = self.round_trip(checked())
        except LOST_REPLY:
            IN_DOUBT.add(jid)
            raise
        if jid in IN_DOUBT:
            IN_DOUBT.discard(jid)  # this write was answered: the job is in Redis once
        return replies[-1]

    def round_trip(
        self,
        *commands: tuple[Any, ...],
        again: Callable[[], Sequence[tuple[Any, ...]]] | None = None,
    ) -> list[Any]:
        """Send ``commands`` together and return their replies, as a pipeline without a
        transaction does, minus the cost of building a pipeline object for a single call
        (a third of a ``push``). Error replies are raised once every reply is read.

        The connection's redis-py retry (none on kombu's connections, ten on a default
        ``redis.Redis()``) sends again after a lost connection. The same bytes sent again may
        write twice (an ``LPUSH``): ``again``, called after each failure, gives what to send
        instead, the checked form of the write.
        """
        pool = self.redis.connection_pool
        connection: Any = pool.get_connection()  # redis-py's Connection is partly untyped
        sending: Sequence[tuple[Any, ...]] = commands

        def failed(_: Exception) -> None:
            nonlocal sending
            connection.disconnect()
            if again is not None:
                sending = again()

        try:
            return cast(
                list[Any],
                connection.retry.call_with_retry(
                    lambda: _send_and_read(connection, sending), failed
                ),
            )
        finally:
            pool.release(connection)

    def push_bulk(self, batch: Iterable[Job]) -> list[str]:
        """Enqueue many jobs in one round trip, one LPUSH per queue, as ``push_bulk`` does."""
        by_queue: dict[str, list[str]] = {}
        jids = []
        for job in batch:
            by_queue.setdefault(job["queue"], []).append(jobs.dumps(job))
            jids.append(str(job["jid"]))
        if by_queue:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.sadd(self.keys.queues, *by_queue)
                for queue, payloads in by_queue.items():
                    pipe.lpush(self.keys.queue(queue), *payloads)
                pipe.execute()
        return jids

    def schedule(self, job: Job, at: float) -> str:
        """Enqueue at epoch seconds ``at``: ``ZADD schedule``, no ``enqueued_at`` in the job.

        Sent again after a lost reply, it leaves one member, though the job built again has
        other bytes (see :meth:`write_once`).
        """
        job.pop("enqueued_at", None)
        jid = str(job["jid"])
        payload = jobs.dumps(job)
        score = repr(float(at))
        key = self.keys.schedule
        self.write_once(
            jid,
            (("ZADD", key, score, payload),),
            lambda: script_command(
                "push_once", (self.keys.queues, key), ("", payload, jid, score, RESEND_WINDOW)
            ),
        )
        return jid

    def kill(self, payload: str | bytes, pipe: Any = None) -> None:
        """Put a payload in the dead set and trim it as Sidekiq's morgue does."""
        now = time.time()
        own = pipe is None
        pipe = pipe if pipe is not None else self.redis.pipeline(transaction=True)
        pipe.zadd(self.keys.dead, {payload: now})
        pipe.zremrangebyscore(self.keys.dead, "-inf", now - DEAD_TIMEOUT)
        pipe.zremrangebyrank(self.keys.dead, 0, -DEAD_MAX_JOBS)
        if own:
            pipe.execute()

    def enqueue_due(self, now: float | None = None) -> int:
        """Move every due job of ``retry`` and ``schedule`` to its queue; return how many moved."""
        moved = 0
        for zset in (self.keys.retry, self.keys.schedule):
            while True:
                when = time.time() if now is None else now
                due = self.redis.zrange(
                    zset, "-inf", when, byscore=True, offset=0, num=PROMOTE_BATCH
                )
                if not due:
                    break
                moved += self._promote_members(zset, cast(list[bytes], due))
                if len(due) < PROMOTE_BATCH:
                    break
        return moved

    def _promote_members(self, zset: str, members: Sequence[bytes]) -> int:
        keys: list[str] = [zset, self.keys.queues]
        argv: list[str | bytes] = []
        for member in members:
            try:
                job = jobs.parse(member)
            except jobs.InvalidJob as exc:
                self.bury(zset, member, exc.reason)
                continue
            queue = job.get("queue") or "default"
            job["queue"] = queue
            jobs.mark_enqueued(job, self.version)
            keys.append(self.keys.queue(queue))
            argv += [member, queue, jobs.dumps(job)]
        return int(self._promote(keys=keys, args=argv)) if argv else 0

    def bury(self, zset: str, member: bytes | str, reason: str) -> bool:
        """Move an unreadable member of ``zset`` to the dead set, as it is."""
        logger.error(
            "moving an invalid job from %s to the dead set: %s: %r", zset, reason, member[:200]
        )
        now = time.time()
        return bool(
            self._bury(
                keys=[zset, self.keys.dead],
                args=[member, member, now, now - DEAD_TIMEOUT, DEAD_MAX_JOBS],
            )
        )


def script_command(
    name: str, keys: Sequence[Any], args: Sequence[Any], by_sha: bool = False
) -> tuple[Any, ...]:
    """The command running ``scripts/<name>.lua``: ``EVAL`` with its source, or ``EVALSHA``
    (``by_sha``), for :meth:`Client.round_trip`."""
    if by_sha:
        return ("EVALSHA", _script_sha(name), len(keys), *keys, *args)
    return ("EVAL", scripts.source(name), len(keys), *keys, *args)


@cache
def _script_sha(name: str) -> str:
    # What Redis names a script by, and redis-py's Script computes: SHA-1 of its source.
    return hashlib.sha1(scripts.source(name).encode("utf-8")).hexdigest()


def _send_and_read(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    error: redis.ResponseError | None = None
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as exc:  # read the rest, or the connection is out of step
            error = error or exc
            replies.append(exc)
    if error is not None:
        raise error
    return replies
