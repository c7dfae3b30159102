"""Which delivered jobs a worker will still run (``celery_sidekiq.running``), as the
transport asks when a lost connection closes its channel. Pure logic: kombu messages and
Celery requests, no Redis (the whole path runs in tests/test_faults.py's connection cuts)."""

from __future__ import annotations

import gc
from typing import Any

from celery.concurrency.base import BasePool
from celery.concurrency.prefork import TaskPool as PreforkPool
from kombu.message import Message

from celery_sidekiq.running import RunningTasks, _received


class Request:
    """What ``running`` reads of Celery's Request (its slots hold the same names)."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.acks: list[tuple[Any, ...]] = []
        self._on_ack = lambda *args: self.acks.append(args)
        self._on_reject = lambda *args: self.acks.append(("reject", *args))
        self._apply_result: Any = None
        self.acknowledged = False

    def acknowledge(self) -> None:
        # As Celery's: the call may only schedule the ack on the event loop.
        self._on_ack("logger", ())
        self.acknowledged = True


class Consumer:
    def __init__(self, pool: Any) -> None:
        self.pool = pool


def received(pool: Any) -> tuple[Message, Request]:
    message = Message(body="{}")
    request = Request(message)
    _received(sender=Consumer(pool), request=request)
    return message, request


def threads_pool() -> BasePool:
    return BasePool(limit=1)


def prefork_pool() -> Any:
    pool = PreforkPool.__new__(PreforkPool)
    pool.flush = lambda: None  # as its on_start sets it: AsynPool's flush
    return pool


running = RunningTasks()


def test_a_job_handed_to_a_pool_that_runs_all_it_is_handed_is_kept() -> None:
    message, request = received(threads_pool())
    assert not running(message)  # reserved, not handed yet (an eta, a rate limit)
    request._apply_result = object()
    assert running(message)


def test_prefork_keeps_only_accepted_jobs() -> None:
    message, request = received(prefork_pool())
    request._apply_result = object()
    assert not running(message)  # its flush drops what no child accepted


def test_an_ack_deferred_by_celery_keeps_the_job_until_it_lands() -> None:
    for pool in (threads_pool(), prefork_pool()):
        message, request = received(pool)
        request.acknowledge()  # Celery's request says acknowledged; the message is not yet
        del request
        gc.collect()
        assert running(message), pool
        message._state = "ACK"  # the ack reached the transport
        assert not running(message)


def test_the_original_ack_and_reject_still_run() -> None:
    _, request = received(threads_pool())
    request.acknowledge()
    request._on_reject("logger", (), True)
    assert request.acks == [("logger", ()), ("reject", "logger", (), True)]


def test_an_unknown_message_is_not_running() -> None:
    assert not running(Message(body="{}"))
