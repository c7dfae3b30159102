"""Server middleware: a chain of links around every Sidekiq job a worker runs.

Sidekiq's server middleware, for Celery workers. A link is any callable
``(job, call_next) -> result``: ``job`` is the job as it was read from Redis (a ``dict`` with
``class``, ``args``, ``jid``, ``queue``, ``retry``... and every extra key), ``call_next()`` runs
the rest of the chain and then the task, and returns the task's result. A link may

* call ``call_next()`` (at most once) and return what it returns: the job runs;
* return without calling it: the job is skipped, and counts as done (acknowledged, "processed",
  its result is what the link returned);
* raise: the job failed, exactly as if the task had raised, so Sidekiq's retry rules apply.

::

    def log_jobs(job, call_next):
        started = time.monotonic()
        try:
            return call_next()
        finally:
            logger.info("%s %s took %.3fs", job["class"], job["jid"], time.monotonic() - started)

    celery_sidekiq.setup(app, middleware=[log_jobs, SkipExpiredUsers(...)])

Links run in the order given, the first one outermost, in the process and thread that runs
the task (a prefork child, a pool thread), inside the task's request: ``celery.current_task``
and its ``request`` are available. Every Sidekiq job goes through the chain, Celery's own tasks
(class ``celery.*``, e.g. ``celery.chord_unlock``) included; tasks called directly or eagerly
(no job) do not. The ``job`` dict is a fresh parse per run: changing it changes neither the
task's arguments nor what a retry stores (Sidekiq's retry also re-reads the original JSON).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kombu_sidekiq.job import Job

Middleware = Callable[[Job, Callable[[], Any]], Any]
"""A link: ``link(job, call_next)``; see the module documentation."""


class Chain:
    """Links in order; :meth:`invoke` runs them around a final call.

    >>> seen = []
    >>> def outer(job, call_next):
    ...     seen.append("outer"); return call_next()
    >>> def skip_odd(job, call_next):
    ...     return "skipped" if job["args"][0] % 2 else call_next()
    >>> chain = Chain([outer, skip_odd])
    >>> chain.invoke({"args": [1]}, lambda: "ran"), chain.invoke({"args": [2]}, lambda: "ran")
    ('skipped', 'ran')
    >>> seen
    ['outer', 'outer']
    """

    def __init__(self, links: Iterable[Middleware] = ()) -> None:
        self.links: tuple[Middleware, ...] = check(links)

    def __bool__(self) -> bool:
        return bool(self.links)

    def invoke(self, job: Job, final: Callable[[], Any]) -> Any:
        """Run the links around ``final`` (the task), outermost first; return the result."""

        def call(index: int) -> Any:
            if index == len(self.links):
                return final()
            return self.links[index](job, lambda: call(index + 1))

        return call(0)


def check(links: Iterable[Middleware]) -> tuple[Middleware, ...]:
    """The links as a tuple; anything that is not callable fails with what to pass instead."""
    if isinstance(links, (str, bytes)) or not isinstance(links, Iterable):
        raise TypeError(
            f"setup(middleware={links!r}): pass a list of callables (job, call_next) -> result"
        )
    checked = tuple(links)
    for link in checked:
        if not callable(link):
            raise TypeError(
                f"setup(middleware=[... {link!r} ...]): each link must be a callable "
                "(job, call_next) -> result, such as a function or an object with __call__; "
                "pass the object itself, not its name"
            )
    return checked
