"""``setup(app)``: point an existing Celery app at Sidekiq's Redis formats.

::

    app = Celery("proj", broker="sidekiq://localhost:6379/0")
    celery_sidekiq.setup(app)            # returns app

Options (all keyword-only):

``sidekiq_version``  (default 7) the Sidekiq the Ruby side runs: 6, 7 or 8. 8 writes integer
                     millisecond timestamps; 6 and 7 float seconds.
``namespace``        (default "") prefix every key with ``<namespace>:``, as redis-namespace
                     and rusty-sidekiq do.
``poll_interval``    (default 5.0) average seconds between polls of ``schedule`` and ``retry``.
``poller``           (default True) run the scheduled-job poller inside each worker.
``default_queue``    (default "default", Sidekiq's) the queue of tasks that name none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu_sidekiq.job import DEFAULT_SIDEKIQ_VERSION
from kombu_sidekiq.transport import SUPPORTED_VERSIONS

from .registry import CeleryRegistry
from .scheduled import DEFAULT_POLL_INTERVAL, PollerStep

#: Serializers the sidekiq transport refuses: Ruby reads JSON only, and nothing from a payload
#: may be imported or resolved.
REFUSED_SERIALIZERS = frozenset({"pickle", "yaml", "msgpack", "application/x-python-serialize"})


@dataclass(frozen=True)
class Config:
    """The options ``setup`` was given, checked."""

    sidekiq_version: int = DEFAULT_SIDEKIQ_VERSION
    namespace: str = ""
    poll_interval: float = DEFAULT_POLL_INTERVAL
    poller: bool = True
    default_queue: str = "default"

    def __post_init__(self) -> None:
        if self.sidekiq_version not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"setup(sidekiq_version={self.sidekiq_version!r}): use one of "
                f"{SUPPORTED_VERSIONS}, the major version of the Sidekiq the Ruby side runs"
            )
        if not isinstance(self.namespace, str) or self.namespace.endswith(":"):
            raise ValueError(
                f"setup(namespace={self.namespace!r}): give the bare prefix, such as 'myapp'; "
                "the ':' separator is added"
            )
        if not self.poll_interval > 0:
            raise ValueError(f"setup(poll_interval={self.poll_interval!r}): use seconds > 0")
        if not self.default_queue:
            raise ValueError("setup(default_queue=''): name a queue, such as 'default'")


_CONFIG_ATTR = "_celery_sidekiq_config"


def setup(app: Celery, **options: Any) -> Celery:
    """Configure ``app`` for Sidekiq's formats and add the worker parts; returns ``app``.

    Unknown options and bad values fail here, with a message that says what to change.
    """
    fields = Config.__dataclass_fields__
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise TypeError(f"setup() got unknown options {unknown}; known: {sorted(fields)}")
    config = Config(**options)
    setattr(app, _CONFIG_ATTR, config)
    conf = app.conf
    _refuse_unsafe_serializers(conf)
    conf.task_serializer = "json"
    conf.result_serializer = "json"
    conf.accept_content = ["json"]
    conf.result_accept_content = ["json"]
    conf.task_protocol = 2
    if conf.task_default_queue == "celery":  # Celery's default; Sidekiq's is "default"
        conf.task_default_queue = config.default_queue
    transport_options = dict(conf.broker_transport_options or {})
    transport_options.update(
        namespace=config.namespace,
        sidekiq_version=config.sidekiq_version,
        sidekiq_registry=CeleryRegistry(app),
    )
    conf.broker_transport_options = transport_options
    if config.poller:
        app.steps["worker"].add(PollerStep)
    return app


def _refuse_unsafe_serializers(conf: Any) -> None:
    chosen = {conf.task_serializer, conf.result_serializer, *(conf.accept_content or ())}
    refused = sorted(chosen & REFUSED_SERIALIZERS)
    if refused:
        raise ValueError(
            f"celery_sidekiq.setup(): {refused} cannot travel as Sidekiq jobs; Sidekiq jobs are "
            "JSON. Remove them from task_serializer/result_serializer/accept_content."
        )


def config_of(app: Celery) -> Config:
    """The :class:`Config` ``setup`` stored on ``app`` (defaults if setup was not called)."""
    config = getattr(app, _CONFIG_ATTR, None)
    return config if isinstance(config, Config) else Config()
