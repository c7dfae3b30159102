"""Jobs a consumer takes but does not deliver: where they go instead.

A channel may be given an *intake*, a callable that sees each job as it is fetched and either
lets it through (returns ``None``) or says where it goes instead (a :class:`Divert`). The
transport then moves the job out of the worker's in-flight hash and to that place in one
atomic step (``ReliableFetch.settle``, ``settle.lua``). ``celery_sidekiq`` uses it for jobs
whose class no task runs::

    def intake(queue: str, job: Job, raw: str) -> Divert | None:
        if job["class"] in known:
            return None
        return Divert.queue(raw)            # back to the end of the line, for another consumer
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .job import Job

Target = Literal["retry", "schedule", "dead", "queue"]


@dataclass(frozen=True)
class Divert:
    """Where a fetched job goes instead of the worker, and what is stored there."""

    target: Target
    payload: str
    #: When it is due (retry, schedule), as float epoch seconds.
    at: float = 0.0

    @classmethod
    def queue(cls, payload: str) -> Divert:
        """Back to the end of the job's queue (``LPUSH``), behind every waiting job."""
        return cls("queue", payload)


Intake = Callable[[str, Job, str], Divert | None]
"""``intake(queue, job, raw)``: ``None`` to deliver the job, or where it goes instead."""
