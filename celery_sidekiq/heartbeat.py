"""The worker as a Sidekiq process: heartbeat, work in progress, stats and signals.

Every Celery worker (its main process) registers as one Sidekiq process, so the Web UI's Busy
page, ``Sidekiq::ProcessSet``, ``Sidekiq::Workers`` and ``Sidekiq::Stats`` show it beside the
Ruby ones. Each beat (every 5 s, Sidekiq 6's pace; ``setup(beat_interval=...)``) writes, in one
MULTI:

* ``stat:processed``, ``stat:failed`` and their ``:YYYY-MM-DD`` (UTC) keys: INCRBY of the
  executions since the last beat; the day keys expire after 5 years;
* ``<identity>:work`` (Sidekiq 6.4.2+) and, for ``sidekiq_version=6``, ``<identity>:workers``
  (what 6.4.1 reads): tid -> ``{"queue", "payload", "run_at"}`` of every running job;
* ``SADD processes <identity>`` and the HASH ``<identity>``: ``info`` (JSON), ``busy``,
  ``beat``, ``quiet``, ``rss``, ``rtt_us``, ``concurrency``; TTL 60 s, so a worker that died
  drops out of the UI within a minute;
* ``RPOP <identity>-signals``: the UI's Quiet (``TSTP``) stops consuming, Stop (``TERM``) is a
  warm shutdown, ``TTIN`` (or 8.x's ``INFO``) logs every thread's stack.

A clean shutdown flushes the last counts and removes the process (SREM, UNLINK of its keys);
during a warm shutdown the process stays listed, quiet, until its running jobs are done.

What counts: every task the worker runs, Sidekiq job or not (on this transport every task
message is a Sidekiq job). "processed" counts every execution, failures included, as Sidekiq
does; "failed" counts executions that raised, Celery's ``Retry`` included (the job raised and
will run again, as in Sidekiq's retry), ``Ignore`` and ``Reject`` excluded (the task chose to
drop or return its message; it did not fail). A job of a class no task runs, failed by the
unknown-class intake, counts as processed and failed, as sidekiq.rb counts a missing constant.
Counting happens in the main process, in the pool's completion callbacks of each request
(``Request.on_success``/``on_failure``), which run there for every pool (solo, threads,
prefork); ``task_success``/``task_failure`` would not do, as they fire inside prefork's child
processes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

from celery import bootsteps
from celery import signals as celery_signals
from celery.exceptions import Ignore, Reject
from celery.worker import state as worker_state

import kombu_sidekiq
from kombu_sidekiq.client import Client
from kombu_sidekiq.codec import RAW_JOB_PROPERTY
from kombu_sidekiq.order import QueueOrder

from .retry import processor_of
from .scheduled import client_for

logger = logging.getLogger(__name__)

#: Seconds between beats: Sidekiq 6's ``BEAT_PAUSE`` (7.0+ beats every 10 s; the UI accepts both).
DEFAULT_BEAT_INTERVAL: Final = 5.0

#: TTL of the process hash and the work hash: a process that stops beating vanishes from the UI.
PROCESS_TTL: Final = 60

#: Sidekiq's ``STATS_TTL``: the per-day counters live five years.
STATS_TTL: Final = 5 * 365 * 24 * 3600

#: What this bridge calls itself in ``info.version`` (7.0.2+ show it on the Busy page).
VERSION_LABEL: Final = f"celery-sidekiq {kombu_sidekiq.__version__}"

#: Signal names the UI and ``Sidekiq::Process`` send, and what they mean here.
QUIET_SIGNALS: Final = frozenset({"TSTP"})
STOP_SIGNALS: Final = frozenset({"TERM"})
DUMP_SIGNALS: Final = frozenset({"TTIN", "INFO"})


def new_identity(hostname: str | None = None, pid: int | None = None) -> str:
    """``hostname:pid:nonce`` as Sidekiq builds it: ``$DYNO`` or the host name, and 12 hex."""
    host = hostname or os.environ.get("DYNO") or socket.gethostname()
    return f"{host}:{pid or os.getpid()}:{os.urandom(6).hex()}"


def work_keys(identity: str, version: int) -> tuple[str, ...]:
    """The work hash names ``version`` reads: 6.4.1 (Debian's) reads ``:workers``, 6.4.2 and
    later ``:work``; for 6 we write both, as we cannot tell 6.4.1 from 6.5."""
    return (f"{identity}:work", f"{identity}:workers") if version == 6 else (f"{identity}:work",)


def rss_kb(pids: Iterable[int]) -> int:
    """Resident memory of ``pids`` in KB (VmRSS, as Sidekiq reads it); 0 where unknown."""
    total = 0
    for pid in set(pids):
        try:
            with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
                total += next(
                    (int(line.split()[1]) for line in status if line.startswith("VmRSS:")), 0
                )
        except (OSError, ValueError, IndexError):
            continue
    return total


class Tally:
    """Executions since the last flush, counted by pool callbacks (any thread), taken by beats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processed = 0
        self._failed = 0

    def count(self, failed: bool) -> None:
        with self._lock:
            self._processed += 1
            self._failed += int(failed)

    def take(self) -> tuple[int, int]:
        """``(processed, failed)`` since the last take; the tally restarts from zero."""
        with self._lock:
            taken = (self._processed, self._failed)
            self._processed = self._failed = 0
        return taken

    def give_back(self, processed: int, failed: int) -> None:
        """Return counts a failed flush could not write, so the next beat writes them."""
        with self._lock:
            self._processed += processed
            self._failed += failed


@dataclass(frozen=True)
class Snapshot:
    """The process as one beat reports it."""

    info: dict[str, Any]
    concurrency: int
    quiet: bool
    rss_kb: int
    #: tid -> JSON ``{"queue", "payload", "run_at"}`` of each running job
    work: dict[str, str] = field(default_factory=dict)


class Heartbeat:
    """Writes one process's beats in a daemon thread: ``start()``, ``stop()``, ``clear()``.

    ``snapshot`` describes the process at each beat; ``on_signal`` gets each signal name
    popped from ``<identity>-signals``. A failed beat (Redis down) is logged and retried at the
    next one, keeping its counts; nothing here ever raises into the worker.
    """

    def __init__(
        self,
        client: Callable[[], Client],
        identity: str,
        version: int,
        snapshot: Callable[[], Snapshot],
        on_signal: Callable[[str], None],
        tally: Tally | None = None,
        interval: float = DEFAULT_BEAT_INTERVAL,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"beat_interval must be > 0 seconds, not {interval!r}")
        self._client = client
        self.identity = identity
        self.version = version
        self._snapshot = snapshot
        self._on_signal = on_signal
        self.tally = tally or Tally()
        self.interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # -- thread ------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(target=self.run, name="sidekiq-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop beating (the entries stay until ``clear()`` or their TTL)."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        # The first beat goes out at once: the process shows up as soon as the worker starts.
        while True:
            self.tick()
            if self._stopped.wait(self.interval):
                break

    def tick(self) -> None:
        """One beat and the signal it brought; logs failures instead of raising."""
        try:
            popped = self.beat(self._snapshot())
        except Exception as exc:
            self._outage(exc)
            return
        self._recovered()
        if popped is not None:
            self._obey(popped)

    # -- Redis -------------------------------------------------------------------------------

    def beat(self, snapshot: Snapshot) -> str | None:
        """Write one beat in one MULTI; return the signal it popped, if any."""
        client = self._client()
        rtt_us = self._rtt_us(client)
        processed, failed = self.tally.take()
        try:
            with client.redis.pipeline(transaction=True) as tx:
                self._write_stats(tx, client, processed, failed)
                self._write_work(tx, client, snapshot.work)
                self._write_process(tx, client, snapshot, rtt_us)
                tx.rpop(client.keys.key(f"{self.identity}-signals"))
                replies = tx.execute()
        except BaseException:
            self.tally.give_back(processed, failed)  # don't lose counts to an outage
            raise
        popped = replies[-1]
        return popped.decode() if isinstance(popped, bytes) else popped

    def clear(self) -> None:
        """Clean shutdown: flush the last counts, leave ``processes``, delete our keys."""
        processed, failed = self.tally.take()
        try:
            client = self._client()
            keys = client.keys
            with client.redis.pipeline(transaction=True) as tx:
                self._write_stats(tx, client, processed, failed)
                tx.srem(keys.processes, self.identity)
                tx.unlink(
                    keys.key(self.identity),
                    keys.key(f"{self.identity}-signals"),
                    *(keys.key(name) for name in work_keys(self.identity, self.version)),
                )
                tx.execute()
        except Exception as exc:
            # The TTL removes the process within a minute; the counts are lost, as Sidekiq's are.
            logger.warning(
                "sidekiq heartbeat: could not deregister %s (%s: %s); lost %d processed, %d failed",
                self.identity, type(exc).__name__, exc, processed, failed,
            )  # fmt: skip

    def _write_stats(self, tx: Any, client: Client, processed: int, failed: int) -> None:
        # Skipped when idle: an INCRBY of 0 changes nothing but the day keys' TTL.
        if not processed and not failed:
            return
        today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        for name, amount in (("processed", processed), ("failed", failed)):
            day_key = client.keys.key(f"stat:{name}:{today}")
            tx.incrby(client.keys.key(f"stat:{name}"), amount)
            tx.incrby(day_key, amount)
            tx.expire(day_key, STATS_TTL)

    def _write_work(self, tx: Any, client: Client, work: dict[str, str]) -> None:
        # Rewritten whole each beat (jobs that ended since the last beat must go), in the same
        # MULTI as the process hash so a reader never sees a half-written work list. Like 7.2.3+,
        # nothing is written when idle: the UNLINK alone leaves no key behind.
        for name in work_keys(self.identity, self.version):
            key = client.keys.key(name)
            tx.unlink(key)
            if work:
                tx.hset(key, mapping=work)
                tx.expire(key, PROCESS_TTL)

    def _write_process(self, tx: Any, client: Client, snapshot: Snapshot, rtt_us: int) -> None:
        # The SET member is the bare identity (a namespace prefixes keys, never values); the
        # hash itself is a key, so it takes the namespace.
        key = client.keys.key(self.identity)
        tx.sadd(client.keys.processes, self.identity)
        tx.hset(
            key,
            mapping={
                "info": json.dumps(snapshot.info, separators=(",", ":")),
                "busy": len(snapshot.work),
                "beat": repr(time.time()),
                "quiet": "true" if snapshot.quiet else "false",
                "rss": snapshot.rss_kb,
                "rtt_us": rtt_us,
                # 8.1.2+ read concurrency from its own field, not from info.
                "concurrency": snapshot.concurrency,
            },
        )
        tx.expire(key, PROCESS_TTL)

    @staticmethod
    def _rtt_us(client: Client) -> int:
        """Round trip of a PING in µs, as Sidekiq measures it for the ``rtt_us`` field."""
        start = time.monotonic()
        client.redis.ping()
        return int((time.monotonic() - start) * 1_000_000)

    # -- failures and signals ---------------------------------------------------------------

    def _outage(self, exc: Exception) -> None:
        # Once per outage at WARNING; every beat would flood the log while Redis is away.
        log = logger.debug if self._failing else logger.warning
        log(
            "sidekiq heartbeat failed, retrying every %.1fs: %s: %s",
            self.interval,
            type(exc).__name__,
            exc,
        )
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logger.info("sidekiq heartbeat: Redis is back; %s registered again", self.identity)
            self._failing = False

    def _obey(self, name: str) -> None:
        try:
            self._on_signal(name)
        except Exception:
            logger.exception("sidekiq heartbeat: signal %r failed", name)


class WorkerProcess:
    """One Celery worker as Sidekiq sees it: what it reports, and how it obeys signals."""

    def __init__(
        self, worker: Any, identity: str, version: int, order: QueueOrder | None = None
    ) -> None:
        self.worker = worker
        self.identity = identity
        self.version = version
        self.order = order or QueueOrder()
        self.hostname = identity.rsplit(":", 2)[0]
        self.pid = os.getpid()
        self.started_at = time.time()
        self.quiet = False
        self._queues = self._consumed_queues()

    # -- what a beat reports --------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        if not self.quiet:  # quiet cancels every queue; keep showing the ones it had
            self._queues = self._consumed_queues() or self._queues
        return Snapshot(
            info=self.info(),
            concurrency=self.concurrency(),
            quiet=self.quiet,
            rss_kb=rss_kb([self.pid, *self._pool_pids()]),
            work=self.work(),
        )

    def info(self) -> dict[str, Any]:
        """The ``info`` JSON, with the keys the configured Sidekiq version writes.

        The queues are listed in the order the worker takes them (strict: that order), and the
        weights say what the transport does (``kombu_sidekiq.order``): 0 for every queue of a
        strict order, which the Web UI shows as the bare names, else each queue's weight
        (random: all 1), shown as ``name: weight``. 6.x reads no weights (its Busy page lists
        ``queues`` as given); 7.0.3+ reads ``weights``, one map per capsule; 8.0.9+ reads
        ``capsules`` with Sidekiq's ``mode`` (strict, weighted or random).
        """
        queues = self.order.ranked(self._queues)
        info: dict[str, Any] = {
            "hostname": self.hostname,
            "started_at": self.started_at,
            "pid": self.pid,
            "tag": str(self.worker.hostname),  # the Celery node name, e.g. "worker1@host"
            "concurrency": self.concurrency(),
            "queues": queues,
            "labels": ["celery"],
            "identity": self.identity,
        }
        weights = self.order.reported(queues)
        if self.version >= 7:
            info.update(version=VERSION_LABEL, embedded=False, weights=[weights])
        if self.version >= 8:
            # 8.0.9 reads queues and weights only from here.
            info["capsules"] = {
                "default": {
                    "concurrency": self.concurrency(),
                    "mode": self.order.mode,
                    "weights": weights,
                }
            }
        return info

    def concurrency(self) -> int:
        worker = self.worker
        limit = getattr(worker, "max_concurrency", None) or getattr(worker.pool, "limit", None)
        return int(limit or worker.concurrency or 1)

    def work(self) -> dict[str, str]:
        """tid -> JSON of each running job, from the main process's active requests."""
        return dict(work_entry(request, self.pid) for request in _active_requests())

    def _consumed_queues(self) -> list[str]:
        return list(self.worker.app.amqp.queues.consume_from or ())

    def _pool_pids(self) -> list[int]:
        # prefork's children hold the jobs' memory; the UI shows one process, so it gets the sum.
        try:
            return [int(pid) for pid in self.worker.pool.info.get("processes") or ()]
        except Exception:  # a pool not started yet, or one that reports no pids
            return []

    # -- signals ------------------------------------------------------------------------------

    def obey(self, name: str) -> None:
        """Act on a signal the UI sent, as sidekiq.rb's signal handlers do."""
        logger.info("sidekiq heartbeat: got %s from Redis", name)
        if name in QUIET_SIGNALS:
            self.quiet_down()
        elif name in STOP_SIGNALS:
            self.quiet = True
            os.kill(self.pid, signal.SIGTERM)  # Celery's warm shutdown, as if from the shell
        elif name in DUMP_SIGNALS:
            logger.warning("sidekiq heartbeat: thread dump\n%s", thread_dump())
        else:
            logger.warning("sidekiq heartbeat: ignoring unknown signal %r", name)

    def quiet_down(self) -> None:
        """Stop taking jobs; running ones finish. The consumer belongs to the worker's event
        loop, so the cancel is handed to that loop instead of being done from this thread."""
        self.quiet = True
        self.worker.consumer.call_soon(self._cancel_task_queues)

    def _cancel_task_queues(self) -> None:
        consumer = self.worker.consumer
        for queue in list(consumer.app.amqp.queues.consume_from or ()):
            try:
                consumer.cancel_task_queue(queue)
            except Exception:  # an exception here would break the consumer's event loop
                logger.exception("sidekiq heartbeat: could not stop consuming %r", queue)


def _active_requests() -> list[Any]:
    # Pool threads add and remove requests while we copy the set: retry until a copy succeeds.
    for _ in range(10):
        try:
            return list(worker_state.active_requests)
        except RuntimeError:  # "Set changed size during iteration"
            continue
    return []


def work_entry(request: Any, pid: int) -> tuple[str, str]:
    """``(tid, JSON)`` of a running request for the work hash.

    The tid is what Sidekiq uses, ``(object id ^ pid)`` in base 36: unique per running job in
    every pool (threads share a pid, prefork children run one job each). ``payload`` is the
    job's original JSON string, as Sidekiq stores it; a task that came without one (not from a
    Sidekiq queue) gets a minimal job so the Busy page can still show its class and args.
    """
    queue = (request.delivery_info or {}).get("routing_key") or ""
    properties = getattr(request.message, "properties", None) or {}
    payload = properties.get(RAW_JOB_PROPERTY)
    if not isinstance(payload, str):
        job = {
            "class": request.name,
            "args": list(request.args or ()),
            "queue": queue,
            "jid": request.id,
        }
        payload = json.dumps(job, default=repr)
    run_at = int(request.time_start or time.time())
    entry = json.dumps({"queue": queue, "payload": payload, "run_at": run_at})
    return _base36(id(request) ^ pid), entry


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, digit = divmod(number, 36)
        out = digits[digit] + out
        if not number:
            return out


def thread_dump() -> str:
    """Every thread's stack, as Sidekiq's TTIN handler logs them."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"Thread {names.get(ident, '?')} ({ident}):\n{stack}")
    return "\n".join(parts)


def count_executions(request: Any, tally: Tally) -> None:
    """Make ``request`` count its execution in ``tally`` when the pool reports it done.

    The pool calls back ``request.on_success((failed, retval, runtime))`` after the task ran
    (which hands a failure on to ``request.on_failure``), or ``on_failure`` directly when the
    pool lost it. Both run in the main process whatever the pool. The wrappers sit on the
    instance and remove themselves after the call, which also breaks the reference cycle.
    """
    on_success, on_failure = request.on_success, request.on_failure

    def done() -> None:
        vars(request).pop("on_success", None)
        vars(request).pop("on_failure", None)

    def success(result: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(result, tuple) and result and not result[0]:
            tally.count(failed=False)  # a failed result goes on to on_failure, counted there
        try:
            return on_success(result, *args, **kwargs)
        finally:
            done()

    def failure(exc_info: Any, *args: Any, **kwargs: Any) -> Any:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # prefork wraps it in ExceptionWithTraceback
        tally.count(failed=not isinstance(exc, (Ignore, Reject)))
        done()
        return on_failure(exc_info, *args, **kwargs)

    request.on_success = success
    request.on_failure = failure


class HeartbeatStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Registers the worker as a Sidekiq process for as long as it runs.

    A warm shutdown stops this step before the pool, which then waits for the running jobs:
    the step keeps beating (as quiet) through that wait, as Sidekiq does, and deregisters on
    ``worker_shutdown``, sent once the pool is done, so the last flush counts those jobs too.
    A cold shutdown deregisters at once.

    It starts after the pool: prefork forks its children at pool start, and a thread that
    holds a redis-py pool lock at that instant leaves the lock held forever in the child,
    whose after-fork cleanup (kombu's ``_after_fork``) then blocks on it.
    """

    label = "sidekiq heartbeat"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        from .app import config_of

        config = config_of(worker.app)
        self.version = config.sidekiq_version
        self.interval = config.beat_interval
        self.config_of = config_of
        self.tally = Tally()
        self.worker = worker
        self.heartbeat: Heartbeat | None = None
        self.process: WorkerProcess | None = None
        self.connection: Any = None  # a kombu Connection, once started

    def start(self, worker: Any) -> None:
        self.connection = worker.app.connection_for_write()
        # The order as the worker's queue step left it (-q on the command line may set it).
        order = self.config_of(worker.app).order
        self.process = WorkerProcess(worker, new_identity(), self.version, order)
        self.heartbeat = Heartbeat(
            client_for(self.connection),
            self.process.identity,
            self.version,
            snapshot=self.process.snapshot,
            on_signal=self.process.obey,
            tally=self.tally,
            interval=self.interval,
        )
        celery_signals.task_received.connect(self._on_task_received, weak=False)
        processor_of(worker.app).unknown.count = self.tally.count  # jobs no task runs
        celery_signals.worker_shutting_down.connect(self._on_shutting_down, weak=False)
        celery_signals.worker_shutdown.connect(self._on_worker_shutdown, weak=False)
        self.heartbeat.start()
        logger.info("sidekiq heartbeat: registered as %s", self.process.identity)

    def stop(self, worker: Any) -> None:
        # Warm shutdown: the pool may still be finishing jobs; show them, deregister later.
        if self.process is not None:
            self.process.quiet = True

    def terminate(self, worker: Any) -> None:
        self.finish()

    def finish(self) -> None:
        """Stop beating, flush the last counts and deregister (idempotent)."""
        celery_signals.task_received.disconnect(self._on_task_received)
        processor_of(self.worker.app).unknown.count = None
        celery_signals.worker_shutting_down.disconnect(self._on_shutting_down)
        celery_signals.worker_shutdown.disconnect(self._on_worker_shutdown)
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat.clear()
            self.heartbeat = None
        if self.connection is not None:
            self.connection.release()
            self.connection = None

    def _on_task_received(self, sender: Any = None, request: Any = None, **kwargs: Any) -> None:
        # Sent by every consumer in this process: count only our worker's requests.
        if request is not None and sender is self.worker.consumer:
            count_executions(request, self.tally)

    def _on_shutting_down(self, sender: Any = None, **kwargs: Any) -> None:
        # Runs in the signal handler: only flip the flag; the next beat shows "quiet".
        if self.process is not None and sender == self.worker.hostname:
            self.process.quiet = True

    def _on_worker_shutdown(self, sender: Any = None, **kwargs: Any) -> None:
        if sender is self.worker:
            self.finish()
