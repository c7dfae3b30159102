"""Which delivered jobs this worker's tasks are running now, for the transport to keep.

When its broker connection is lost, Celery closes the channel and kombu puts back every
message not acknowledged yet, while the tasks already running go on: each such job would run
a second time as soon as a new connection fetches it. The sidekiq transport asks this instead
(its ``sidekiq_running`` option): a job whose request is active (a pool process or thread took
it) stays in flight, and the task's ack removes it when it ends; the fetch keeps its lease
alive until then. The rest goes back to its queue at once. At a stop (warm or cold) nothing
more will run: everything not acked goes back.

A request reserved but not yet taken by the pool at that moment goes back too; Celery drops
most of those (``Consumer.on_close``), but a pool that takes one before that runs it, and the
job may then run twice: at least once, never lost.

>>> RunningTasks()(object())
False
"""

from __future__ import annotations

from typing import Any

from celery.worker import state


class RunningTasks:
    """``running(message)``: True while a request of this process runs the job of ``message``."""

    def __json__(self) -> str:
        # It rides in broker_transport_options, which `celery inspect stats` sends as JSON.
        return "RunningTasks()"

    def __call__(self, message: Any) -> bool:
        if state.should_stop is not None or state.should_terminate is not None:
            return False
        return any(request.message is message for request in tuple(state.active_requests))
