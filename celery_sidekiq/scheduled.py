"""The poller that moves due jobs from ``schedule`` and ``retry`` to their queues.

It runs in a thread of every Celery worker (set up by :func:`celery_sidekiq.setup`), beside any
Ruby pollers: each due job is moved by exactly one of them (see ``promote.lua``). It can also run
on its own, for producers with no worker nearby::

    python -m celery_sidekiq.scheduled sidekiq://localhost:6379/0
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from celery import bootsteps
from kombu import Connection

from kombu_sidekiq.client import Client

logger = logging.getLogger(__name__)

#: Sidekiq's ``average_scheduled_poll_interval``: seconds between polls, on average.
DEFAULT_POLL_INTERVAL: Final = 5.0

#: Seconds past a job's due time that a poll waiting for it wakes (the score must be <= now).
MIN_WAIT: Final = 0.01


class Poller:
    """Polls in a daemon thread: ``start()``, ``stop()``; ``enqueue()`` polls once, now."""

    def __init__(
        self, client: Callable[[], Client], interval: float = DEFAULT_POLL_INTERVAL
    ) -> None:
        if interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, not {interval!r}")
        self._client = client
        self.interval = interval
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def enqueue(self) -> int:
        """Move what is due now; return how many jobs moved."""
        return self._client().enqueue_due()

    def next_due(self) -> float | None:
        """Epoch seconds of the earliest member of ``schedule`` and ``retry``, or None."""
        client = self._client()
        with client.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(client.keys.schedule, 0, 0, withscores=True)
            pipe.zrange(client.keys.retry, 0, 0, withscores=True)
            firsts = [entry[0][1] for entry in pipe.execute() if entry]
        return min(firsts) if firsts else None

    def wait_after_poll(self) -> float:
        """Sidekiq's random wait, cut short when a job is due sooner: a countdown of 1 s runs
        after about 1 s, not after the next poll, as Celery's own transports run it. A member
        already due after a poll (another poller's, or one promotion refused) does not shorten
        it, so nothing ever polls in a loop."""
        wait = self.random_wait()
        due = self.next_due()
        if due is not None:
            until = due - time.time()
            if 0 < until < wait:
                wait = until + MIN_WAIT
        return wait

    def random_wait(self) -> float:
        """Sidekiq's sleep between polls: uniform over 0.5 to 1.5 times the interval, so that
        pollers started together drift apart instead of hitting Redis in step."""
        return self.interval * (0.5 + random.random())

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(target=self.run, name="sidekiq-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self) -> None:
        # The first poll waits a random part of one interval: a fleet restarted at once
        # spreads its polls from the start. Then 0.5 to 1.5 intervals between polls.
        wait = self.interval * random.random()
        while not self._stopped.wait(wait):
            try:
                moved = self.enqueue()
            except Exception as exc:  # Redis down, a bad script reply: log, wait, try again
                logger.warning("scheduled poller: %s: %s", type(exc).__name__, exc)
                moved = 0
            if moved:
                logger.debug("scheduled poller: moved %d due jobs", moved)
            try:
                wait = self.wait_after_poll()
            except Exception as exc:
                logger.warning("scheduled poller: %s: %s", type(exc).__name__, exc)
                wait = self.random_wait()


def client_for(connection: Connection) -> Callable[[], Client]:
    """A getter of a Sidekiq client for a background thread of the worker's main process.

    The client has a connection pool of its own, out of reach of kombu's after-fork cleanup
    (see ``Channel.detached_client``). It is made on first use, so a worker started while
    Redis is down gets it once Redis answers; redis-py reconnects it after that.
    """
    state: dict[str, Client] = {}

    def get() -> Client:
        if "client" not in state:
            connection.ensure_connection(max_retries=1)
            state["client"] = connection.default_channel.detached_client()
        return state["client"]

    return get


class PollerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs a :class:`Poller` in the worker's main process."""

    label = "sidekiq poller"

    # After the pool: a prefork child forked while this thread held a Redis lock would hang.
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        from .app import config_of

        self.interval = config_of(worker.app).poll_interval
        self.poller: Poller | None = None
        self.connection: Connection | None = None

    def start(self, worker: Any) -> None:
        self.connection = worker.app.connection_for_write()
        self.poller = Poller(client_for(self.connection), self.interval)
        self.poller.start()

    def stop(self, worker: Any) -> None:
        if self.poller is not None:
            self.poller.stop()
        if self.connection is not None:
            self.connection.release()

    shutdown = stop


def main(argv: list[str] | None = None) -> None:
    """Run the poller alone until interrupted."""
    import kombu_sidekiq  # noqa: F401  (registers sidekiq://)

    parser = argparse.ArgumentParser(prog="python -m celery_sidekiq.scheduled", description=__doc__)
    parser.add_argument("broker_url", help="sidekiq://[user:password@]host[:port][/db]")
    parser.add_argument("--namespace", default="", help="key prefix, as in setup(namespace=...)")
    parser.add_argument("--sidekiq-version", type=int, default=7, choices=(6, 7, 8))
    parser.add_argument("--interval", type=float, default=DEFAULT_POLL_INTERVAL)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    options = {"namespace": args.namespace, "sidekiq_version": args.sidekiq_version}
    with Connection(args.broker_url, transport_options=options) as connection:
        poller = Poller(client_for(connection), args.interval)
        logger.info("polling schedule and retry every ~%.1fs on %s", args.interval, args.broker_url)
        with contextlib.suppress(KeyboardInterrupt):
            poller.run()


if __name__ == "__main__":
    main()
