"""The kombu transport behind ``sidekiq://`` and ``sidekiqs://`` (TLS).

This is the only module that touches kombu's private internals. It subclasses kombu's Redis
``Channel`` and ``Transport`` (pinned: kombu 5.7.x) and keeps their machinery (the poller and
its event-loop integration, fanout over PUB/SUB) while changing where task messages live, what
they look like and how they are acknowledged:

* a Celery task message for queue ``q`` is written as a Sidekiq job: ``SADD queues q`` and
  ``LPUSH queue:q`` in one round trip, or ``ZADD schedule`` when it has an ETA; a
  :class:`Producer` builds the job straight from the task's parts, without kombu's envelope;
* every other message (remote-control replies, rpc results) stays a kombu envelope under kombu's
  own key for that queue, so Sidekiq never sees Celery's internal traffic;
* consumers take jobs with reliable fetch (``fetch.py``): a job moves into the worker's in-flight
  list in the same Redis step that takes it, and leaves it when acknowledged; kombu's
  ``unacked`` hash and its visibility timeout are not used;
* queues are taken in Sidekiq's orders (``order.py``: strict, weighted or random), not kombu's
  round-robin; an idle consumer waits on its first queue and is woken at once for a job in any
  other (``wake.py``: client-side tracking and ``CLIENT UNBLOCK``);
* a job is turned into the envelope kombu would have read, carrying its original JSON so that a
  restore pushes it back byte for byte.

The kombu internals used (contract-tested in ``tests/test_transport_contract.py``):
``Channel._brpop_start``/``_brpop_read`` (send a command, read its reply when the poller says
so: ``_in_poll``, ``_brpop_sent_at``, ``_flush_brpop_reauth``), ``_get``, ``_put`` and its
``_publish_batch`` keyword, ``_q_for_pri``, ``_size``, ``_purge``, ``_has_queue``, ``_restore``,
``_after_fork``, ``active_queues``, ``auto_delete_queues``, ``queue_order_strategy``,
``from_transport_options``, the ``keyprefix_*`` key templates, ``virtual.QoS``
(``_delivered``, ``restore_unacked``), ``connection._deliver``, ``Transport.Channel`` and
``Transport.connection_errors``; ``Producer.publish``'s keywords and ``Producer._batch_local``
(the direct way of :class:`Producer`); for Sentinel, ``SentinelChannel``'s
``_get_pool``/``_sentinel_managed_pool``, ``_sentinel_manager``/``_async_sentinel_manager``,
``_prepare_virtual_host``, ``_parse_url`` and ``Connection.alt``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterator
from queue import Empty
from typing import Any, Final

import kombu
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import codec, unique
from . import job as jobs
from .client import Client
from .divert import Divert, Intake
from .fetch import DEFAULT_LEASE, DEFAULT_MAX_RECOVERIES, Destination, Fetched, ReliableFetch
from .keys import Keys
from .order import QueueOrder
from .wake import Waker

logger = logging.getLogger(__name__)

#: The kombu minor version this module was written and contract-tested against.
KOMBU_VERSION: Final = (5, 7)

#: Sidekiq versions whose formats we know how to write.
SUPPORTED_VERSIONS: Final = (6, 7, 8)

if tuple(int(part) for part in kombu.VERSION[:2]) != KOMBU_VERSION:  # pragma: no cover
    raise ImportError(
        f"kombu_sidekiq.transport needs kombu {KOMBU_VERSION[0]}.{KOMBU_VERSION[1]}.x, "
        f"found {kombu.__version__}: install 'kombu[redis]>=5.7,<5.8'"
    )


#: The most items one fetch takes, when the consumer sets no prefetch limit.
FETCH_BATCH: Final = 100

#: The message property carrying a delivered job's field number in its worker's in-flight hash.
TAG_PROPERTY: Final = "sidekiq_tag"

#: The message property naming that in-flight hash, so that the process running the job can
#: move it out of flight and into ``retry`` or ``dead`` in one step (``fetch.settle``).
INFLIGHT_PROPERTY: Final = "sidekiq_inflight"

#: Fetches in a row that took jobs before an idle consumer's wake-up tracking is turned off
#: (a busy worker pays nothing for it; the next idle moment turns it on again).
DISARM_AFTER: Final = 3

#: Seconds of each wait in turn while the waker subscribes (at start, after a reconnect).
WAKER_STARTING_WAIT: Final = 0.2

#: Why instant pick-up is off, once logged (per process: every channel would say the same).
_WAKE_OFF_LOGGED: set[str] = set()


class QoS(virtual.QoS):  # type: ignore[misc]
    """Acks for reliable fetch: a job leaves its worker's in-flight hash when acknowledged.

    Nothing is written per delivery (the fetch already recorded it); acks are batched into the
    next fetch; a reject without requeue sends the job to the dead set rather than losing it;
    there is no visibility timeout to restore from.
    """

    def ack(self, delivery_tag: str) -> None:
        message = self._settling(delivery_tag)
        if message is not None:
            self.channel._ack_job(message)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        message = self._settling(delivery_tag)
        if message is not None:
            try:
                if requeue:
                    self.channel._restore_at_beginning(message)
                else:
                    self.channel._discard(message)
            except Exception as exc:
                # Still in flight, held by no task: the next fetch gives it back to its queue
                # (ReliableFetch.give_back), or recovery does if this worker dies first.
                logger.error("could not %s a rejected job now (%s); given back later",
                             "requeue" if requeue else "bury", exc)  # fmt: skip
        super().ack(delivery_tag)

    def _settling(self, delivery_tag: str) -> Any:
        """The delivered message, unless it was acked or rejected already: the next fetch gives
        an acknowledged job's field to a new job, so a second ack would free the new job's."""
        if delivery_tag in self._dirty:
            return None
        return self._delivered.get(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        """Put back the delivered jobs no task runs, when the channel closes (a warm stop, or
        a lost connection); a job a task is still running stays in flight, held, and its
        ack, when the task ends, still reaches Redis (the fetch's lease outlives the channel
        until then). Nothing that fails here is lost: it stays in this worker's in-flight
        hash, and the fetch gives it back later (or recovery does, if the worker dies).
        """
        self._flush()
        try:
            self.channel._flush_acks()
        except Exception as exc:
            logger.warning("could not send the last acks now (%s); sent later", exc)
        running = self.channel.sidekiq_running
        for delivery_tag, message in list(self._delivered.items()):
            if running is not None and running(message):
                continue  # its task acks it later, through this QoS
            if delivery_tag in self._dirty:
                # Acked by a pool thread since the flush above: a request stops counting as
                # running only once its ack is recorded, so this check comes after that one.
                continue
            del self._delivered[delivery_tag]
            try:
                self.channel._restore(message)
            except Exception as exc:
                logger.warning("could not requeue a held job now (%s); given back later", exc)
        return []

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """No visibility timeout: jobs come back when their worker's lease expires."""


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """A kombu Redis channel whose task queues are Sidekiq queues."""

    QoS = QoS

    #: One list per queue, as Sidekiq has: message priorities do not exist on this wire.
    priority_steps = [0]

    #: Prefix for every key, redis-namespace style (``ns:queue:default``); ``""`` for none.
    namespace = ""

    #: The Sidekiq version the Ruby side runs; it picks the formats we write (8: ms timestamps).
    sidekiq_version = jobs.DEFAULT_SIDEKIQ_VERSION

    #: Maps task names to Sidekiq classes and back; ``None`` means task name == class.
    sidekiq_registry: codec.Registry | None = None

    #: Sees each fetched job before it is delivered, and may send it elsewhere instead
    #: (``kombu_sidekiq.divert``); ``celery_sidekiq`` sets one for classes no task runs.
    sidekiq_intake: Intake | None = None

    #: Seconds a consumer's lease outlives its last refresh: how long after a worker died
    #: its in-flight jobs wait before going back to their queues.
    fetch_lease = DEFAULT_LEASE

    #: Seconds between a live consumer's runs of recovery for dead workers' jobs
    #: (``None``: a quarter of the lease, at most ``DEFAULT_RECOVER_INTERVAL``).
    fetch_recover_interval: float | None = None

    #: Says whether a delivered message's task is running now (``running(message)``): at a
    #: close such a job stays in flight for its task to ack, instead of going back to its
    #: queue to run a second time. ``celery_sidekiq`` asks Celery's worker state.
    sidekiq_running: Callable[[Any], bool] | None = None

    #: How many times a job may be recovered from dead workers before it is taken for poison
    #: and goes to the dead set (Sidekiq Pro's super_fetch has the same check); 0: no limit.
    fetch_max_recoveries = DEFAULT_MAX_RECOVERIES

    #: The largest job, in bytes of JSON, a producer may write or a consumer takes (0: no cap);
    #: a bigger one is refused with PayloadTooLarge, or moved untouched to the dead set.
    max_payload_bytes = 0

    #: Sidekiq's queue order: "strict" (the configured order, every fetch), "weighted" (a
    #: weighted random order per fetch) or "random" (every weight 1); see ``order.py``.
    queue_order = "strict"

    #: ``[(queue, weight), ...]`` in the configured order (or a ``{queue: weight}`` dict);
    #: queues consumed but not listed come after the listed ones and weigh 1.
    queue_weights: Any = ()

    #: Wake an idle consumer at once for a job in any of its queues (``wake.py``); False: wait
    #: on one queue at a time, in turn, as before (up to ``brpop_timeout`` late on the others).
    instant_pickup = True

    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "namespace",
        "sidekiq_version",
        "sidekiq_registry",
        "sidekiq_intake",
        "fetch_lease",
        "fetch_recover_interval",
        "fetch_max_recoveries",
        "sidekiq_running",
        "max_payload_bytes",
        "queue_order",
        "queue_weights",
        "instant_pickup",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)  # pings Redis
        except kombu_redis.redis.AuthenticationError as exc:
            raise authentication_failure(self.connection.client, exc) from exc
        self._check_options()
        self.keys = Keys(self.namespace)
        self.registry: codec.Registry = self.sidekiq_registry or codec.ClassRegistry()
        base = kombu_redis.Channel
        self.keyprefix_queue = self.keys.key(base.keyprefix_queue)
        self.keyprefix_binding_permanent = self.keys.key(base.keyprefix_binding_permanent)
        self.keyprefix_binding_deadlines = self.keys.key(base.keyprefix_binding_deadlines)
        self._sidekiq: Client | None = None
        self._fetch: ReliableFetch | None = None
        self._no_ack_queues: set[str] = set()
        self._poll: tuple[str, list[str]] = ("", [])
        self._fetch_next = True
        self._idle = False
        self._block_turn = 0
        self._awaiting = False  # a fetch or wait was sent and its reply not read yet
        self._rng = random.Random()
        # Waking (wake.py): the thread, what tracking is on for (socket, generation, prefixes),
        # the commands sent ahead of the fetch in flight, fetches in a row that took jobs.
        self._waker: Waker | None = None
        self._armed: tuple[Any, int, tuple[str, ...]] | None = None
        self._poll_sock: Any = None
        self._ahead: list[str] = []
        self._busy_fetches = 0
        self._wait_number = 0

    def _check_options(self) -> None:
        if not self.ack_emulation:
            raise ValueError(
                "the sidekiq transport always acknowledges through reliable fetch; "
                "remove the transport option 'ack_emulation'"
            )
        if self.global_keyprefix:
            raise ValueError(
                "the sidekiq transport does not take 'global_keyprefix': use the transport "
                "option 'namespace' (celery_sidekiq.setup(app, namespace=...)), which prefixes "
                "Sidekiq's keys the way redis-namespace and rusty-sidekiq do"
            )
        if self.sidekiq_version not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"sidekiq_version must be one of {SUPPORTED_VERSIONS}, not {self.sidekiq_version!r}"
            )
        if self.queue_order_strategy != kombu_redis.Channel.queue_order_strategy:
            raise ValueError(
                f"the sidekiq transport does not take queue_order_strategy="
                f"{self.queue_order_strategy!r}: it orders queues as Sidekiq does; use the "
                "transport option 'queue_order' ('strict', 'weighted' or 'random'; "
                "celery_sidekiq.setup(app, queue_order=..., queue_weights=...))"
            )
        try:
            self.order = QueueOrder.build(self.queue_order, self.queue_weights or None)
        except ValueError as exc:
            raise ValueError(f"transport options queue_order/queue_weights: {exc}") from None

    @property
    def sidekiq(self) -> Client:
        """The wire-level client on this channel's connection pool.

        One client object per pool, not kombu's new ``redis.Redis`` per message; a new pool (after
        a fork or a reconnect) gets a new client. ``self.client`` is not usable here: its
        connection is pinned to the in-flight BRPOP.
        """
        pool = self.pool
        if self._sidekiq is None or self._sidekiq.redis.connection_pool is not pool:
            self._sidekiq = Client(self._create_client(), self.keys, self.sidekiq_version)
        return self._sidekiq

    def detached_client(self) -> Client:
        """A Sidekiq client on a connection pool of its own, for background threads.

        kombu disconnects a channel's pools in every forked child; a pool whose lock a thread
        of the parent held at that instant would hang the child forever (prefork replaces its
        children at any time). A pool kombu does not know is never touched in the child.
        """
        return Client(
            kombu_redis.redis.Redis(connection_pool=self._get_pool()),
            self.keys,
            self.sidekiq_version,
        )

    @property
    def fetcher(self) -> ReliableFetch:
        """This consumer's in-flight bookkeeping, made when it first consumes."""
        if self._fetch is None:
            self._fetch = ReliableFetch(
                self.sidekiq,
                lease=self.fetch_lease,
                recover_interval=self.fetch_recover_interval,
                background=self.detached_client(),
                max_recoveries=self.fetch_max_recoveries,
            )
        elif self._fetch.client is not self.sidekiq:
            self._fetch.client = self.sidekiq
        return self._fetch

    # -- where messages live ---------------------------------------------------------------

    def _q_for_pri(self, queue: str, pri: int) -> str:
        # kombu's key for a queue holds non-task messages only; task messages are Sidekiq jobs
        # under queue:<name>, which kombu's own methods (delete, expire) never see.
        return self.keys.kombu(queue)

    def _keys_for(self, queue: str) -> tuple[str, str]:
        return self.keys.queue(queue), self.keys.kombu(queue)

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        no_ack = kwargs.get("no_ack", args[0] if args else False)
        if no_ack:
            self._no_ack_queues.add(queue)
        if queue not in self.auto_delete_queues:
            self.fetcher.watch(queue)
            self.fetcher.start()
        return super().basic_consume(queue, *args, **kwargs)

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Send the next fetch; the poller reads the reply with ``_brpop_read``.

        Busy: one script call takes a batch of jobs and carries the acks of the last one; it
        waits until half the prefetch is free (unless nothing is held), so batches stay big.
        Each fetch takes the queues in the configured order (``self.order``: strict, weighted
        or random, as Sidekiq). Idle (the last fetch found nothing): wait with BRPOPLPUSH on
        the first task queue, which moves a job into this worker's landing list as it
        arrives; a job in any other queue ends the wait at once (``wake.py``; tracking is
        turned on, pipelined with one more fetch, when the worker becomes idle, and off once
        it is busy). Where Redis refuses that, wait on one task queue at a time, in turn.
        Queues of kombu's own (replies, auto-deleted) are read with plain BRPOP.
        """
        if timeout is None:
            timeout = self.brpop_timeout
        if self._awaiting:  # kombu dropped the connection (stale, or lost) before the reply
            self._lost()
        queues = self.active_queues
        if not queues:
            return
        if self._fetch is not None and self._fetch.needs_sweep:
            self._give_back()
        task_queues = self.order.ranked(q for q in queues if q not in self.auto_delete_queues)
        connection = self.client.connection
        ahead: list[list[Any]] = []
        if not task_queues:
            command = ["BRPOP", *(self.keys.kombu(queue) for queue in queues), timeout or 0]
            self._poll = ("BRPOP", queues)
        elif not self._fetch_next and timeout and self._wake_ready(task_queues, connection):
            waker = self._waker
            assert waker is not None
            self.fetcher.flush_acks()  # idle: no fetch will carry them
            self._wait_number += 1
            waker.blocked = self._wait_number  # from here on, the thread ends this wait
            if waker.pending:  # a watched queue changed after the last fetch was sent
                waker.blocked = 0
                self._fetch_next = True
                self._brpop_start(timeout)
                return
            command = self.fetcher.block_command(task_queues[0], timeout)
            self._poll = ("BRPOPLPUSH", task_queues[:1])
        elif self._fetch_next or not timeout or self._wake_wanted(task_queues):
            count = self._batch_size()
            if not count:
                return  # the poller asks again on its next tick
            ahead = self._tracking_commands(task_queues, connection)
            if self._waker is not None:
                self._waker.pending = False  # what changes from here on, this fetch may miss
            # Queues of kombu's own go last: the fetch reads their kombu keys when idle.
            order = self.order.fetch_order(task_queues, self._rng)
            order += [queue for queue in queues if queue in self.auto_delete_queues]
            command = self.fetcher.fetch_command(order, count, idle=self._idle)
            self._poll = ("EVALSHA", order)
        else:
            queue = task_queues[self._block_turn % len(task_queues)]
            self._block_turn += 1
            self.fetcher.flush_acks()  # idle: no fetch will carry them
            turn = max(timeout / len(task_queues), 0.1)
            if self._waker is not None and self._waker.starting:
                turn = min(turn, WAKER_STARTING_WAIT)  # it subscribes: track soon after
            command = self.fetcher.block_command(queue, turn)
            self._poll = ("BRPOPLPUSH", [queue])
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        self._awaiting = command[0] != "BRPOP"  # kombu's own BRPOP takes nothing into flight
        if ahead:
            self._ahead = [" ".join(map(str, c[:3])) for c in ahead]
            connection.send_packed_command(connection.pack_commands([*ahead, command]))
        else:
            self._ahead = []
            connection.send_command(*command)

    # -- instant pick-up (wake.py) ---------------------------------------------------------

    def _wake_wanted(self, task_queues: list[str]) -> bool:
        """Idle on several queues, with waking possible: track before the first wait."""
        if not self.instant_pickup or len(task_queues) < 2:
            return False
        if self._waker is None:
            self._waker = Waker(self._get_pool(), unblock_for=self.brpop_timeout + 1)
            self._waker.start()
        if self._waker.failed:
            self._wake_off(self._waker.failed)
            return False
        return self._waker.ready

    def _wake_ready(self, task_queues: list[str], connection: Any) -> bool:
        """Tracking is on, on this connection, for these queues, to the waker as it is now."""
        waker, armed = self._waker, self._armed
        if waker is None or armed is None or not waker.ready or waker.poll_id is None:
            return False
        return armed == (connection._sock, waker.generation, self._prefixes(task_queues))

    def _prefixes(self, task_queues: list[str]) -> tuple[str, ...]:
        """The keys to watch: every task queue but the one waited on. A prefix takes in every
        key it starts (Redis refuses overlapping prefixes), so ``queue:a`` covers ``queue:ab``."""
        keys = sorted({self.keys.queue(queue) for queue in task_queues[1:]})
        kept: list[str] = []
        for key in keys:
            if not any(key.startswith(prefix) for prefix in kept):
                kept.append(key)
        return tuple(kept)

    def _tracking_commands(self, task_queues: list[str], connection: Any) -> list[list[Any]]:
        """What to send ahead of this fetch: tracking on (idle, about to wait) or off (busy
        for a while, or waking no longer possible)."""
        waker = self._waker
        if connection._sock is None:
            connection.connect()
        if self._wake_wanted(task_queues) and not self._fetch_next and waker is not None:
            if self._poll_sock is not None and self._poll_sock is not connection._sock:
                # Reconnected (a failover, perhaps): the waker's connection may be on the old
                # server. It subscribes again; tracking goes on once it has.
                self._poll_sock = connection._sock
                self._armed = None
                waker.reconnect()
                return [["CLIENT", "TRACKING", "OFF"]]
            self._poll_sock = connection._sock
            prefixes = self._prefixes(task_queues)
            self._armed = (connection._sock, waker.generation, prefixes)
            self._busy_fetches = 0
            tracking = ["CLIENT", "TRACKING", "ON", "REDIRECT", waker.redirect, "BCAST"]
            tracking += [arg for prefix in prefixes for arg in ("PREFIX", prefix)]
            return [["CLIENT", "ID"], ["CLIENT", "TRACKING", "OFF"], [*tracking, "NOLOOP"]]
        if self._armed is not None and (
            self._busy_fetches >= DISARM_AFTER or not self._wake_wanted(task_queues)
        ):
            self._armed = None
            return [["CLIENT", "TRACKING", "OFF"]]
        return []

    def _read_ahead(self, connection: Any) -> None:
        """Read the replies of the commands sent ahead of the fetch (tracking on or off)."""
        ahead, self._ahead = self._ahead, []
        refused: str | None = None
        for name in ahead:
            try:
                reply = connection.read_response()
            except kombu_redis.redis.ResponseError as exc:
                refused = refused or f"Redis refused {name}: {exc}"
                continue
            if name == "CLIENT ID" and self._waker is not None:
                self._waker.poll_id = int(reply)
        if refused is None:
            return
        self._armed = None
        if "does not exist" in refused and self._waker is not None:
            self._waker.reconnect()  # its connection went away meanwhile: subscribe again
        else:
            self._wake_off(refused)

    def _wake_off(self, reason: str) -> None:
        """Waking is not possible here: wait on the queues in turn from now on."""
        self.instant_pickup = False
        self._armed = None
        if reason not in _WAKE_OFF_LOGGED:
            _WAKE_OFF_LOGGED.add(reason)
            logger.warning(
                "instant pick-up on every queue is off (%s): an idle worker waits on its queues "
                "in turn, so a job may wait up to %.1f s (the transport option "
                "polling_interval) before it starts",
                reason,
                self.brpop_timeout,
            )
        if self._waker is not None:
            self._waker.stop()
            self._waker = None

    def _batch_size(self) -> int:
        """How many jobs the next fetch takes: 0 to wait for more room."""
        room = self.qos.can_consume_max_estimate()
        if room is None:  # no prefetch limit
            return FETCH_BATCH
        held = len(self.qos._delivered) - len(self.qos._dirty)
        if held and room < (self.qos.prefetch_count + 1) // 2:
            return 0
        return int(min(room, FETCH_BATCH))

    def _brpop_read(self, **options: Any) -> bool:
        kind, queues = self._poll
        try:
            reply = self._read_reply(kind, **options)
            if kind == "BRPOPLPUSH":  # a job landed (or the wait ended): fetch records it
                if reply:
                    self.fetcher.landed()
                    if queues[0] not in self._active_queues:  # cancelled while it waited
                        self._give_back()
                self._fetch_next, self._idle = True, not reply
                self._busy_fetches = 0
                raise Empty()
            items = self._items(kind, queues, reply)
            self._fetch_next = bool(items) or kind != "EVALSHA"
            self._busy_fetches = self._busy_fetches + 1 if items else 0
            self._idle = False
            if not items:
                raise Empty()
            for item in items:
                self._deliver_item(item)
            return True
        finally:
            self._in_poll = None
            if self._waker is not None:
                self._waker.blocked = 0
            self._flush_brpop_reauth()

    def _read_reply(self, kind: str, **options: Any) -> Any:
        """The reply to the fetch or wait sent (after those of the commands sent ahead of
        it); if it cannot be read, the fetch knows it is lost (what it took is given back
        before the next one)."""
        connection = self.client.connection
        try:
            try:
                if self._ahead:
                    self._read_ahead(connection)
                return self.client.parse_response(connection, kind, **options)
            finally:
                self._awaiting = False
        except kombu_redis.redis.exceptions.NoScriptError:
            self.fetcher.not_run()
            self.fetcher.load_scripts()  # Redis restarted or flushed its scripts
            raise Empty() from None
        except BaseException as exc:
            self._lost()
            self._ahead, self._armed = [], None
            if isinstance(exc, self.connection_errors):
                connection.disconnect()
            elif isinstance(exc, kombu_redis.redis.exceptions.ResponseError) and (
                is_unblocked(exc) or isinstance(exc, kombu_redis.redis.ReadOnlyError)
            ):
                # A failover demoted the server this fetch was waiting on. Redis says so with
                # an error reply, not by closing the connection: make it the connection error
                # it is, so Celery reconnects (to the new master) instead of dying.
                connection.disconnect()
                raise kombu_redis.redis.ConnectionError(str(exc)) from exc
            raise

    def _lost(self) -> None:
        self._awaiting = False
        if self._waker is not None:
            self._waker.blocked = 0
        if self._fetch is not None:
            self._fetch.lost()

    def _give_back(self) -> None:
        """Give back what this worker holds and no task runs (see ``ReliableFetch.give_back``);
        a connection error is raised (Celery reconnects), any other is logged and retried
        before the next fetch."""
        try:
            self.fetcher.give_back()
        except self.connection_errors:
            raise
        except Exception as exc:
            logger.error("could not give back held jobs now (%s); trying again", exc)

    def _items(self, kind: str, queues: list[str], reply: Any) -> list[Fetched]:
        if not reply:
            return []
        if kind == "EVALSHA":
            return self.fetcher.parse_fetch(queues, reply)
        return [Fetched(self.keys.strip(bytes_to_str(reply[0])), 0, reply[1], False)]

    def _deliver_item(self, item: Fetched) -> None:
        """Deliver one fetched item; nothing it does may stop the items after it."""
        try:
            if item.is_job and item.queue not in self._active_queues:
                # Cancelled (Quiet, cancel_consumer) while the fetch ran: straight back.
                self.fetcher.settle(item.queue, item.tag, "head", item.payload)
                return
            envelope = self._envelope(item)
            if envelope is None:
                return
            if item.is_job:
                self.fetcher.delivered(item.queue, item.tag, item.payload)
            self.connection._deliver(envelope, item.queue)
            if item.is_job and item.queue in self._no_ack_queues:
                self.fetcher.ack(item.queue, item.tag, item.payload)
        except Exception:
            # A job stays in flight, held by no task: the next give-back returns it.
            logger.exception("queue %r: could not deliver a fetched item", item.queue)
            if item.is_job:
                self.fetcher.sweep()

    def _get(self, queue: str) -> dict[str, Any]:
        self.fetcher.start()  # a held message keeps its lease, as a consumed one does
        for item in self.fetcher.fetch([queue], 1):
            envelope = self._envelope(item)
            if envelope is not None:
                if item.is_job:
                    self.fetcher.delivered(queue, item.tag, item.payload)
                return envelope
        raise Empty()

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack, **kwargs)
        if message is not None and no_ack:
            self._ack_job(message)
        return message

    def _envelope(self, item: Fetched) -> dict[str, Any] | None:
        """The kombu message for a fetched item; None for a job sent elsewhere (the dead set,
        or wherever the intake said)."""
        if not item.is_job:
            return kombu_redis.loads(bytes_to_str(item.payload))  # type: ignore[no-any-return]
        queue = item.queue
        if (too_big := oversize(len(item.payload), self.max_payload_bytes)) is not None:
            self._bury(item, too_big)  # before parsing: a huge payload costs nothing more
            return None
        try:
            raw = item.payload.decode("utf-8")
            job = jobs.parse(raw)
        except UnicodeDecodeError as exc:
            self._bury(item, f"not UTF-8 JSON: {exc}")
            return None
        except jobs.InvalidJob as exc:
            self._bury(item, exc.reason)
            return None
        try:
            where = None if self.sidekiq_intake is None else self.sidekiq_intake(queue, job, raw)
            if where is None:
                envelope = codec.message_from_job(job, raw, queue, self.registry)
        except Exception as exc:
            # The job is off its queue already: whatever it holds must not stop this worker
            # (a wrong type in the celery key, say), and it is kept for a person to see.
            self._bury(item, f"cannot be read as a task message: {type(exc).__name__}: {exc}")
            return None
        if where is not None:
            self._divert(item, where)
            return None
        envelope["properties"][TAG_PROPERTY] = item.tag
        envelope["properties"][INFLIGHT_PROPERTY] = self.fetcher.inflight(queue)
        return envelope

    def _divert(self, item: Fetched, where: Divert) -> None:
        to: Destination = "tail" if where.target == "queue" else where.target
        try:
            self.fetcher.settle(item.queue, item.tag, to, where.payload, at=where.at)
        except Exception as exc:
            # Still in flight: it goes back to its queue when this worker stops, or when any
            # worker recovers it after this one's lease expired. Nothing is lost.
            logger.error(
                "queue %r: could not move a job to %s (%s): %.200r",
                item.queue,
                where.target,
                exc,
                item.payload,
            )

    def _bury(self, item: Fetched, reason: str) -> None:
        # sidekiq.rb sends a payload it cannot parse straight to the dead set, untouched;
        # a worker must never lose it and never stop over it.
        logger.error(
            "queue %r: invalid job moved to the dead set (%s): %.200r",
            item.queue,
            reason,
            item.payload,
        )
        try:
            self.fetcher.settle(item.queue, item.tag, "dead", item.payload)
        except Exception as exc:
            # Left in flight, not held: it goes back to its queue at this worker's stop (or
            # recovery), and is buried again when fetched; never in a tight loop here.
            logger.error("queue %r: could not move the invalid job to dead: %s", item.queue, exc)

    # -- acknowledgement (called by QoS) ---------------------------------------------------

    @staticmethod
    def _job_of(message: Any) -> tuple[str, int, str] | None:
        """(queue, in-flight tag, job JSON) of a delivered job; None for a kombu message."""
        properties = message.properties or {}
        raw = properties.get(codec.RAW_JOB_PROPERTY)
        tag = properties.get(TAG_PROPERTY)
        if raw is None or tag is None:
            return None
        return message.delivery_info.get("routing_key") or "default", int(tag), raw

    def _ack_job(self, message: Any) -> None:
        job = self._job_of(message)
        if job is not None and self._fetch is not None:
            # Not the ``fetcher`` property: after a close (a task acking once the connection
            # was lost) it would build a client on a pool kombu has dropped.
            self._fetch.ack(*job)

    def _flush_acks(self) -> None:
        if self._fetch is not None:
            self._fetch.flush_acks()

    def _discard(self, message: Any) -> None:
        # A rejected job is kept for a human to look at, as Sidekiq keeps what it cannot run.
        job = self._job_of(message)
        if job is not None:
            queue, tag, raw = job
            logger.error(
                "queue %r: the worker rejected job %.200r; it is in the dead set", queue, raw
            )
            self.fetcher.settle(queue, tag, "dead", raw)

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        job = self._job_of(message)
        if job is not None:
            queue, tag, raw = job
            self.fetcher.settle(queue, tag, "tail" if leftmost else "head", raw)
            return
        push = self.sidekiq.redis.lpush if leftmost else self.sidekiq.redis.rpush
        push(
            self.keys.kombu(message.delivery_info.get("routing_key")),
            kombu_redis.dumps(message._raw),
        )

    def basic_cancel(self, consumer_tag: str) -> Any:
        """Stop consuming a queue; a job a wait lands for it later goes straight back."""
        result = super().basic_cancel(consumer_tag)
        if self._fetch is not None:
            self._fetch.sweep()
        return result

    def close(self) -> None:
        waker = self._waker
        if waker is not None and waker.blocked and waker.poll_id is not None:
            # kombu reads the reply of the wait in flight before it closes: end the wait now
            # rather than up to polling_interval seconds later.
            with contextlib.suppress(Exception):
                self.sidekiq.redis.client_unblock(waker.poll_id)
        if self._awaiting:
            self._lost()
        super().close()
        if self._waker is not None:
            self._waker.stop()
            self._waker = None
        if self._fetch is not None:
            self._fetch.stop()

    def _after_fork(self) -> None:
        # In a forked child: the waker's thread is the parent's, and so are its pool and its
        # locks; drop them untouched (see detached_client).
        self._waker, self._armed = None, None
        super()._after_fork()

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if not codec.is_task_message(message):
            super()._put(queue, message, **kwargs)
            return
        self.put_task(
            queue,
            message["headers"],
            message.get("properties") or {},
            codec.json_body(message, self.decode_body),
            kwargs.pop("_publish_batch", None),
        )

    def put_task(
        self,
        queue: str,
        headers: dict[str, Any],
        properties: dict[str, Any],
        body: Any,
        batch: Any = None,
    ) -> None:
        """Write a Celery task (protocol-2 headers, properties, decoded body) as a Sidekiq job.

        ``batch`` is kombu's publish batch, when one is open. Both ways in come here: kombu's
        ``basic_publish`` (``_put``) and :class:`Producer`'s direct path.
        """
        with refused_writes(queue):
            at = codec.eta_in(headers)
            carried = properties.get(codec.RETRY_JOB_PROPERTY)
            if carried is not None:
                # A worker retrying the job it ran (Celery's Task.retry): the failed job itself,
                # every key kept, waits in `retry` like Sidekiq's own retries, not in `schedule`.
                payload, due = jobs.dumps(codec.retry_job(carried, body)), at or time.time()
                inflight, tag = properties.get(INFLIGHT_PROPERTY), properties.get(TAG_PROPERTY)
                if isinstance(inflight, str) and isinstance(tag, int):
                    # Still in its worker's in-flight hash: moved from there into `retry` in one
                    # step, so a refused write leaves it in flight (the worker requeues it), and
                    # a move re-sent after a lost reply finds it gone and stores nothing twice.
                    from .fetch import settle

                    if batch is not None:
                        batch.flush()  # what was published before it goes first
                    if not settle(self.sidekiq, inflight, tag, queue, "retry", payload, at=due):
                        logger.warning(
                            "retried job %.200r had left flight (recovered): not stored", payload
                        )
                    return
                if batch is not None:
                    batch.add("zadd", self.keys.retry, {payload: due})
                else:
                    self.sidekiq.redis.zadd(self.keys.retry, {payload: due})
                return
            scheduled = at is not None and at > time.time()
            job = codec.job_from_task(
                headers,
                properties,
                body,
                queue,
                self.registry,
                version=self.sidekiq_version,
                scheduled=scheduled,
            )
            if self.max_payload_bytes:
                check_payload_size(job, self.max_payload_bytes)
            lock = unique.lock_for(job, self.keys, at - time.time() if at and scheduled else 0.0)
            if lock is not None:
                # Lock and push in one script, now, so a duplicate raises DuplicateJob from
                # apply_async; jobs batched before it go first, keeping their order.
                if batch is not None:
                    batch.flush()
                unique.push(self.sidekiq, job, lock, at if scheduled else None)
                return
            if batch is None:
                if scheduled and at is not None:
                    self.sidekiq.schedule(job, at)
                else:
                    self.sidekiq.push(job)
            elif scheduled and at is not None:
                batch.add("zadd", self.keys.schedule, {jobs.dumps(job): at})
            else:
                batch.add("sadd", self.keys.queues, queue)
                batch.add("lpush", self.keys.queue(queue), jobs.dumps(job))

    def _size(self, queue: str) -> int:
        with self.sidekiq.redis.pipeline() as pipe:
            for key in self._keys_for(queue):
                pipe.llen(key)
            return sum(pipe.execute())

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return bool(self.sidekiq.redis.exists(*self._keys_for(queue)))

    def _purge(self, queue: str) -> int:
        # `celery purge` names the queues it empties (and asks first), so it empties the
        # Sidekiq list too; queue deletion (kombu's _delete) never touches it.
        with self.sidekiq.redis.pipeline() as pipe:
            for key in self._keys_for(queue):
                pipe.llen(key)
                pipe.delete(key)
            return sum(pipe.execute()[::2])


#: ``Producer.publish`` keywords that are not message properties.
_PUBLISH_OPTIONS: Final = frozenset(
    {
        "routing_key", "delivery_mode", "mandatory", "immediate", "priority", "content_type",
        "content_encoding", "serializer", "headers", "compression", "exchange", "retry",
        "retry_policy", "declare", "expiration", "timeout", "confirm_timeout",
    }
)  # fmt: skip


class Producer(kombu.Producer):  # type: ignore[misc]
    """kombu's Producer, with a direct way for Celery task messages into a sidekiq channel.

    kombu's ``publish`` serializes the body to JSON, base64-encodes it into an envelope, and
    checks the declaration cache of the target queue (copying the queue entity to do so); the
    transport then decodes all of it again to build the job. None of that changes the job: a
    task message bound for a queue of the default (anonymous) exchange is built into its job
    straight from the headers and the body ``(args, kwargs, embed)``. Anything else (other
    exchanges, other serializers, compression, kombu's publish batches, another transport)
    takes kombu's way, as do bodies whose values JSON does not hold natively, which kombu's
    encoder writes in its own tagged form.

    Celery's signals, routing, events and publish retries are untouched: they run around
    ``publish``. ``celery_sidekiq.setup`` makes Celery's producers this class.
    """

    def publish(self, body: Any, *args: Any, **options: Any) -> Any:
        channel = self.channel
        if args or not isinstance(channel, Channel) or not self._direct(body, options):
            return super().publish(body, *args, **options)
        properties = {k: v for k, v in options.items() if k not in _PUBLISH_OPTIONS}
        if options.get("priority") is not None:  # a property, as kombu's envelope has it
            properties["priority"] = options["priority"]
        write = self._put_task
        if options.get("retry"):
            policy = options.get("retry_policy") or {}
            self.connection.transport_options.update(policy)  # as kombu's publish does
            write = self.connection.ensure(self, write, **policy)
        write(options["routing_key"], options["headers"], properties, body)
        return None

    def _direct(self, body: Any, options: dict[str, Any]) -> bool:
        queue = options.get("routing_key")
        return (
            bool(queue)
            and isinstance(queue, str)
            and options.get("exchange") in ("", None)
            and not self.exchange.name
            and codec.is_task_headers(options.get("headers"))
            and isinstance(body, (tuple, list))
            and len(body) == 3
            and options.get("serializer") in (None, "json")
            and options.get("compression") is None
            and options.get("content_type") is None
            and all(
                isinstance(entity, kombu.Queue) and entity.name == queue
                for entity in options.get("declare") or ()
            )
            and getattr(self._batch_local, "current", None) is None
            and jobs.is_plain_json(body)
        )

    def _put_task(
        self, queue: str, headers: dict[str, Any], properties: dict[str, Any], body: Any
    ) -> None:
        # self.channel, not the one publish saw: after a reconnect, ensure() revived this
        # producer on a new channel.
        self.channel.put_task(queue, headers, properties, body)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """``sidekiq://[user:password@]host[:port][/db]``: Sidekiq jobs in Redis."""

    Channel = Channel
    driver_type = "redis"
    driver_name = "redis"

    # A server answering READONLY is a demoted master (a failover moved the name we connect
    # to): a lost connection to retry, not an error to die of. kombu reads this class attribute.
    connection_errors = (*kombu_redis.Transport.connection_errors, kombu_redis.redis.ReadOnlyError)


class TLSChannel(Channel):
    """A channel that always speaks TLS, verifying the server unless told otherwise."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        if not self.connection.client.ssl:
            # kombu's rediss:// falls back to CERT_NONE; a sidekiqs:// URL without options
            # verifies against the system CAs instead.
            params["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            params["connection_class"] = self.connection_class_ssl
        return params


class TLSTransport(Transport):
    """``sidekiqs://``: the same over TLS (``broker_use_ssl`` for certificates)."""

    Channel = TLSChannel


# -- payload cap -----------------------------------------------------------------------------


class PayloadTooLarge(ValueError):
    """A producer tried to enqueue a job over the ``max_payload_bytes`` cap."""


class WriteRefused(Exception):
    """Redis answered a job write with an error (a key of the wrong type, out of memory): not
    a lost connection, so not retried."""


@contextlib.contextmanager
def refused_writes(queue: str) -> Iterator[None]:
    """Turn an error reply to a job write into :class:`WriteRefused`.

    kombu counts every error reply as a lost connection and publishes again; after a write
    that half succeeded (WRONGTYPE on ``queues``, the ``LPUSH`` done) that would enqueue the
    job twice. A failover's replies (``READONLY``, ``UNBLOCKED``) stay what they are: retried
    on the new master, as a lost connection is.
    """
    try:
        yield
    except kombu_redis.redis.ResponseError as exc:
        if isinstance(exc, kombu_redis.redis.ReadOnlyError) or is_unblocked(exc):
            raise
        raise WriteRefused(f"Redis refused to store the job for queue {queue!r}: {exc}") from exc


def oversize(size: int, limit: int) -> str | None:
    """Why a payload of ``size`` bytes breaks the cap ``limit`` (0: none), or None."""
    if limit and size > limit:
        return f"{size} bytes of JSON, over max_payload_bytes={limit}"
    return None


def check_payload_size(job: jobs.Job, limit: int) -> None:
    """Refuse, before anything is written, a job whose JSON is over ``limit`` bytes.

    >>> check_payload_size(jobs.build("HardJob", ["x" * 100]), 64)        # doctest: +ELLIPSIS
    Traceback (most recent call last):
    kombu_sidekiq.transport.PayloadTooLarge: HardJob for queue 'default' is ... bytes of JSON, ...
    """
    reason = oversize(len(jobs.dumps(job).encode()), limit)
    if reason is not None:
        raise PayloadTooLarge(
            f"{job['class']} for queue {job['queue']!r} is {reason}: pass a reference to the "
            "data (a key, a URL, a database id) instead of the data, or raise the cap "
            "(setup(max_payload_bytes=...), transport option max_payload_bytes)"
        )


# -- refused credentials ---------------------------------------------------------------------


class AuthenticationFailed(kombu_redis.redis.AuthenticationError):  # type: ignore[misc]
    """Redis refused the broker URL's user or password; the message says where and what to do.

    Still a redis-py ``AuthenticationError``, so kombu and Celery treat it as the connection
    error it is: their retries pick up a password that is being rotated on the server.
    """


def authentication_failure(client: kombu.Connection, exc: BaseException) -> AuthenticationFailed:
    """The error to raise for ``exc``, naming the user, the server and the fix.

    >>> print(authentication_failure(kombu.Connection("sidekiq://bob:x@redis.local:6380/0"),
    ...                              ValueError("WRONGPASS")))            # doctest: +ELLIPSIS
    authentication failed for user 'bob' at redis.local:6380 (WRONGPASS): check the user name...
    """
    if isinstance(exc, AuthenticationFailed):
        return exc  # explained already, deeper down
    user = client.userid or "default"
    scheme = client.transport_cls if isinstance(client.transport_cls, str) else "sidekiq"
    where = f"{client.hostname}:{client.port or 6379}"
    if scheme == "sidekiq-sentinel":
        where = f"the master named by the sentinel at {client.hostname}:{client.port or 26379}"
    return AuthenticationFailed(
        f"authentication failed for user {user!r} at {where} "
        f"({exc}): check the user name and password in the broker URL "
        f"({scheme}://user:password@host:port/db; a password alone: {scheme}://:password@...) "
        "and that user's ACL on the server"
    )


# -- Redis Sentinel ----------------------------------------------------------------------------


def is_unblocked(exc: BaseException) -> bool:
    """Whether ``exc`` is Redis's answer to a blocked command on a master being demoted.

    >>> is_unblocked(ValueError("UNBLOCKED force unblock from blocking operation, ..."))
    True
    """
    return str(exc).startswith("UNBLOCKED")


#: URL schemes that name a sentinel in a ``;``-separated broker URL. kombu's own ``sentinel``
#: is accepted beside ours so a URL can be switched over one scheme at a time.
SENTINEL_SCHEMES: Final = ("sidekiq-sentinel", "sentinel")


class SentinelChannel(Channel, kombu_redis.SentinelChannel):  # type: ignore[misc]
    """A channel whose Redis is the current master of a Sentinel-monitored group.

    The MRO puts our Channel first (where Sidekiq jobs live, reliable fetch, acks) and kombu's
    ``SentinelChannel`` next (the pool asks the sentinels for the master and reconnects to the
    new one after a failover: a demoted master's READONLY replies count as connection errors).
    """

    from_transport_options = (
        *Channel.from_transport_options,
        *(
            name
            for name in kombu_redis.SentinelChannel.from_transport_options
            if name not in Channel.from_transport_options
        ),
    )

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        # kombu takes the db from the address in use, so `a;b/1` means db 0 until a reconnect
        # switches to b. Here a /db written on any address holds for all of them.
        dbs = {parts.path for parts in map(kombu_redis._parse_url, self.connection.client.alt)}
        dbs.discard(None)
        if len(dbs) > 1:
            raise ValueError(f"the sentinel addresses name different dbs {sorted(dbs)}: use one")
        if dbs:
            params["db"] = self._prepare_virtual_host(dbs.pop())
        return params

    def _sentinel_addresses(self) -> list[tuple[str, int]]:
        client, default_port = self.connection.client, self.connection.default_port
        addresses = [
            (parts.hostname, parts.port or default_port)
            for parts in map(kombu_redis._parse_url, client.alt)  # [] for a one-address URL
            if parts.scheme in SENTINEL_SCHEMES
        ]
        return addresses or [(client.hostname or "127.0.0.1", client.port or default_port)]

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        # kombu's version keeps only the addresses written ``sentinel://``: with ours it would
        # silently use the first sentinel alone. Same steps otherwise.
        if not getattr(self, "master_name", None):
            raise ValueError(
                "sidekiq-sentinel:// needs the name of the monitored master: set the transport "
                "option master_name (Celery: broker_transport_options={'master_name': 'mymaster'})"
            )
        params = self._connparams(asynchronous)
        params.pop("host", None)
        params.pop("port", None)
        sentinel_kwargs = getattr(self, "sentinel_kwargs", None)
        if sentinel_kwargs is None:
            # The next sentinel in the list is the retry: with redis-py's default policy
            # (3 retries, with backoff) a dead sentinel costs seconds on every reconnect.
            sentinel_kwargs = {key: v for key, v in params.items() if key.startswith("socket_")}
            sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
        manager = kombu_redis.sentinel.Sentinel(
            self._sentinel_addresses(),
            min_other_sentinels=getattr(self, "min_other_sentinels", 0),
            sentinel_kwargs=sentinel_kwargs,
            **params,
        )
        # Kept so that _disconnect_pools closes the connections to the sentinels too.
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        credentials = {key: params[key] for key in ("username", "password") if key in params}
        master = manager.master_for(self.master_name, kombu_redis.redis.Redis, **credentials)
        return master.connection_pool


class SentinelTransport(Transport):
    """``sidekiq-sentinel://host:26379[;sidekiq-sentinel://host2:26379...][/db]``.

    The master's name goes in the transport option ``master_name``. The scheme has a ``-``
    because kombu reads ``x+y://`` as transport ``x`` with ``y://`` for its host, and refuses
    ``.`` and ``:`` in URL schemes.
    """

    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port
