"""Instant pick-up on every queue: wake an idle worker's wait when a job arrives elsewhere.

An idle channel waits with ``BRPOPLPUSH`` on one queue (its first: a job there lands in its
landing list at once). Its other queues are watched by Redis client-side tracking in BCAST
mode, which needs no server configuration: the waiting connection runs ``CLIENT TRACKING ON
REDIRECT <id> BCAST PREFIX <ns>queue:<name> ... NOLOOP`` (the transport sends it, pipelined
with a fetch, only while the worker is idle), and Redis sends an invalidation message to
connection ``<id>`` whenever one of those keys changes (an ``LPUSH``). That connection is the
:class:`Waker`'s: a thread reads the invalidations and sends ``CLIENT UNBLOCK <waiting
connection>``, so the ``BRPOPLPUSH`` returns nil at once, as if it had timed out, and the
channel's next fetch takes the job from whichever queue it is in. A job is never outside
Redis's record of who holds it: it is in its queue until the fetch script moves it.

The race between "the fetch found nothing" and "the wait started" is closed by two flags the
channel and the thread share: ``pending`` (an invalidation came since the last fetch was sent:
the channel fetches again instead of waiting) and ``blocked`` (the number of the wait in flight:
the thread repeats ``CLIENT UNBLOCK`` until it lands, since the wait may reach Redis after it).

The thread has a connection pool of its own (``Channel.detached_client`` explains why: kombu
disconnects a channel's pools in every forked child), speaks RESP2 (a subscriber to
``__redis__:invalidate``), pings while quiet to notice a dead connection, and reconnects with a
new client id (``generation`` counts them; the channel then tracks again with the new id). A
server that refuses any of it (Redis before 6, an ACL without ``CLIENT``, a proxy) sets
``failed`` and the channel goes back to taking its queues in turn.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any, Final

import redis

logger = logging.getLogger(__name__)

#: The channel Redis sends a RESP2 subscriber's invalidation messages on.
INVALIDATE_CHANNEL: Final = "__redis__:invalidate"

#: Seconds of silence on the subscriber connection before a PING, and again before the
#: connection counts as dead.
PING_AFTER: Final = 5.0

#: Longest pause between two ``CLIENT UNBLOCK`` tries for one wait (it starts at 0.5 ms).
UNBLOCK_BACKOFF: Final = 0.02

#: Seconds the thread waits for any one reply before it takes its connection for dead.
SOCKET_TIMEOUT: Final = 10.0

#: Seconds after a start or a reconnect during which the waker counts as starting (the channel
#: waits in short turns meanwhile); longer, and it waits in turn as it would without waking.
STARTING_FOR: Final = 10.0

#: Seconds between reconnection attempts while Redis is away.
RECONNECT_DELAY: Final = 1.0

_ERRORS: Final = (redis.ConnectionError, redis.TimeoutError, OSError)


class Waker:
    """The thread that ends a channel's idle wait when a job arrives in another queue.

    ``redirect`` (the client id tracking sends invalidations to) is None until the thread is
    subscribed. The channel sets ``poll_id`` (its waiting connection's client id), clears
    ``pending`` before each fetch, and sets ``blocked`` to a wait's number while it is in
    flight (0 otherwise).
    """

    def __init__(self, pool: redis.ConnectionPool, unblock_for: float = 2.0) -> None:
        """``pool``: connections of this waker alone. ``unblock_for``: the longest a wait
        lasts (seconds), so the longest the thread keeps trying to end one."""
        pool.connection_kwargs["protocol"] = 2  # a RESP2 subscriber: invalidations as messages
        # A reply that never comes (a half-open connection) must not hang the thread.
        pool.connection_kwargs["socket_timeout"] = SOCKET_TIMEOUT
        self.pool = pool
        self.unblock_for = unblock_for
        self.redirect: int | None = None
        self.generation = 0
        self.poll_id: int | None = None
        self.blocked = 0
        self.pending = False
        self.failed: str | None = None
        self.wakes = 0  # invalidations seen, for tests and logs
        self._changed_at = time.monotonic()
        self._stopped = threading.Event()
        self._reconnect = threading.Event()
        self._sub: Any = None
        self._thread: threading.Thread | None = None

    @property
    def ready(self) -> bool:
        """Subscribed, and not given up: tracking may redirect to :attr:`redirect`."""
        return self.redirect is not None and self.failed is None

    @property
    def starting(self) -> bool:
        """Subscribing (just started, or reconnecting) for at most :data:`STARTING_FOR`."""
        return (
            self.redirect is None
            and self.failed is None
            and time.monotonic() - self._changed_at < STARTING_FOR
        )

    def start(self) -> None:
        if self._thread is None:
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="sidekiq-wake", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        with contextlib.suppress(Exception):
            self.pool.disconnect()

    def reconnect(self) -> None:
        """Drop both connections and subscribe again (the channel's own connection moved:
        a reconnect, perhaps to a new master after a failover)."""
        self.redirect = None
        self._changed_at = time.monotonic()
        self._reconnect.set()
        self._interrupt()

    def _interrupt(self) -> None:
        sub = self._sub
        sock = getattr(sub, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopped.is_set():
            sub = unblocker = None
            try:
                sub, unblocker = self._connect()
                self._serve(sub, unblocker)
            except redis.ResponseError as exc:
                self.failed = f"Redis refused {exc}"
                self.redirect = None
                return
            except _ERRORS as exc:
                if not self._stopped.is_set() and not self._reconnect.is_set():
                    logger.debug("wake-up connection lost (%s); reconnecting", exc)
                    self._stopped.wait(RECONNECT_DELAY)
            finally:
                self.redirect = None
                self._sub = None
                for conn in (sub, unblocker):
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.disconnect()
                self._reconnect.clear()

    def _connect(self) -> tuple[Any, Any]:
        unblocker: Any = self.pool.make_connection()
        unblocker.connect()
        # Refused here rather than at the first job: no CLIENT UNBLOCK, no waking.
        unblocker.send_command("CLIENT", "UNBLOCK", 0)
        unblocker.read_response()
        sub: Any = self.pool.make_connection()
        sub.connect()
        self._sub = sub
        sub.send_command("CLIENT", "ID")
        client_id = int(sub.read_response())
        sub.send_command("SUBSCRIBE", INVALIDATE_CHANNEL)
        sub.read_response()
        self.generation += 1
        self.redirect = client_id
        return sub, unblocker

    def _serve(self, sub: Any, unblocker: Any) -> None:
        pinged = False
        while not self._stopped.is_set() and not self._reconnect.is_set():
            if not sub.can_read(timeout=PING_AFTER):
                if pinged:
                    raise redis.ConnectionError("no reply to a PING on the wake-up connection")
                sub.send_command("PING")
                pinged = True
                continue
            message = sub.read_response()
            pinged = False
            if isinstance(message, list) and len(message) >= 2 and message[0] == b"message":
                self.wakes += 1
                self.wake(unblocker)

    def wake(self, unblocker: Any) -> None:
        """A watched queue changed: end the wait in flight, or the one about to start."""
        self.pending = True
        wait, poll_id = self.blocked, self.poll_id
        if not wait or poll_id is None:
            return  # fetching: the channel sees ``pending`` before it waits
        delay, deadline = 0.0005, time.monotonic() + self.unblock_for
        # 0 means that connection is not blocked: the wait is on its way to Redis (retry), or
        # it ended and the channel has not read its reply yet (``blocked`` changes soon).
        while wait == self.blocked and not self._stopped.is_set():
            unblocker.send_command("CLIENT", "UNBLOCK", poll_id)
            if unblocker.read_response() or time.monotonic() > deadline:
                return
            time.sleep(delay)
            delay = min(delay * 2, UNBLOCK_BACKOFF)
