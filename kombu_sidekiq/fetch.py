"""Reliable fetch: jobs in flight are recorded per worker, atomically, and never lost.

Sidekiq OSS pops a job with BRPOP and loses it if the process dies mid-job; Celery's Redis
transport records it in an ``unacked`` hash a moment after popping and hands it to anybody once
``visibility_timeout`` has passed, even while the first worker still runs it. Here a worker moves
each job from ``queue:<name>`` into its own in-flight list in the same Redis step
(``fetch.lua``, or ``BRPOPLPUSH`` while idle), removes it when done (acks ride along with the next
fetch, so a busy worker spends less than one Redis command per job), and keeps a lease alive
from a thread. Only when the lease expires (the process is gone) do the other workers' recovery
runs (``recover.lua``) put its jobs back at the head of their queues, byte for byte.

Keys (under the namespace):

``celery-sidekiq:inflight``
    HASH: each in-flight list -> ``<lease key>\\n<queue key>``, so recovery finds every list.
``celery-sidekiq:inflight:<consumer>:<queue>``
    LIST: the jobs one worker holds from one queue, newest first.
``celery-sidekiq:lease:<consumer>``
    STRING with a TTL of ``lease`` seconds, refreshed every ``lease / 4``.

>>> fetch = ReliableFetch(Client(redis.Redis()))                          # doctest: +SKIP
>>> fetch.fetch(["default"], 10)             # [(queue, is_job, payload), ...]  # doctest: +SKIP
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
from typing import Any, Final, cast

import redis

from . import scripts
from .client import Client

logger = logging.getLogger(__name__)

#: Seconds a worker's lease lives without a refresh; its in-flight jobs go back to their
#: queues at most this long (plus one recovery interval) after it died.
DEFAULT_LEASE: Final = 40.0

#: Seconds between recovery runs of a live worker (jittered by up to a quarter), unless a
#: quarter of the lease is shorter.
DEFAULT_RECOVER_INTERVAL: Final = 10.0

REGISTRY: Final = "celery-sidekiq:inflight"


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
REQUEUE: Final = Script("requeue")
RECOVER: Final = Script("recover")


class ReliableFetch:
    """One consumer's in-flight bookkeeping: fetch, ack, requeue, lease and recovery."""

    def __init__(
        self,
        client: Client,
        consumer_id: str | None = None,
        lease: float = DEFAULT_LEASE,
        recover_interval: float | None = None,
    ) -> None:
        if lease < 2:
            raise ValueError(f"fetch lease must be at least 2 seconds, not {lease!r}")
        self.client = client
        self.keys = client.keys
        self.consumer_id = consumer_id or new_consumer_id()
        self.lease = lease
        self.recover_interval = recover_interval or min(DEFAULT_RECOVER_INTERVAL, lease / 4)
        self.registry = self.keys.key(REGISTRY)
        self.lease_key = self.keys.key(f"celery-sidekiq:lease:{self.consumer_id}")
        self._acks: list[tuple[str, str | bytes]] = []
        self._queues: set[str] = set()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- keys ------------------------------------------------------------------------------

    def inflight(self, queue: str) -> str:
        return self.keys.key(f"celery-sidekiq:inflight:{self.consumer_id}:{queue}")

    def _registry_value(self, queue: str) -> str:
        return f"{self.lease_key}\n{self.keys.queue(queue)}"

    # -- fetching --------------------------------------------------------------------------

    def fetch_command(self, queues: Sequence[str], count: int) -> list[Any]:
        """The EVALSHA that takes up to ``count`` items and acks what is pending."""
        return FETCH.command(*self._fetch_keys_args(queues, count))

    def _fetch_keys_args(self, queues: Sequence[str], count: int) -> tuple[list[str], list[Any]]:
        keys = [self.registry, self.lease_key]
        for queue in queues:
            keys += [self.keys.queue(queue), self.inflight(queue), self.keys.kombu(queue)]
        acks, self._acks = self._acks, []
        keys += [key for key, _ in acks]
        args: list[Any] = [len(queues), count, int(self.lease)]
        args += [self._registry_value(queue) for queue in queues]
        args += [payload for _, payload in acks]
        return keys, args

    @staticmethod
    def parse_fetch(queues: Sequence[str], reply: Sequence[Any]) -> list[tuple[str, bool, bytes]]:
        """``(queue, is_job, payload)`` for each item a fetch reply holds."""
        return [
            (queues[int(reply[i]) - 1], bool(int(reply[i + 1])), reply[i + 2])
            for i in range(0, len(reply), 3)
        ]

    def fetch(self, queues: Sequence[str], count: int) -> list[tuple[str, bool, bytes]]:
        """Fetch synchronously (``basic_get`` and tests)."""
        reply = FETCH(self.client.redis, *self._fetch_keys_args(queues, count))
        return self.parse_fetch(queues, reply)

    def block_command(self, queue: str, timeout: float) -> list[Any]:
        """Wait for one job of ``queue``, moving it in flight as it arrives."""
        return ["BRPOPLPUSH", self.keys.queue(queue), self.inflight(queue), timeout]

    def load_scripts(self) -> None:
        FETCH.load(self.client.redis)

    # -- finishing -------------------------------------------------------------------------

    def ack(self, queue: str, payload: str | bytes) -> None:
        """Mark a job done; the removal rides along with the next fetch (or ``flush_acks``).

        Safe from any thread: ``list.append`` and the swap in ``fetch_command`` are atomic.
        """
        self._acks.append((self.inflight(queue), payload))

    def flush_acks(self) -> None:
        acks, self._acks = self._acks, []
        if acks:
            with self.client.redis.pipeline(transaction=False) as pipe:
                for key, payload in acks:
                    pipe.lrem(key, -1, cast(str, payload))
                pipe.execute()

    def requeue(self, queue: str, payload: str | bytes, *, tail: bool = False) -> bool:
        """Put an in-flight job back: at the head of its queue, or at the tail."""
        keys = [self.inflight(queue), self.keys.queue(queue)]
        return bool(REQUEUE(self.client.redis, keys, [payload, "tail" if tail else "head"]))

    def bury(self, queue: str, payload: str | bytes) -> None:
        """Move an in-flight job to the dead set, in one transaction."""
        with self.client.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self.inflight(queue), -1, cast(str, payload))
            self.client.kill(payload, pipe)
            pipe.execute()

    # -- lease and recovery ----------------------------------------------------------------

    def watch(self, queue: str) -> None:
        """Register ``queue``'s in-flight list before anything can land in it."""
        self._queues.add(queue)
        self.refresh()

    def refresh(self) -> None:
        with self.client.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.lease_key, "1", ex=int(self.lease))
            for queue in list(self._queues):
                pipe.hset(self.registry, self.inflight(queue), self._registry_value(queue))
            pipe.execute()

    def recover(self) -> int:
        """Put back the in-flight jobs of every worker whose lease has expired."""
        moved = int(RECOVER(self.client.redis, [self.registry], []))
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
        """Stop the thread and release the lease (after the caller requeued what it held)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        try:
            self.flush_acks()
            with self.client.redis.pipeline(transaction=True) as pipe:
                for queue in self._queues:
                    pipe.hdel(self.registry, self.inflight(queue))
                pipe.delete(self.lease_key)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("could not release the fetch lease: %s", exc)

    def _run(self) -> None:
        # A thread, not the event loop: a solo worker blocked in a long task must keep its
        # lease, or another worker would run the same job twice.
        next_recovery = time.monotonic()
        beat = self.lease / 4
        while not self._stopped.is_set():
            try:
                self.refresh()
                if time.monotonic() >= next_recovery:
                    self.recover()
                    jitter = 0.75 + random.random() / 4
                    next_recovery = time.monotonic() + self.recover_interval * jitter
            except Exception as exc:  # Redis away: the next beat tries again
                logger.warning("fetch lease: %s: %s", type(exc).__name__, exc)
            self._stopped.wait(min(beat, self.recover_interval))
