"""Reliable fetch: jobs in flight are recorded per worker, atomically, and never lost.

Sidekiq OSS pops a job with BRPOP and loses it if the process dies mid-job; Celery's Redis
transport records it in an ``unacked`` hash a moment after popping it, and hands it to anybody
once ``visibility_timeout`` has passed, even while the first worker still runs it. Here a worker
moves jobs from ``queue:<name>`` into its own in-flight hash in the same Redis step
(``fetch.lua``), numbering each one (its delivery tag); acks ride along with the next fetch,
whose new jobs take over the acknowledged field numbers (only those left over are deleted), so
a busy worker spends less than one Redis command per job. A thread keeps the worker's lease
alive. Only when the lease expires (the process is gone) do other workers' recovery runs
(``recover.lua``) put its jobs back at the head of their queues, byte for byte.

While idle, a worker blocks with ``BRPOPLPUSH`` from one queue into its landing list; the next
fetch records what landed. Everything else that leaves the in-flight hash goes through
``settle.lua``: back to the queue, to the retry, schedule or dead set.

Keys (under the namespace):

``celery-sidekiq:inflight``
    HASH: each in-flight hash -> ``<lease key>\\n<queue key>\\n<landing key>``: recovery's map.
``celery-sidekiq:inflight:<consumer>:<queue>``
    HASH: field number -> job, for the jobs one worker holds from one queue.
``celery-sidekiq:landing:<consumer>:<queue>``
    LIST: what an idle wait took, until the next fetch records it.
``celery-sidekiq:lease:<consumer>``
    STRING with a TTL of ``lease`` seconds, renewed every ``lease / 4`` from a thread.

>>> fetch = ReliableFetch(Client(redis.Redis()))                   # doctest: +SKIP
>>> [(item.queue, item.tag) for item in fetch.fetch(["default"], 10)]  # doctest: +SKIP
[('default', 1), ('default', 2)]
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any, Final, Literal, NamedTuple

import redis

from . import scripts
from .client import DEAD_MAX_JOBS, DEAD_TIMEOUT, Client

logger = logging.getLogger(__name__)

#: Seconds a worker's lease lives without a renewal; its in-flight jobs go back to their
#: queues at most this long (plus one recovery interval) after it died.
DEFAULT_LEASE: Final = 40.0

#: Seconds between recovery runs of a live worker (jittered by up to a quarter), unless a
#: quarter of the lease is shorter.
DEFAULT_RECOVER_INTERVAL: Final = 10.0

#: The registry of in-flight hashes, for recovery.
REGISTRY: Final = "celery-sidekiq:inflight"

Destination = Literal["head", "tail", "retry", "schedule", "dead"]


def new_consumer_id() -> str:
    """``hostname:pid:nonce``, as Sidekiq names processes (12 hex digits of nonce)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(6).hex()}"


class Script:
    """A Lua script sent with EVALSHA on any connection, reloaded after NOSCRIPT."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = scripts.source(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> list[Any]:
        """The EVALSHA command, for a caller that sends it itself (kombu's poller)."""
        return ["EVALSHA", self.sha, len(keys), *keys, *args]

    def load(self, client: redis.Redis) -> None:
        client.script_load(self.source)

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            self.load(client)
            return client.evalsha(self.sha, len(keys), *keys, *args)


FETCH: Final = Script("fetch")
SETTLE: Final = Script("settle")
RECOVER: Final = Script("recover")


class Fetched(NamedTuple):
    """One item a fetch took: a job (with its in-flight ``tag``) or a kombu message (tag 0)."""

    queue: str
    tag: int
    payload: bytes
    is_job: bool


class ReliableFetch:
    """One consumer's in-flight bookkeeping: fetch, ack, settle, lease and recovery."""

    def __init__(
        self,
        client: Client,
        consumer_id: str | None = None,
        lease: float = DEFAULT_LEASE,
        recover_interval: float | None = None,
        background: Client | None = None,
    ) -> None:
        """``background``: the client the lease thread uses (default: ``client``)."""
        if lease < 2:
            raise ValueError(f"fetch lease must be at least 2 seconds, not {lease!r}")
        self.client = client
        self.background = background or client
        self.keys = client.keys
        self.consumer_id = consumer_id or new_consumer_id()
        self.lease = lease
        self.recover_interval = recover_interval or min(DEFAULT_RECOVER_INTERVAL, lease / 4)
        self.registry = self.keys.key(REGISTRY)
        self.lease_key = self.keys.key(f"celery-sidekiq:lease:{self.consumer_id}")
        self._next_tag = 1  # above every field number handed out; acked ones are reused
        self._registered_at = float("-inf")
        self._landed = False
        self._acks: list[tuple[str, int]] = []
        self._queues: set[str] = set()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- keys ------------------------------------------------------------------------------

    def inflight(self, queue: str) -> str:
        return self.keys.key(f"celery-sidekiq:inflight:{self.consumer_id}:{queue}")

    def landing(self, queue: str) -> str:
        return self.keys.key(f"celery-sidekiq:landing:{self.consumer_id}:{queue}")

    def _registry_value(self, queue: str) -> str:
        return f"{self.lease_key}\n{self.keys.queue(queue)}\n{self.landing(queue)}"

    # -- fetching --------------------------------------------------------------------------

    def fetch_command(self, queues: Sequence[str], count: int, *, idle: bool = False) -> list[Any]:
        """The EVALSHA that takes up to ``count`` items and carries the pending acks.

        ``idle`` also reads kombu's own key of each queue when no job is waiting.
        """
        return FETCH.command(*self._fetch_keys_args(queues, count, idle))

    def _fetch_keys_args(
        self, queues: Sequence[str], count: int, idle: bool
    ) -> tuple[list[str], list[Any]]:
        keys = [self.registry, self.lease_key]
        for queue in queues:
            keys += [
                self.keys.queue(queue),
                self.inflight(queue),
                self.landing(queue),
                self.keys.kombu(queue),
            ]
        by_key: dict[str, list[str]] = {}
        acks, self._acks = self._acks, []
        for key, tag in acks:
            by_key.setdefault(key, []).append(str(tag))
        keys += list(by_key)
        flags = "k" if idle else ""
        if self._landed:
            flags += "l"
            self._landed = False
        # Re-register now and then: after a stall long enough for the lease to lapse and a
        # recovery to drop this worker's entries, the next fetch puts them back at once.
        now = time.monotonic()
        if now - self._registered_at > self.lease / 8:
            flags += "r"
            self._registered_at = now
        args: list[Any] = [len(queues), count, self._next_tag, flags or "-", int(self.lease)]
        args += [self._registry_value(queue) for queue in queues]
        args += [" ".join(tags) for tags in by_key.values()]
        return keys, args

    def parse_fetch(self, queues: Sequence[str], reply: Sequence[Any]) -> list[Fetched]:
        """What a fetch reply holds, in the order taken.

        A reused field number is below ``_next_tag`` already; a new one moves it up.
        """
        items = [
            Fetched(queues[int(reply[i]) - 1], int(reply[i + 1]), reply[i + 2], bool(reply[i + 3]))
            for i in range(0, len(reply), 4)
        ]
        self._next_tag = max([self._next_tag - 1, *(item.tag for item in items)]) + 1
        return items

    def fetch(self, queues: Sequence[str], count: int, *, idle: bool = True) -> list[Fetched]:
        """Fetch synchronously (``basic_get`` and tests)."""
        reply = FETCH(self.client.redis, *self._fetch_keys_args(queues, count, idle))
        return self.parse_fetch(queues, reply)

    def block_command(self, queue: str, timeout: float) -> list[Any]:
        """Wait for one job of ``queue``; it lands in this worker's landing list."""
        return ["BRPOPLPUSH", self.keys.queue(queue), self.landing(queue), timeout]

    def landed(self) -> None:
        """A wait took a job: the next fetch must record it."""
        self._landed = True

    def load_scripts(self) -> None:
        FETCH.load(self.client.redis)

    # -- settling --------------------------------------------------------------------------

    def ack(self, queue: str, tag: int) -> None:
        """Mark a job done; the next fetch reuses its field for a new job or deletes it
        (``flush_acks`` deletes it when no fetch will come).

        Safe from any thread: ``list.append`` and the swap in the fetch are atomic, so each
        ack is carried once. Ack a job once: a field acked twice could be freed again after a
        new job took it over.
        """
        self._acks.append((self.inflight(queue), tag))
        if self._stopped.is_set():  # no fetch will come to carry it
            self.flush_acks()

    def flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        if acks:
            with self.client.redis.pipeline(transaction=False) as pipe:
                for key, tag in acks:
                    pipe.hdel(key, str(tag))
                pipe.execute()

    def settle(
        self,
        queue: str,
        tag: int,
        to: Destination,
        payload: str | bytes,
        *,
        at: float = 0.0,
    ) -> bool:
        """Move an in-flight job (``payload``, or what to store instead) elsewhere, atomically.

        ``head``/``tail`` of its queue, ``retry``/``schedule`` at epoch ``at``, or ``dead``.
        False if it was no longer in flight (a recovery took it): nothing is stored twice.
        """
        return settle(self.client, self.inflight(queue), tag, queue, to, payload, at=at)

    # -- lease and recovery ----------------------------------------------------------------

    def watch(self, queue: str) -> None:
        """Register ``queue``'s in-flight hash before anything can land in it."""
        self._queues.add(queue)
        self.refresh()

    def refresh(self, client: Client | None = None) -> None:
        with (client or self.client).redis.pipeline(transaction=True) as pipe:
            pipe.set(self.lease_key, "1", ex=int(self.lease))
            for queue in list(self._queues):
                pipe.hset(self.registry, self.inflight(queue), self._registry_value(queue))
            pipe.execute()

    def recover(self, client: Client | None = None) -> int:
        """Put back the in-flight jobs of every worker whose lease has expired."""
        moved = int(RECOVER((client or self.client).redis, [self.registry], []))
        if moved:
            logger.warning("recovered %d in-flight jobs of workers that died", moved)
        return moved

    def start(self) -> None:
        """Start the thread that keeps the lease alive and runs recovery."""
        if self._thread is None:
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="sidekiq-lease", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread; release the lease if nothing is left in flight.

        Whatever is still held (a requeue that failed with Redis away) keeps its registry
        entry, so recovery returns it once the lease expires.
        """
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        try:
            self.flush_acks()
            held = 0
            for queue in self._queues:
                count = self.client.redis.hlen(self.inflight(queue))
                count += self.client.redis.llen(self.landing(queue))
                held += count
                if not count:
                    self.client.redis.hdel(self.registry, self.inflight(queue))
            if held:
                logger.warning("%d jobs still in flight; back when the lease expires", held)
            else:
                self.client.redis.delete(self.lease_key)
        except redis.RedisError as exc:
            logger.warning("could not release the fetch lease: %s", exc)
        if self.background is not self.client:
            self.background.redis.close()

    def _run(self) -> None:
        # A thread, not the event loop: a solo worker blocked in a long task must keep its
        # lease, or another worker would run the same job twice.
        next_recovery = time.monotonic()
        beat = min(self.lease / 4, self.recover_interval)
        while not self._stopped.is_set():
            try:
                self.refresh(self.background)
                if time.monotonic() >= next_recovery:
                    self.recover(self.background)
                    jitter = 0.75 + random.random() / 4
                    next_recovery = time.monotonic() + self.recover_interval * jitter
            except Exception as exc:  # Redis away: the next beat tries again
                logger.warning("fetch lease: %s: %s", type(exc).__name__, exc)
            self._stopped.wait(beat)


def settle(
    client: Client,
    inflight: str,
    tag: int,
    queue: str,
    to: Destination,
    payload: str | bytes,
    *,
    at: float = 0.0,
) -> bool:
    """Move the job in field ``tag`` of the in-flight hash ``inflight`` out of flight and into
    ``to`` in one atomic step (``settle.lua``), from any process: the one that fetched it, or
    the pool process that ran it and stores its failure.

    ``head``/``tail`` of ``queue``, ``retry``/``schedule`` at epoch ``at``, or ``dead``.
    Returns False if the job was no longer in flight (a recovery took it): nothing is stored
    twice, so a settle sent twice leaves one copy. If it raises, the job is still in flight.
    """
    keys = client.keys
    now = time.time()
    mode: str
    if to in ("head", "tail"):
        target, mode, score = keys.queue(queue), to, 0.0
    elif to == "dead":
        target, mode, score = keys.dead, "dead", now
    else:
        target, mode, score = keys.key(to), "zset", at
    args = [tag, payload, mode, score, now - DEAD_TIMEOUT, DEAD_MAX_JOBS]
    return bool(SETTLE(client.redis, [inflight, target], args))
