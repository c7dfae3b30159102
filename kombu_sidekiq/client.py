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
from redis.client import NEVER_DECODE

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
    "checked_payload",
    "promote_reply",
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
        """Enqueue many jobs in one round trip, one LPUSH per queue, as ``push_bulk`` does.

        Every job is serialized and checked before anything is written: a job with no
        ``queue`` or ``jid`` string raises :class:`~kombu_sidekiq.job.InvalidJob`, one that
        cannot be written as JSON every reader takes back (see :func:`checked_payload`) raises
        ``TypeError``; either names the job's index, and nothing is enqueued.

        The writes go in one ``MULTI``/``EXEC``. If the connection breaks before ``EXEC``
        reaches Redis, nothing is written; redis-py's retry (if the client has one) then sends
        it all again. Two failures are not all or nothing: an error reply to one command (a
        queue key holding another type, out of memory) leaves the other commands applied, as
        Redis never rolls a transaction back, and the error is raised; and a connection lost
        after ``EXEC`` ran, taking its reply, makes a retry push every job a second time (at
        least once, never zero times).
        """
        by_queue: dict[str, list[bytes]] = {}
        jids = []
        for index, job in enumerate(batch):
            for key in ("queue", "jid"):
                if not isinstance(job.get(key), str) or not job[key]:
                    raise jobs.InvalidJob(
                        f"push_bulk(): job {index} has no '{key}' string; nothing was written"
                    )
            try:
                payload = checked_payload(job)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"push_bulk(): job {index} cannot be written as JSON ({exc}); "
                    "nothing was written"
                ) from None
            by_queue.setdefault(job["queue"], []).append(payload)
            jids.append(str(job["jid"]))
        if by_queue:
            with self.redis.pipeline(transaction=True) as tx:
                tx.sadd(self.keys.queues, *by_queue)
                for queue, payloads in by_queue.items():
                    tx.lpush(self.keys.queue(queue), *payloads)
                tx.execute()
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
        """Move every due job of ``retry`` and ``schedule`` to its queue; return how many moved.

        One bad member never holds the others back. A member that is not a job goes to the
        dead set as it is (:meth:`bury`), its reason logged. A job whose queue refuses the push
        (a key of another type, out of memory) stays where it is, logged, and is tried again at
        the next call; so does a member the dead set refused. Members left so are skipped for
        the rest of the call, which therefore always ends. A set that cannot be read (a key of
        another type) is logged and the other set still promoted. A connection error ends the
        call, with every job still in exactly one place: the poller tries again later.
        """
        moved = 0
        for zset in (self.keys.retry, self.keys.schedule):
            try:
                moved += self._enqueue_set(zset, now)
            except redis.ResponseError as exc:
                logger.error("cannot promote the due jobs of %s: %s", zset, exc)
        return moved

    def _enqueue_set(self, zset: str, now: float | None) -> int:
        moved = 0
        # Members this call left in the set are the lowest-ranked due ones (every due member
        # ranked before them has moved), so the next batch starts past them instead of reading
        # the same stuck members forever. A member that arrives meanwhile with an older score
        # shifts the ranks by one: at worst a due job waits for the next call.
        left = 0
        while True:
            when = time.time() if now is None else now
            due = self._due(zset, when, left)
            if not due:
                break
            done, stayed = self._promote_members(zset, due)
            moved += done
            left += stayed
            if len(due) < PROMOTE_BATCH:
                break
        return moved

    def _due(self, zset: str, when: float, offset: int) -> list[bytes]:
        # Raw bytes whatever the client's decode_responses: a member that is not UTF-8 would
        # make redis-py raise while reading the whole reply, and no member would ever move.
        execute: Any = self.redis.execute_command  # untyped in redis-py
        reply = execute(
            "ZRANGE",
            zset,
            "-inf",
            when,
            "BYSCORE",
            "LIMIT",
            offset,
            PROMOTE_BATCH,
            **{NEVER_DECODE: True},
        )
        return cast(list[bytes], reply)

    def _promote_members(self, zset: str, members: Sequence[bytes]) -> tuple[int, int]:
        """Promote ``members`` of ``zset`` (one script call), bury those that are not jobs;
        return ``(moved, left in the set)``."""
        keys: list[str | bytes] = [zset, self.keys.queues]
        argv: list[bytes] = []
        pushed: list[bytes] = []
        invalid: list[tuple[bytes, str]] = []
        for member in members:
            try:
                job = jobs.parse(member)
                queue = job.get("queue") or "default"
                job["queue"] = queue
                jobs.mark_enqueued(job, self.version)
                # Encoded here, not by redis-py when it packs the whole call: whatever fails
                # for one member fails for that member only.
                triple = [member, queue.encode(), jobs.dumps(job).encode()]
                key = self.keys.queue(queue).encode()
            except Exception as exc:  # parse raises InvalidJob only; anything else: same fate
                reason = exc.reason if isinstance(exc, jobs.InvalidJob) else repr(exc)
                invalid.append((member, reason))
                continue
            keys.append(key)
            argv += triple
            pushed.append(member)
        moved = left = 0
        if argv:
            try:
                reply = self._promote(keys=keys, args=argv)
            except redis.ResponseError as exc:
                # The script failed before its first write (only reading the set can fail
                # outside pcall): every member is still there.
                logger.error("cannot promote %d due jobs of %s: %s", len(pushed), zset, exc)
                left += len(pushed)
            else:
                moved, refused = promote_reply(reply)
                for position, error in refused:
                    if position == 0:
                        logger.error("promoted jobs from %s, but %s", zset, error)
                        continue
                    logger.error(
                        "leaving a due job in %s, its queue refused it: %s: %r",
                        zset,
                        error,
                        pushed[position - 1][:200],
                    )
                    left += 1
        for member, reason in invalid:
            try:
                self.bury(zset, member, reason)
            except redis.ResponseError as exc:
                logger.error(
                    "the dead set refused an invalid job, so it stays in %s: %s: %r",
                    zset,
                    exc,
                    member[:200],
                )
                left += 1
        return moved, left

    def bury(self, zset: str, member: bytes | str, reason: str) -> bool:
        """Move an unreadable member of ``zset`` to the dead set, as it is.

        Returns False if the member had left ``zset`` already (another poller took it). Raises
        ``redis.ResponseError`` if the dead set refused it (a key of another type, out of
        memory): then the member is still in ``zset``, never in neither.
        """
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


def checked_payload(job: Job) -> bytes:
    """``job`` as the UTF-8 JSON to store, the text ``jobs.dumps`` writes, checked to be what
    every reader takes back whole.

    Raises ``TypeError`` for a value JSON cannot hold (an object, a set) and ``ValueError`` for
    NaN or Infinity (``jobs.dumps`` refuses them), an integer too long to print, a string with a
    lone UTF-16 surrogate (UTF-8 cannot carry it), or nesting deeper than Ruby's ``JSON.parse``
    reads. The nesting is counted only in a text long enough to hold it, so an ordinary job
    costs its encoding alone.
    """
    text = jobs.dumps(job)
    data = text.encode("utf-8")
    # 101 nested arrays need 202 characters; only then can counting the brackets find any.
    if len(text) > 2 * jobs.MAX_NESTING and text.count("[") + text.count("{") > jobs.MAX_NESTING:
        try:
            jobs.parse(data)
        except jobs.InvalidJob as exc:
            raise ValueError(exc.reason) from None
    return data


def promote_reply(reply: Any) -> tuple[int, list[tuple[int, str]]]:
    """promote.lua's ``{moved, position, error, ...}`` as ``(moved, [(position, error)])``."""
    moved, *rest = reply
    refused = [(int(rest[i]), _text(rest[i + 1])) for i in range(0, len(rest) - 1, 2)]
    return int(moved), refused


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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
