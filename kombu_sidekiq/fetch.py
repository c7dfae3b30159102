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

from . import job as jobs
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


GIVEBACK: Final = Script("giveback")

#: Sidekiq Pro's ``super_fetch`` default: a job recovered from dead workers more than this
#: many times is poison (it kills whoever takes it) and goes to the dead set instead.
DEFAULT_MAX_RECOVERIES: Final = 3

#: The hash counting each job's recoveries (by the SHA1 of its bytes).
RECOVERIES: Final = "celery-sidekiq:recoveries"

#: Seconds the recovery counts live after the last recovery.
RECOVERIES_TTL: Final = 24 * 3600

#: What a poison job records in the dead set, for the Web UI's Dead tab.
POISON_ERROR_CLASS: Final = "CelerySidekiq::PoisonJob"

#: Seconds between two tries, after the stop, to settle what the worker still held.
DRAIN_INTERVAL: Final = 0.5

#: Seconds between two log lines about one unusable key (it is met on every fetch).
UNUSABLE_LOG_INTERVAL: Final = 60.0


class Fetched(NamedTuple):
    """One item a fetch took: a job (with its in-flight ``tag``) or a kombu message (tag 0)."""

    queue: str
    tag: int
    payload: bytes
    is_job: bool


class _Sent(NamedTuple):
    """A fetch sent and not yet answered: what a lost reply leaves in doubt."""

    size: int
    acks: list[tuple[str, int, str | bytes | None]]


class ReliableFetch:
    """One consumer's in-flight bookkeeping: fetch, ack, settle, give back, lease, recovery.

    The worker knows which of its in-flight fields hold jobs delivered to its tasks (``held``);
    Redis may hold more: what a fetch took whose reply was lost, or a job whose move elsewhere
    failed. Those are given back to their queues (``give_back``) before the next fetch, and
    every job not running is given back at a warm stop.
    """

    def __init__(
        self,
        client: Client,
        consumer_id: str | None = None,
        lease: float = DEFAULT_LEASE,
        recover_interval: float | None = None,
        background: Client | None = None,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
    ) -> None:
        """``background``: the client the lease thread uses (default: ``client``).
        ``max_recoveries``: recoveries before a job is poison (0: never)."""
        if lease < 2:
            raise ValueError(f"fetch lease must be at least 2 seconds, not {lease!r}")
        if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, int):
            raise ValueError(f"max_recoveries must be a whole number, not {max_recoveries!r}")
        if max_recoveries < 0:
            raise ValueError(f"max_recoveries must be 0 (no limit) or more, not {max_recoveries}")
        self.client = client
        self.background = background or client
        self.keys = client.keys
        self.consumer_id = consumer_id or new_consumer_id()
        self.lease = lease
        self.recover_interval = recover_interval or min(DEFAULT_RECOVER_INTERVAL, lease / 4)
        self.max_recoveries = max_recoveries
        self.registry = self.keys.key(REGISTRY)
        self.lease_key = self.keys.key(f"celery-sidekiq:lease:{self.consumer_id}")
        self._next_tag = 1  # above every field number handed out; acked ones are reused
        self._registered_at = float("-inf")
        self._landed = False
        # One lock for what ack() (any thread) and the fetching thread share.
        self._lock = threading.Lock()
        self._acks: list[tuple[str, int, str | bytes | None]] = []
        self._held: dict[str, dict[int, str | bytes]] = {}
        # Acks sent with a fetch whose reply was lost: that fetch may have given their fields
        # to new jobs, so they are never reused; give_back deletes the ones still holding the
        # job acknowledged.
        self._doubtful: list[tuple[str, int, str | bytes | None]] = []
        self._sent: _Sent | None = None
        self._sweep = False
        self._reported: dict[str, float] = {}
        self._queues: set[str] = set()
        self._named: set[tuple[str, int]] = set()  # running jobs logged at the stop
        self._stopped = threading.Event()
        self._abandoned = threading.Event()
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

        ``idle`` also reads kombu's own key of each queue when no job is waiting. Send it
        once: its reply goes to :meth:`parse_fetch`, or, if it never comes, call :meth:`lost`.
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
        with self._lock:
            acks, self._acks = self._acks, []
        for queue, tag, _ in acks:
            by_key.setdefault(self.inflight(queue), []).append(str(tag))
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
        self._sent = _Sent(count, acks)
        return keys, args

    def parse_fetch(self, queues: Sequence[str], reply: Sequence[Any]) -> list[Fetched]:
        """What a fetch reply holds, in the order taken.

        A reused field number is below ``_next_tag`` already; a new one moves it up.
        """
        self._sent = None
        items = []
        for i in range(0, len(reply), 4):
            queue, tag = queues[int(reply[i]) - 1], int(reply[i + 1])
            if tag < 0:
                self._unusable(queue, reply[i + 2])
            else:
                items.append(Fetched(queue, tag, reply[i + 2], bool(reply[i + 3])))
        self._next_tag = max([self._next_tag - 1, *(item.tag for item in items)]) + 1
        return items

    def lost(self) -> None:
        """The reply to the last fetch or wait sent will never be read (the connection broke,
        timed out or was dropped as stale): it may have run, or not.

        So its acks are never reused (that fetch may have given their fields to new jobs), the
        new numbers it may have taken are skipped, a landing list may hold a job, and the next
        fetch gives back what that one took (:meth:`give_back`).
        """
        sent, self._sent = self._sent, None
        if sent is not None:
            self._doubtful += sent.acks
            self._next_tag += sent.size
        self._landed = True
        self._sweep = True

    def not_run(self) -> None:
        """The last fetch sent was refused before it ran (NOSCRIPT): nothing is in doubt."""
        if self._sent is not None:
            with self._lock:
                self._acks = self._sent.acks + self._acks
            self._sent = None

    @property
    def needs_sweep(self) -> bool:
        """Redis may hold jobs of this worker that no task of it runs: call :meth:`give_back`."""
        return self._sweep

    def sweep(self) -> None:
        """Ask for a :meth:`give_back` before the next fetch (a cancelled queue landed a job)."""
        self._sweep = True

    def fetch(self, queues: Sequence[str], count: int, *, idle: bool = True) -> list[Fetched]:
        """Fetch synchronously (``basic_get`` and tests), sent once and never re-sent."""
        if self._sweep:
            self.give_back()
        keys, args = self._fetch_keys_args(queues, count, idle)
        try:
            reply = _call_once(self.client.redis, FETCH, keys, args)
        except BaseException:
            self.lost()
            raise
        return self.parse_fetch(queues, reply)

    def block_command(self, queue: str, timeout: float) -> list[Any]:
        """Wait for one job of ``queue``; it lands in this worker's landing list."""
        return ["BRPOPLPUSH", self.keys.queue(queue), self.landing(queue), timeout]

    def landed(self) -> None:
        """A wait took a job: the next fetch must record it."""
        self._landed = True

    def load_scripts(self) -> None:
        FETCH.load(self.client.redis)

    def _unusable(self, queue: str, error: Any) -> None:
        now = time.monotonic()
        if now - self._reported.get(queue, float("-inf")) >= UNUSABLE_LOG_INTERVAL:
            self._reported[queue] = now
            text = error.decode("utf-8", "replace") if isinstance(error, bytes) else error
            logger.error("queue %r: skipped, a key cannot be used (%s)", queue, text)

    # -- what the worker holds -------------------------------------------------------------

    def delivered(self, queue: str, tag: int, payload: str | bytes) -> None:
        """A fetched job went to a task: keep it in flight until it is acked or settled."""
        with self._lock:
            self._held.setdefault(queue, {})[tag] = payload

    def ack(self, queue: str, tag: int, payload: str | bytes | None = None) -> None:
        """Mark a job done; the next fetch reuses its field for a new job or deletes it
        (``flush_acks`` deletes it when no fetch will come).

        Safe from any thread. Ack a job once: a field acked twice could be freed again after a
        new job took it over. ``payload``, the job as fetched, lets a give-back after a lost
        reply tell the acknowledged job from a new one in the same field.
        """
        with self._lock:
            self._acks.append((queue, tag, payload))
            self._held.get(queue, {}).pop(tag, None)
        if self._stopped.is_set() and self._thread is None:  # nothing will come to carry it
            try:
                self.flush_acks()
            except redis.RedisError as exc:
                logger.warning("could not acknowledge a job after the stop: %s", exc)

    def flush_acks(self, client: Client | None = None) -> None:
        """Delete the acknowledged fields now (no fetch will carry them). If Redis cannot be
        reached, the acks are kept for the next try: a lost ack would run its job again."""
        with self._lock:
            if self._doubtful:
                return  # give_back decides which still hold their job
            acks, self._acks = self._acks, []
        if acks:
            try:
                with (client or self.client).redis.pipeline(transaction=False) as pipe:
                    for queue, tag, _ in acks:
                        pipe.hdel(self.inflight(queue), str(tag))
                    pipe.execute()
            except BaseException:
                with self._lock:
                    self._acks = acks + self._acks
                raise

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
        False if it was no longer in flight (a recovery took it): nothing is stored twice. If it
        raises, the job is still in flight, no task holds it, and the next give-back returns it.
        """
        with self._lock:
            self._held.get(queue, {}).pop(tag, None)
        return settle(self.client, self.inflight(queue), tag, queue, to, payload, at=at)

    def give_back(self, client: Client | None = None) -> int:
        """Put back at the head of their queues, in one step per call, every job this worker
        holds in Redis that no task of it holds: what a lost reply took, what landed after a
        cancel, what a failed move left. Acknowledged fields still holding their job are
        deleted. Returns how many jobs went back; on an error nothing is lost and the next
        call tries again.
        """
        queues = sorted(self._queues)
        with self._lock:
            acks = self._doubtful + self._acks
            self._doubtful, self._acks = [], []
            kept = [" ".join(map(str, self._held.get(queue, {}))) for queue in queues]
        index = {queue: i for i, queue in enumerate(queues, 1)}
        keys: list[str] = []
        for queue in queues:
            keys += [self.keys.queue(queue), self.inflight(queue), self.landing(queue)]
        args: list[Any] = [len(queues), *kept]
        for queue, tag, payload in acks:
            if queue not in index:  # a queue never watched: its hash is not in the registry
                index[queue] = len(queues) + 1
                queues.append(queue)
                keys += [self.keys.queue(queue), self.inflight(queue), self.landing(queue)]
                args[0] += 1
                args.insert(args[0], "")
            args += [index[queue], tag, "" if payload is None else payload]
        try:
            reply = _call_once((client or self.client).redis, GIVEBACK, keys, args)
        except BaseException:
            with self._lock:
                self._doubtful = acks + self._doubtful
            raise
        self._sweep = False
        moved = int(reply[0])
        for i in reply[1:]:
            self._unusable(queues[int(i) - 1], "a key of this queue has another type")
        if moved:
            logger.warning("gave back %d jobs that no task of this worker had started", moved)
        return moved

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
        """Put back the in-flight jobs of every worker whose lease has expired; a job
        recovered more than ``max_recoveries`` times goes to the dead set instead."""
        client = client or self.client
        now = time.time()
        keys = [self.registry, self.keys.key(RECOVERIES), self.keys.dead]
        args = [self.max_recoveries, now, now - DEAD_TIMEOUT, DEAD_MAX_JOBS, RECOVERIES_TTL]
        moved, poison, skipped = RECOVER(client.redis, keys, args)
        for entry in skipped:
            self._unusable(_text(entry), "its registry entry or keys cannot be used")
        for payload in poison:
            self._poisoned(client, payload)
        if moved:
            logger.warning("recovered %d in-flight jobs of workers that died", moved)
        return int(moved)

    def _poisoned(self, client: Client, payload: bytes) -> None:
        """Say why a poison job is dead: in the log, and in the job when it is readable
        (replaced in the dead set in one step; left untouched otherwise)."""
        reason = (
            f"recovered from dead workers more than {self.max_recoveries} times: it may kill "
            "the workers that take it (raise fetch_max_recoveries, or 0 for no limit)"
        )
        logger.error("poison job moved to the dead set (%s): %.200r", reason, payload)
        try:
            job = jobs.parse(payload)
        except jobs.InvalidJob:
            return
        job.setdefault("failed_at", jobs.now_timestamp(client.version))
        job["error_class"] = POISON_ERROR_CLASS
        job["error_message"] = reason
        try:
            _replace_member(client.redis, self.keys.dead, payload, jobs.dumps(job))
        except redis.RedisError as exc:
            logger.warning("poison job left as it was in the dead set: %s", exc)

    def start(self) -> None:
        """Start the thread that keeps the lease alive and runs recovery."""
        if self._thread is None:
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="sidekiq-lease", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop consuming: give back at once every job no task holds, and release the lease
        once nothing is left in flight.

        A job a task still runs (its connection was lost, and the task goes on), an ack that
        Redis did not take yet, a give-back Redis refused: until each is settled, the lease
        thread goes on in the background, renewing the lease (so nobody else runs those jobs)
        and trying again, and then releases everything. If the process dies first, its lease
        expires and recovery returns what is left.
        """
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._release(self.client):
            self._close_background()
            return
        self._thread = threading.Thread(target=self._drain, name="sidekiq-lease", daemon=True)
        self._thread.start()

    def _release(self, client: Client) -> bool:
        """Give back and release what can be; True once nothing is left in flight."""
        try:
            self.give_back(client)
            with self._lock:
                running = {queue: dict(tags) for queue, tags in self._held.items() if tags}
                unsettled = bool(self._acks or self._doubtful)
            for queue in self._queues - set(running):
                client.redis.hdel(self.registry, self.inflight(queue))
            if running or unsettled:
                self._log_running(running)
                return False
            client.redis.delete(self.lease_key)
            return True
        except redis.RedisError as exc:
            logger.warning("could not give back held jobs or release the lease yet: %s", exc)
            return False

    def _log_running(self, running: dict[str, dict[int, str | bytes]]) -> None:
        for queue, tags in running.items():
            for tag, payload in tags.items():
                if (queue, tag) not in self._named:
                    self._named.add((queue, tag))
                    logger.warning(
                        "queue %r: job %s still running at stop; this worker keeps it until "
                        "it ends (or recovery returns it if the worker dies)",
                        queue, _describe(payload),
                    )  # fmt: skip

    def _drain(self) -> None:
        # After the stop: the lease stays alive while jobs are left, and each round tries to
        # settle them; the background client is out of reach of kombu's cleanup.
        while not self._abandoned.wait(DRAIN_INTERVAL):
            try:
                self.refresh(self.background)
            except redis.RedisError as exc:
                logger.warning("fetch lease: %s: %s", type(exc).__name__, exc)
                continue
            try:
                self.flush_acks(self.background)
            except redis.RedisError:
                continue
            if self._release(self.background):
                logger.info("every job held at the stop is settled; lease released")
                self._close_background()
                return

    def abandon(self) -> None:
        """Stop keeping, after the stop, what is still held: its lease expires, and recovery
        returns it (a process about to exit, a test that will never ack)."""
        self._abandoned.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _close_background(self) -> None:
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


def _call_once(client: Any, script: Script, keys: list[str], args: list[Any]) -> Any:
    """Run ``script`` on one connection of ``client``'s pool, sent exactly once.

    redis-py's retry would send it again after a timeout, and a fetch or give-back that runs
    twice hands out fields twice. A NOSCRIPT reply (the script did not run) loads it and sends
    again; any other failure is raised, and the connection is dropped (its reply may come).
    """
    pool = client.connection_pool
    connection: Any = pool.get_connection()
    try:
        for attempt in range(2):
            try:
                connection.send_command(*script.command(keys, args))
                return client.parse_response(connection, "EVALSHA")
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                script.load(client)
            except redis.exceptions.ResponseError:
                raise
            except BaseException:
                connection.disconnect()
                raise
    finally:
        pool.release(connection)


def _replace_member(client: redis.Redis, zset: str, old: bytes, new: str) -> None:
    """Replace ``old`` by ``new`` in ``zset`` at the same score, in one transaction, unless
    somebody moved ``old`` meanwhile (a person pressing Retry in the Web UI)."""
    pipe: Any
    with client.pipeline(transaction=True) as pipe:
        for _ in range(3):
            try:
                pipe.watch(zset)
                score = pipe.zscore(zset, old)
                if score is None:
                    return
                pipe.multi()
                pipe.zrem(zset, old)
                pipe.zadd(zset, {new: score})
                pipe.execute()
                return
            except redis.WatchError:
                continue


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _describe(payload: str | bytes) -> str:
    """``jid 3f2a... (HardJob)``, for the log; the start of the payload if it is no job."""
    try:
        job = jobs.parse(payload)
    except jobs.InvalidJob:
        return f"{_text(payload)[:80]!r}"
    return f"{job.get('jid')} ({job['class']})"


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
