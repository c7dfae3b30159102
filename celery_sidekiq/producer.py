"""Celery's producers, made :class:`kombu_sidekiq.transport.Producer`: ``apply_async`` writes a
task's job straight from its parts instead of through kombu's message envelope.

Celery takes its producers from a pool that its ``AMQP`` object owns and rebuilds after every
fork; ``setup(app)`` gives the app an ``AMQP`` subclass whose pool hands out the direct
producer, so the worker's children, which enqueue retries and callbacks, have it too. Every
other part of Celery's publishing (routing, the ``before/after_task_publish`` signals,
``task-sent`` events, publish retries) runs unchanged around the producer's ``publish``.
"""

from __future__ import annotations

import threading
from typing import Any, Final

from celery import Celery
from celery.app.amqp import AMQP
from celery.utils.imports import symbol_by_name

from kombu_sidekiq.transport import Producer

#: Held while an app builds its producer pool. Celery's first use of ``app.pool`` calls
#: ``kombu.pools.set_limit``, which iterates every pool of the process while another app's
#: first publish, in another thread, adds its own: "dictionary changed size during iteration".
_POOL_BUILD: Final = threading.Lock()


class DirectProducerMixin:
    """An ``AMQP`` whose producers are :class:`~kombu_sidekiq.transport.Producer`."""

    Producer = Producer

    @property
    def producer_pool(self) -> Any:
        if self._producer_pool is None:  # type: ignore[attr-defined]
            with _POOL_BUILD:
                super().producer_pool  # type: ignore[misc]  # noqa: B018 (builds it)
        pool = super().producer_pool  # type: ignore[misc]
        # kombu's pool builds its producers lazily, reading this attribute each time; the pool
        # is shared by every app on the same broker URL, and the class falls back to kombu's
        # own publish for anything that is not a task message on a sidekiq channel.
        if pool.Producer is not Producer:
            pool.Producer = Producer
        return pool


class DirectAMQP(DirectProducerMixin, AMQP):  # type: ignore[misc]
    """Celery's own ``AMQP`` with direct producers."""


def install(app: Celery) -> None:
    """Make ``app``'s producers direct (``setup`` calls it)."""
    built = app.__dict__.get("amqp")
    base = type(built) if built is not None else symbol_by_name(app.amqp_cls)
    if issubclass(base, DirectProducerMixin):
        return
    direct = DirectAMQP if base is AMQP else _direct_subclass(base)
    app.amqp_cls = f"{__name__}:{direct.__name__}"  # by name, as Celery pickles an app
    if built is not None:
        # Already in use: keep what it holds (queues a worker selected, its router), only
        # its producer pool changes.
        built.__class__ = direct


def _direct_subclass(base: type) -> type:
    # An app with its own AMQP class keeps it, under a subclass this module can be asked for
    # by name (a second base of the same name gets a numbered one).
    for value in list(globals().values()):
        if isinstance(value, type) and value.__bases__ == (DirectProducerMixin, base):
            return value
    name, n = f"Direct{base.__name__}", 1
    while name in globals():
        n += 1
        name = f"Direct{base.__name__}{n}"
    direct = type(name, (DirectProducerMixin, base), {"__module__": __name__})
    globals()[name] = direct
    return direct


__all__ = ["DirectAMQP", "DirectProducerMixin", "install"]
