"""Which delivered jobs a task of this worker is running now, for the transport to keep.

When its broker connection is lost, Celery closes the channel and kombu puts back every
message not acknowledged yet, while the tasks already running go on: each such job would run
a second time as soon as a new connection fetches it. The sidekiq transport asks this instead
(its ``sidekiq_running`` option): a job whose task runs stays in flight, and the task's ack
removes it when it ends. Celery's worker state knows what runs: a request is active from the
moment a pool process (or thread) accepted it until it ends.

>>> RunningTasks()(object())
False
"""

from __future__ import annotations

from typing import Any

from celery.worker import state


class RunningTasks:
    """``running(message)``: True while a task of this process runs the job of ``message``."""

    def __json__(self) -> str:
        # It rides in broker_transport_options, which `celery inspect stats` sends as JSON.
        return "RunningTasks()"

    def __call__(self, message: Any) -> bool:
        return any(request.message is message for request in tuple(state.active_requests))
