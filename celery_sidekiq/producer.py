"""Celery's producers, made :class:`kombu_sidekiq.transport.Producer`: ``apply_async`` writes a
task's job straight from its parts instead of through kombu's message envelope.

Celery takes its producers from a pool that its ``AMQP`` object owns and rebuilds after every
fork; ``setup(app)`` gives the app an ``AMQP`` subclass whose pool hands out the direct
producer, so the worker's children, which enqueue retries and callbacks, have it too. Every
other part of Celery's publishing (routing, the ``before/after_task_publish`` signals,
``task-sent`` events, publish retries) runs unchanged around the producer's ``publish``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.utils.imports import symbol_by_name

from kombu_sidekiq.transport import Producer


class DirectProducerMixin:
    """An ``AMQP`` whose producers are :class:`~kombu_sidekiq.transport.Producer`."""

    Producer = Producer

    @property
    def producer_pool(self) -> Any:
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
    if "amqp" in app.__dict__:  # already built: rebuilt from the new class on next use
        base = type(app.__dict__.pop("amqp"))
    else:
        base = symbol_by_name(app.amqp_cls)
    if issubclass(base, DirectProducerMixin):
        return
    if base is AMQP:
        app.amqp_cls = f"{__name__}:DirectAMQP"  # by name, as Celery pickles an app
        return
    # An app with its own AMQP class keeps it, under a subclass this module can be asked for.
    name = f"Direct{base.__name__}"
    globals()[name] = type(name, (DirectProducerMixin, base), {"__module__": __name__})
    app.amqp_cls = f"{__name__}:{name}"


__all__ = ["DirectAMQP", "DirectProducerMixin", "install"]
