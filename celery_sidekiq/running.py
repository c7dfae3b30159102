"""Which delivered jobs this worker will still run, for the transport to keep.

When its broker connection is lost, Celery closes the channel and kombu puts back every
message not acknowledged yet, while the tasks already running go on: each such job would run
a second time as soon as a new connection fetches it. The sidekiq transport asks this instead
(its ``sidekiq_running`` option): a job this worker will run stays in flight, and the task's
ack removes it when it ends; the fetch keeps its lease alive until then. The rest goes back
to its queue at once. At a stop (warm or cold) nothing more will run: everything goes back
but the jobs whose ack is on its way (below).

Which jobs will run depends on the pool. After a lost connection Celery forgets the requests
it reserved (``Consumer.on_close``) and flushes the pool:

- a pool whose ``flush`` drops nothing (threads, gevent, eventlet, solo) runs every request
  it was handed: Celery handed it over as soon as it reserved it (``Request.execute_using_pool``
  sets ``_apply_result``), so those are kept, started or not;
- prefork's flush drops every job a child has not accepted yet, so only the accepted ones
  (Celery's ``active_requests``) are kept. A job written to a child just before the loss and
  accepted just after runs there and also goes back: it may run twice (at least once).

A task that has ended is not done with its job until its ack reaches the transport, and
Celery may defer that ack to its event loop (``Consumer.call_soon_ack``): the request counts
as acknowledged, and may even be gone, while the message is not. So a job whose task asked for
its ack (or reject) stays in flight until that call lands, whatever the pool, stop or not.

>>> RunningTasks()(object())
False
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

from celery import signals
from celery.concurrency.base import BasePool
from celery.worker import state

#: This process's requests received by a pool that runs everything it is handed; weak: a
#: request leaves when Celery is done with it.
_handed: weakref.WeakSet[Any] = weakref.WeakSet()


#: Set on a message whose task asked for its ack or reject, which Celery may not have made
#: yet (kept on the message: kombu's base Message takes no weak reference).
SETTLING = "_sidekiq_settling"


def _received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None:
        return
    _note_settling(request)
    pool = getattr(sender, "pool", None)
    if pool is not None and _runs_all_handed(pool):
        _handed.add(request)


def _note_settling(request: Any) -> None:
    # Celery's Request calls these once its task is done; the ack itself may come later.
    message = request.message
    for attr in ("_on_ack", "_on_reject"):
        call = getattr(request, attr, None)
        if call is not None:
            setattr(request, attr, _noting(call, message))


def _noting(call: Any, message: Any) -> Any:
    def settle(*args: Any, **kwargs: Any) -> Any:
        with contextlib.suppress(AttributeError):  # never in the way of the ack itself
            setattr(message, SETTLING, True)
        return call(*args, **kwargs)

    return settle


def _runs_all_handed(pool: Any) -> bool:
    # prefork's flush drops what no child accepted (set on the instance when the pool starts:
    # its class still has BasePool's); BasePool's drops nothing.
    flush = getattr(pool, "flush", None)
    return getattr(flush, "__func__", None) is BasePool.flush


class RunningTasks:
    """``running(message)``: True while this process will still run the job of ``message``."""

    def __init__(self) -> None:
        signals.task_received.connect(_received, weak=False, dispatch_uid=__name__)

    def __json__(self) -> str:
        # It rides in broker_transport_options, which `celery inspect stats` sends as JSON.
        return "RunningTasks()"

    def __call__(self, message: Any) -> bool:
        if getattr(message, SETTLING, False):
            return not message.acknowledged  # its ack (or reject) is on its way
        if state.should_stop is not None or state.should_terminate is not None:
            return False
        if any(request.message is message for request in tuple(state.active_requests)):
            return True
        return any(
            request.message is message
            and request._apply_result is not None  # handed to the pool (not waiting on an eta)
            for request in tuple(_handed)
        )
