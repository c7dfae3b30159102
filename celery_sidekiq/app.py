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
``fetch_lease``      (default 40.0) seconds after a worker died (kill -9, OOM, lost host) before
                     its in-flight jobs go back to their queues; live workers renew it from a
                     thread, so a job is never handed to a second worker while the first runs.
``heartbeat``        (default True) register each worker as a Sidekiq process: ``processes``,
                     its work hash, ``stat:*`` and UI signals (see ``celery_sidekiq.heartbeat``).
``beat_interval``    (default 5.0, Sidekiq 6's pace) seconds between heartbeats; keep it well
                     under the 60 s TTL of the process entry.
``max_retries``      (default 25, Sidekiq's) retries of a failed ``retry: true`` job before it
                     goes to the dead set; ``retry: N`` in a job overrides it.
``unknown_class``    (default "retry") a job whose class no task runs fails as in sidekiq.rb
                     (retry set with backoff, then dead); "requeue" returns it to the end of its
                     queue for another consumer (see ``celery_sidekiq.retry``).
``middleware``       (default ()) server middleware around every job a worker runs: callables
                     ``(job, call_next) -> result`` (see ``celery_sidekiq.middleware``).
``max_payload_bytes`` (default 0: no cap) the largest job, in bytes of JSON: a producer gets
                     ``PayloadTooLarge``, a worker moves a bigger job untouched to the dead set.
``death_handlers``   (default ()) callables ``(job, exc)`` run when a job's retries are over
                     (dead, or discarded), as sidekiq.rb's ``config.death_handlers``.
``queue_order``      (default "strict", Sidekiq's) how a worker orders its queues on each
                     fetch: "strict" (the order of ``-Q``, or of ``queues``: a later queue only
                     while the earlier ones are empty), "weighted" (``queue_weights``: a queue
                     comes first weight/total of the time) or "random" (every weight 1).
``queue_weights``    (default none) ``{queue: weight}`` for the weighted order (whole numbers
                     >= 1; a consumed queue not listed weighs 1); alone, it means "weighted".
``queues``           (default none) Sidekiq's notation, one ``"name"`` or ``"name,weight"`` per
                     queue (``["critical,3", "default,2", "low,1"]``, as ``sidekiq -q
                     critical,3 -q default,2 -q low,1``): the queues a worker consumes unless
                     ``-Q`` says otherwise, and their order as Sidekiq reads it (no weights:
                     strict; all 1: random; else weighted). The worker command also takes it:
                     ``celery -A proj worker -q critical,3 -q default,2 -q low,1``.
``failures``         (default "auto") how a failed job ends: "auto" Sidekiq's way (retry set,
                     then dead) for jobs from Sidekiq producers and tasks that ask for Sidekiq
                     retries, Celery's way (FAILURE, errbacks; the job in dead) for the
                     rest; "sidekiq" or "celery" for every job (see ``celery_sidekiq.retry``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery, bootsteps
from kombu.exceptions import OperationalError

from kombu_sidekiq.fetch import DEFAULT_LEASE, DEFAULT_MAX_RECOVERIES
from kombu_sidekiq.job import DEFAULT_SIDEKIQ_VERSION
from kombu_sidekiq.order import MODES, QueueOrder
from kombu_sidekiq.transport import SUPPORTED_VERSIONS, authentication_failure

from .heartbeat import DEFAULT_BEAT_INTERVAL, HeartbeatStep
from .middleware import Middleware, check
from .producer import install as install_producer
from .registry import FAILURE_MODES, CeleryRegistry
from .retry import (
    DEFAULT_MAX_RETRIES,
    UNKNOWN_CLASS_MODES,
    DeathHandler,
    JobsStep,
    Processor,
    attach,
)
from .running import RunningTasks
from .scheduled import DEFAULT_POLL_INTERVAL, PollerStep
from .unique import install as install_unique

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
    queue_order: str | None = None
    queue_weights: Mapping[str, int] | None = None
    queues: tuple[str, ...] = ()
    fetch_lease: float = DEFAULT_LEASE
    max_recoveries: int = DEFAULT_MAX_RECOVERIES
    heartbeat: bool = True
    beat_interval: float = DEFAULT_BEAT_INTERVAL
    max_retries: int = DEFAULT_MAX_RETRIES
    unknown_class: str = "retry"
    middleware: tuple[Middleware, ...] = ()
    max_payload_bytes: int = 0
    death_handlers: tuple[DeathHandler, ...] = ()
    failures: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "middleware", check(self.middleware))  # a list is fine too
        handlers = self.death_handlers
        if callable(handlers) or not all(callable(handler) for handler in handlers):
            raise ValueError(
                f"setup(death_handlers={handlers!r}): give a list of callables (job, exc)"
            )
        object.__setattr__(self, "death_handlers", tuple(handlers))
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ValueError(f"setup(max_retries={self.max_retries!r}): use a whole number >= 0")
        if self.max_retries < 0:
            raise ValueError(f"setup(max_retries={self.max_retries!r}): use a whole number >= 0")
        if self.failures not in FAILURE_MODES:
            raise ValueError(
                f"setup(failures={self.failures!r}): use 'auto' (Sidekiq's retries for jobs "
                "from Sidekiq producers and tasks that ask for them, Celery's failures for the "
                "rest), 'sidekiq' (retry set, then dead, for every job) or 'celery' (FAILURE "
                "and errbacks for every job whose task asks for no Sidekiq retries)"
            )
        if self.unknown_class not in UNKNOWN_CLASS_MODES:
            raise ValueError(
                f"setup(unknown_class={self.unknown_class!r}): use 'retry' (fail as sidekiq.rb "
                "does: retry set, then dead) or 'requeue' (back to its queue for a consumer "
                "that has the class)"
            )
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
        if not 0 < self.beat_interval <= 30:
            raise ValueError(f"setup(beat_interval={self.beat_interval!r}): use seconds in (0, 30]")
        if not self.fetch_lease >= 2:
            raise ValueError(f"setup(fetch_lease={self.fetch_lease!r}): use seconds >= 2")
        recoveries = self.max_recoveries
        if isinstance(recoveries, bool) or not isinstance(recoveries, int) or recoveries < 0:
            raise ValueError(
                f"setup(max_recoveries={recoveries!r}): use how many times a job may come back "
                "from dead workers before it goes to dead as poison (a whole number; 0: no limit)"
            )
        if not self.default_queue:
            raise ValueError("setup(default_queue=''): name a queue, such as 'default'")
        cap = self.max_payload_bytes
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ValueError(f"setup(max_payload_bytes={cap!r}): use a byte count, 0 for no cap")
        if not isinstance(self.queues, str):  # a string is refused, with the fix, below
            object.__setattr__(self, "queues", tuple(self.queues or ()))
        self.order  # noqa: B018  (checks queue_order, queue_weights and queues)

    @property
    def order(self) -> QueueOrder:
        """The queue order these options say (``kombu_sidekiq.order``)."""
        return queue_order(self.queue_order, self.queue_weights, self.queues)


def queue_order(
    mode: str | None, weights: Mapping[str, int] | None, queues: Any = ()
) -> QueueOrder:
    """The order ``setup(queue_order=, queue_weights=, queues=)`` describe; a ValueError says
    what to change."""
    if queues:
        if mode is not None or weights is not None:
            raise ValueError(
                f"setup(queues={queues!r}) already says the order, in Sidekiq's notation: drop "
                "queue_order and queue_weights, or keep those and name the queues with -Q"
            )
        try:
            return QueueOrder.from_sidekiq(queues)
        except ValueError as exc:
            raise ValueError(
                f"setup(queues={queues!r}): {exc} (Sidekiq's notation, one string per queue: "
                "queues=['critical,3', 'default,2', 'low,1'])"
            ) from None
    if mode is not None and mode not in MODES:
        raise ValueError(
            f"setup(queue_order={mode!r}): use 'strict' (the order of -Q, Sidekiq's default), "
            "'weighted' (with queue_weights={'critical': 3, 'default': 2, 'low': 1}) or "
            "'random' (every queue as likely first)"
        )
    if weights is not None and not isinstance(weights, Mapping):
        raise ValueError(
            f"setup(queue_weights={weights!r}): give a dict {{queue: weight}}, such as "
            "{'critical': 3, 'default': 2, 'low': 1}"
        )
    for name, weight in (weights or {}).items():
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(
                f"setup(queue_weights={weights!r}): the weight of {name!r} must be a whole "
                "number >= 1 (a queue comes first weight/total of the time)"
            )
    if mode == "weighted" and not weights:
        raise ValueError(
            "setup(queue_order='weighted') needs queue_weights={queue: weight, ...}, such as "
            "{'critical': 3, 'default': 2, 'low': 1}"
        )
    if weights and (mode == "strict" or (mode == "random" and set(weights.values()) != {1})):
        raise ValueError(
            f"setup(queue_order={mode!r}, queue_weights={weights!r}): the {mode} order takes no "
            "weights; use queue_order='weighted' (or leave queue_order out)"
        )
    try:
        return QueueOrder.build(mode, weights)
    except ValueError as exc:
        raise ValueError(f"setup(queue_order={mode!r}, queue_weights={weights!r}): {exc}") from None


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
    # At least once, as reliable fetch promises: a job is acknowledged after it ran, and one
    # whose pool process died goes back to its queue. Override after setup() to opt out.
    conf.task_acks_late = True
    conf.task_reject_on_worker_lost = True
    if conf.task_default_queue == "celery":  # Celery's default; Sidekiq's is "default"
        conf.task_default_queue = config.default_queue
    registry = CeleryRegistry(app, config.failures)
    processor = Processor(
        app,
        registry,
        version=config.sidekiq_version,
        max_retries=config.max_retries,
        unknown_class=config.unknown_class,
        middleware=config.middleware,
        death_handlers=config.death_handlers,
        failures=config.failures,
    )
    transport_options = dict(conf.broker_transport_options or {})
    transport_options.update(
        namespace=config.namespace,
        sidekiq_version=config.sidekiq_version,
        sidekiq_registry=registry,
        sidekiq_intake=processor.unknown,
        fetch_lease=config.fetch_lease,
        fetch_max_recoveries=config.max_recoveries,
        sidekiq_running=RunningTasks(),
        max_payload_bytes=config.max_payload_bytes,
        **config.order.transport_options(),
    )
    conf.broker_transport_options = transport_options
    if config.poller:
        app.steps["worker"].add(PollerStep)
    if config.heartbeat:
        app.steps["worker"].add(HeartbeatStep)
    app.steps["worker"].add(JobsStep)
    app.steps["worker"].add(BrokerCheck)
    app.steps["worker"].add(QueuesStep)
    _add_queue_option(app)
    attach(app, processor)
    install_unique(app)
    install_producer(app)
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


#: sysexits.h's EX_CONFIG: the worker's configuration is wrong.
EX_CONFIG = 78

#: TLS options (``broker_use_ssl`` or the URL's query) that name files.
SSL_FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")


class BrokerCheck(bootsteps.Step):  # type: ignore[misc]
    """Stops a worker at startup, saying what to change, when its broker settings cannot work:
    a TLS file that does not exist, or a user or password that Redis refuses.

    Celery retries both like a network outage (100 times, minutes of log lines) with messages
    that hide the cause ("Error 2 connecting to host:port. No such file or directory."). Once
    the worker runs, a refused login (a password rotated on the server) is retried as usual.
    """

    label = "sidekiq broker check"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        # Here rather than in start(): this runs before any other step has touched Redis.
        with worker.app.connection_for_read() as connection:
            problem = _missing_ssl_file(connection) or _refused_login(connection)
        if problem:
            logging.getLogger(__name__).critical("%s", problem)
            raise SystemExit(EX_CONFIG)


def _missing_ssl_file(connection: Any) -> str | None:
    options = connection.ssl if isinstance(connection.ssl, dict) else {}
    for name in SSL_FILE_OPTIONS:
        path = options.get(name)
        if path and not os.path.exists(path):
            return f"TLS option {name}={path!r}: no such file; fix broker_use_ssl or the broker URL"
    return None


def _refused_login(connection: Any) -> str | None:
    try:
        connection.ensure_connection(max_retries=0)  # one try, no waiting
    except OperationalError as exc:
        if isinstance(exc.__cause__, redis.AuthenticationError):
            return str(authentication_failure(connection, exc.__cause__))
    return None  # connected, or Redis away: the consumer retries as usual


# -- queues and their order -------------------------------------------------------------------

#: The worker option that takes Sidekiq's ``-q name[,weight]``, repeated as in Sidekiq.
QUEUE_OPTION = ("-q", "--sidekiq-queue")


def _add_queue_option(app: Celery) -> None:
    """``celery worker -q critical,3 -q default,2 -q low,1``: Sidekiq's command line. (Celery's
    own ``-Q`` splits on commas, so ``-Q critical,3`` would name a queue ``3``.)"""
    import click

    options = app.user_options["worker"]
    if any(getattr(option, "name", None) == "sidekiq_queue" for option in options):
        return
    options.add(
        click.Option(
            list(QUEUE_OPTION),
            "sidekiq_queue",
            multiple=True,
            metavar="QUEUE[,WEIGHT]",
            help="A queue to consume, in Sidekiq's notation (repeat it, as sidekiq -q): no "
            "weights: strict order; all 1: random; else weighted. Instead of -Q.",
        )
    )


class QueuesStep(bootsteps.Step):  # type: ignore[misc]
    """The worker's queues and their order: ``-q name[,weight]`` on the command line, else
    ``setup(queues=...)`` when ``-Q`` is not given; a bad value stops the worker at startup.

    It runs while the worker is built, before the consumer connects, so the consumer's channel
    gets the order in its transport options and the heartbeat reports it.
    """

    label = "sidekiq queues"

    def __init__(self, worker: Any, sidekiq_queue: Any = None, **kwargs: Any) -> None:
        app = worker.app
        config = config_of(app)
        given = tuple(sidekiq_queue or ())
        selected = getattr(app.amqp.queues, "_consume_from", None) is not None  # -Q given
        if given:
            if selected:
                _config_error(
                    f"-Q and -q {' -q '.join(given)} both name the queues: use one (-q takes "
                    "Sidekiq's name,weight; -Q takes Celery's comma-separated names)"
                )
            try:
                order = QueueOrder.from_sidekiq(given)
            except ValueError as exc:
                _config_error(f"-q {' -q '.join(given)}: {exc} (as in -q critical,3 -q low,1)")
            config = dataclasses.replace(config, queue_order=None, queue_weights=None, queues=given)
            setattr(app, _CONFIG_ATTR, config)
            options = dict(app.conf.broker_transport_options or {})
            options.update(order.transport_options())
            app.conf.broker_transport_options = options
        if config.queues and (given or not selected):
            worker.setup_queues(config.order.names)


def _config_error(message: str) -> None:
    logging.getLogger(__name__).critical("%s", message)
    raise SystemExit(EX_CONFIG)
