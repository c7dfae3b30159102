"""Writing jobs into Redis the way sidekiq.rb's client and scheduler do.

>>> import redis
>>> client = Client(redis.Redis())                                   # doctest: +SKIP
>>> client.push(build("HardJob", [1, "x"]))                          # doctest: +SKIP
'c65c0a3b81d5e7e3c5a748cf'
>>> jids = client.push_bulk([build("HardJob", [n]) for n in range(1000)])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final, cast

import redis

from . import job as jobs
from . import scripts
from .job import Job, build
from .keys import Keys

__all__ = ["DEAD_MAX_JOBS", "DEAD_TIMEOUT", "Client", "build"]

logger = logging.getLogger(__name__)

#: Sidekiq's ``dead_max_jobs``: the dead set keeps at most this many jobs (minus one, as
#: Sidekiq's rank arithmetic does).
DEAD_MAX_JOBS: Final = 10_000

#: Sidekiq's ``dead_timeout_in_seconds``: dead jobs older than six months are dropped.
DEAD_TIMEOUT: Final = 180 * 24 * 3600

#: How many due jobs one promotion round trip moves. Sidekiq moves one per script call; a batch
#: keeps a burst of due jobs (a restart after downtime) from costing a round trip each.
PROMOTE_BATCH: Final = 100


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
        """Enqueue now: ``SADD queues`` and ``LPUSH queue:<q>`` in one round trip."""
        queue = job["queue"]
        self.round_trip(
            ("SADD", self.keys.queues, queue),
            ("LPUSH", self.keys.queue(queue), jobs.dumps(job)),
        )
        return str(job["jid"])

    def round_trip(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` together and return their replies, as a pipeline without a
        transaction does, minus the cost of building a pipeline object for a single call
        (a third of a ``push``). Error replies are raised once every reply is read.
        """
        pool = self.redis.connection_pool
        connection: Any = pool.get_connection()  # redis-py's Connection is partly untyped
        try:
            return cast(
                list[Any],
                connection.retry.call_with_retry(
                    lambda: _send_and_read(connection, commands),
                    lambda _: connection.disconnect(),
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
        """Enqueue at epoch seconds ``at``: ``ZADD schedule``, no ``enqueued_at`` in the job."""
        job.pop("enqueued_at", None)
        self.redis.zadd(self.keys.schedule, {jobs.dumps(job): float(at)})
        return str(job["jid"])

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
