"""The kombu transport behind ``sidekiq://`` and ``sidekiqs://`` (TLS).

This is the only module that touches kombu's private internals. It subclasses kombu's Redis
``Channel`` and ``Transport`` (pinned: kombu 5.7.x) and keeps their machinery (the BRPOP poller,
the event-loop integration, ack emulation, fanout over PUB/SUB) while changing where task
messages live and what they look like:

* a Celery task message for queue ``q`` is written as a Sidekiq job: ``SADD queues q`` and
  ``LPUSH queue:q`` in one round trip, or ``ZADD schedule`` when it has an ETA;
* every other message (remote-control replies, rpc results) stays a kombu envelope under kombu's
  own key for that queue, so Sidekiq never sees Celery's internal traffic;
* consumers BRPOP both keys of each queue, and a job is turned into the envelope kombu would have
  read, carrying its original JSON so that a restore pushes it back byte for byte.

The kombu internals used (contract-tested in ``tests/test_transport_contract.py``):
``Channel._brpop_start``/``_brpop_read`` (send-then-read BRPOP, ``_in_poll``,
``_flush_brpop_reauth``), ``_get``, ``_put`` and its ``_publish_batch`` keyword, ``_q_for_pri``,
``_size``, ``_purge``, ``_has_queue``, ``_do_restore_message``, ``_queue_cycle``,
``from_transport_options``, the ``keyprefix_*`` key templates, ``connection._deliver`` and
``Transport.Channel``.
"""

from __future__ import annotations

import logging
import ssl
import time
from queue import Empty
from typing import Any, Final

import kombu
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from . import codec
from . import job as jobs
from .client import Client
from .keys import Keys

logger = logging.getLogger(__name__)

#: The kombu minor version this module was written and contract-tested against.
KOMBU_VERSION: Final = (5, 7)

#: Sidekiq versions whose formats we know how to write.
SUPPORTED_VERSIONS: Final = (6, 7, 8)

if tuple(int(part) for part in kombu.VERSION[:2]) != KOMBU_VERSION:  # pragma: no cover
    raise ImportError(
        f"kombu_sidekiq.transport needs kombu {KOMBU_VERSION[0]}.{KOMBU_VERSION[1]}.x, "
        f"found {kombu.__version__}: install 'kombu[redis]>=5.7,<5.8'"
    )


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """A kombu Redis channel whose task queues are Sidekiq queues."""

    #: One list per queue, as Sidekiq has: message priorities do not exist on this wire.
    priority_steps = [0]

    #: Prefix for every key, redis-namespace style (``ns:queue:default``); ``""`` for none.
    namespace = ""

    #: The Sidekiq version the Ruby side runs; it picks the formats we write (8: ms timestamps).
    sidekiq_version = jobs.DEFAULT_SIDEKIQ_VERSION

    #: Maps task names to Sidekiq classes and back; ``None`` means task name == class.
    sidekiq_registry: codec.Registry | None = None

    # kombu's own ack-emulation keys, renamed so they never mix with a native kombu setup
    # sharing the database; the namespace is added in ``__init__``.
    unacked_key = "celery-sidekiq:unacked"
    unacked_index_key = "celery-sidekiq:unacked_index"
    unacked_mutex_key = "celery-sidekiq:unacked_mutex"

    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "namespace",
        "sidekiq_version",
        "sidekiq_registry",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._check_options()
        self.keys = Keys(self.namespace)
        self.registry: codec.Registry = self.sidekiq_registry or codec.ClassRegistry()
        for name in ("unacked_key", "unacked_index_key", "unacked_mutex_key"):
            setattr(self, name, self.keys.key(getattr(self, name)))
        self.keyprefix_queue = self.keys.key(type(self).keyprefix_queue)
        self.keyprefix_binding_permanent = self.keys.key(type(self).keyprefix_binding_permanent)
        self.keyprefix_binding_deadlines = self.keys.key(type(self).keyprefix_binding_deadlines)
        self._sidekiq: Client | None = None

    def _check_options(self) -> None:
        if self.global_keyprefix:
            raise ValueError(
                "the sidekiq transport does not take 'global_keyprefix': use the transport "
                "option 'namespace' (celery_sidekiq.setup(app, namespace=...)), which prefixes "
                "Sidekiq's keys the way redis-namespace and rusty-sidekiq do"
            )
        if self.sidekiq_version not in SUPPORTED_VERSIONS:
            raise ValueError(
                f"sidekiq_version must be one of {SUPPORTED_VERSIONS}, not {self.sidekiq_version!r}"
            )

    @property
    def sidekiq(self) -> Client:
        """The wire-level client on this channel's connection pool.

        One client object per pool, not kombu's new ``redis.Redis`` per message; a new pool (after
        a fork or a reconnect) gets a new client. ``self.client`` is not usable here: its
        connection is pinned to the in-flight BRPOP.
        """
        pool = self.pool
        if self._sidekiq is None or self._sidekiq.redis.connection_pool is not pool:
            self._sidekiq = Client(self._create_client(), self.keys, self.sidekiq_version)
        return self._sidekiq

    # -- where messages live ---------------------------------------------------------------

    def _q_for_pri(self, queue: str, pri: int) -> str:
        # kombu's key for a queue holds non-task messages only; task messages are Sidekiq jobs
        # under queue:<name>, which kombu's own methods (delete, expire) never see.
        return self.keys.kombu(queue)

    def _keys_for(self, queue: str) -> tuple[str, str]:
        return self.keys.queue(queue), self.keys.kombu(queue)

    def _brpop_start(self, timeout: float | None = None) -> None:
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys = [key for queue in queues for key in self._keys_for(queue)]
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()
        self.client.connection.send_command("BRPOP", *keys, timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not reply:
                raise Empty()
            key, item = bytes_to_str(reply[0]), reply[1]
            queue, envelope = self._envelope(key, item)
            if envelope is None:
                raise Empty()
            self._queue_cycle.rotate(queue)
            self.connection._deliver(envelope, queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _get(self, queue: str) -> dict[str, Any]:
        client = self.sidekiq.redis
        for key in self._keys_for(queue):
            item = client.rpop(key)
            if item:
                _, envelope = self._envelope(key, item)
                if envelope is not None:
                    return envelope
        raise Empty()

    def _envelope(self, key: str, item: bytes) -> tuple[str, dict[str, Any] | None]:
        """The queue name and the kombu message for a popped item; None for a dead one."""
        queue = self.keys.queue_name(key)
        if queue is None:
            return self.keys.strip(key), kombu_redis.loads(bytes_to_str(item))
        raw = bytes_to_str(item)
        try:
            job = jobs.parse(raw)
        except jobs.InvalidJob as exc:
            self._bury(queue, raw, exc.reason)
            return queue, None
        return queue, codec.message_from_job(job, raw, queue, self.registry)

    def _bury(self, queue: str, raw: str, reason: str) -> None:
        # sidekiq.rb sends a payload it cannot parse straight to the dead set, untouched;
        # a worker must never lose it and never stop over it.
        logger.error("queue %r: moved an invalid job to the dead set (%s): %.200r", queue, reason, raw)
        self.sidekiq.kill(raw)

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if not codec.is_task_message(message):
            super()._put(queue, message, **kwargs)
            return
        batch = kwargs.pop("_publish_batch", None)
        body = codec.json_body(message, self.decode_body)
        at = codec.eta_of(message)
        scheduled = at is not None and at > time.time()
        job = codec.job_from_message(
            message,
            queue,
            self.registry,
            body=body,
            version=self.sidekiq_version,
            scheduled=scheduled,
        )
        payload = jobs.dumps(job)
        if batch is not None:
            if scheduled:
                batch.add("zadd", self.keys.schedule, {payload: at})
            else:
                batch.add("sadd", self.keys.queues, queue)
                batch.add("lpush", self.keys.queue(queue), payload)
        elif scheduled:
            self.sidekiq.redis.zadd(self.keys.schedule, {payload: at})
        else:
            self.sidekiq.push(job)

    def _size(self, queue: str) -> int:
        with self.sidekiq.redis.pipeline() as pipe:
            for key in self._keys_for(queue):
                pipe.llen(key)
            return sum(pipe.execute())

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return bool(self.sidekiq.redis.exists(*self._keys_for(queue)))

    def _purge(self, queue: str) -> int:
        # `celery purge` names the queues it empties (and asks first), so it empties the
        # Sidekiq list too; queue deletion (kombu's _delete) never touches it.
        with self.sidekiq.redis.pipeline() as pipe:
            for key in self._keys_for(queue):
                pipe.llen(key).delete(key)
            return sum(pipe.execute()[::2])

    def _do_restore_message(
        self,
        payload: dict[str, Any],
        exchange: str,
        routing_key: str,
        pipe: Any,
        leftmost: bool = False,
    ) -> None:
        properties = payload.get("properties") or {}
        raw = properties.get(codec.RAW_JOB_PROPERTY)
        if raw is None:
            super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
            return
        # Back to the head of its queue (RPUSH, as sidekiq.rb requeues), or to the tail when
        # rejected with requeue, exactly as it was read.
        queue = properties.get("delivery_info", {}).get("routing_key") or routing_key
        (pipe.lpush if leftmost else pipe.rpush)(self.keys.queue(queue), raw)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    """``sidekiq://[user:password@]host[:port][/db]``: Sidekiq jobs in Redis."""

    Channel = Channel
    driver_type = "redis"
    driver_name = "redis"


class TLSChannel(Channel):
    """A channel that always speaks TLS, verifying the server unless told otherwise."""

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        params: dict[str, Any] = super()._connparams(asynchronous)
        if not self.connection.client.ssl:
            # kombu's rediss:// falls back to CERT_NONE; a sidekiqs:// URL without options
            # verifies against the system CAs instead.
            params["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            params["connection_class"] = self.connection_class_ssl
        return params


class TLSTransport(Transport):
    """``sidekiqs://``: the same over TLS (``broker_use_ssl`` for certificates)."""

    Channel = TLSChannel

