"""Flower's Broker tab (and ``/api/queues/length``) for ``sidekiq://``.

Flower shows workers, tasks and events through Celery's own remote control and events, which
the sidekiq transport carries unchanged; those work with no change. Its queue lengths come from
a broker reader that Flower picks by URL scheme, and it has none for ``sidekiq://``. Importing
this module gives it one: the length of a queue is its Sidekiq list ``queue:<name>`` (in the
app's namespace; what the Sidekiq Web UI shows) plus kombu's own list of that name, which holds
Celery's non-task messages. Jobs a worker holds in flight are not counted, as Flower's Redis
reader does not count Celery's unacked messages.

Flower runs its config file (``flowerconfig.py`` in the working directory, or ``--conf=``) as
Python in its own process, before it serves anything: that is where to import it, so workers
and producers never import Flower::

    # flowerconfig.py
    import celery_sidekiq.flower  # noqa: F401

    $ celery -A proj flower                      # or: celery -A proj flower --conf=path/to/it

``sidekiq://`` and ``sidekiqs://`` (TLS, with ``broker_use_ssl``) are read; every other scheme
goes to Flower's own readers.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlparse

import flower.views
from flower.utils import broker as flower_broker

from kombu_sidekiq.keys import Keys

#: The schemes this module reads; the rest go to Flower's own factory.
SCHEMES: Final = ("sidekiq", "sidekiqs")


class SidekiqQueues:
    """What a Flower broker reader of ``sidekiq://`` does differently: where a queue lives."""

    redis: Any

    def _sidekiq_keys(self, broker_options: dict[str, Any] | None) -> Keys:
        return Keys(str((broker_options or {}).get("namespace") or ""))

    async def queues(self, names: Any) -> list[dict[str, Any]]:
        names = list(names)
        keys: Keys = self.keys  # type: ignore[attr-defined]
        try:
            async with self.redis.pipeline() as pipeline:
                for name in names:
                    pipeline.llen(keys.queue(name))
                    pipeline.llen(keys.kombu(name))  # Celery's own messages for that queue
                lengths = iter(await pipeline.execute())
            return [{"name": name, "messages": next(lengths) + next(lengths)} for name in names]
        finally:
            await self.redis.aclose()


class SidekiqRedis(SidekiqQueues, flower_broker.Redis):  # type: ignore[misc]
    """``sidekiq://[user:password@]host[:port][/db]``."""

    def __init__(self, broker_url: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(broker_url, *args, **kwargs)
        self.keys = self._sidekiq_keys(kwargs.get("broker_options"))


class SidekiqRedisSsl(SidekiqQueues, flower_broker.RedisSsl):  # type: ignore[misc]
    """``sidekiqs://``: certificates from ``broker_use_ssl``; the server is always verified."""

    def __init__(self, broker_url: str, *args: Any, **kwargs: Any) -> None:
        kwargs["broker_use_ssl"] = kwargs.get("broker_use_ssl") or {}
        super().__init__(broker_url, *args, **kwargs)
        self.keys = self._sidekiq_keys(kwargs.get("broker_options"))


_flowers_own = flower_broker.Broker


class Broker(flower_broker.Broker):  # type: ignore[misc]
    """Flower's broker factory, with the ``sidekiq`` schemes added."""

    def __new__(cls, broker_url: str, *args: Any, **kwargs: Any) -> Any:
        scheme = urlparse(broker_url).scheme
        if scheme == "sidekiq":
            return SidekiqRedis(broker_url, *args, **kwargs)
        if scheme == "sidekiqs":
            return SidekiqRedisSsl(broker_url, *args, **kwargs)
        return _flowers_own(broker_url, *args, **kwargs)


def install() -> None:
    """Make Flower's pages and API use :class:`Broker` (importing this module does it)."""
    flower.views.Broker = Broker  # the name Flower's handlers look the factory up by


install()
