"""Sidekiq job <-> kombu message (Celery task protocol 2), as pure functions.

Going out, a Celery task message becomes a job that sidekiq.rb runs unchanged: positional args in
``args``, the rest of Celery's metadata (kwargs, task id, canvas, limits) in the extension key
``"celery"``, which Sidekiq carries along untouched. Coming in, a job becomes the envelope kombu's
Redis channel would have read, with a protocol-2 body, and the job's own JSON rides along in the
message properties so a restore can put it back byte for byte.

>>> registry = ClassRegistry()
>>> job = job_from_message(sample_message("Workers::Hard", [1, 2]), "default", registry)
>>> job["class"], job["args"], job["queue"], job["retry"]
('Workers::Hard', [1, 2], 'default', True)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, Protocol

from kombu.utils import json as kombu_json

from . import activejob, unique
from . import job as jobs
from .job import Job

#: The job key holding Celery's metadata. Sidekiq keeps unknown keys through every rewrite and
#: shows them in the Web UI as "Extras"; Ruby code never reads this one.
EXTENSION_KEY: Final = "celery"

#: The key, in the extension key, of a job that fails Celery's way: ``"celery": {"failures":
#: "celery"}``. Celery producers write it for tasks that asked for no Sidekiq retries; a job
#: without it (Ruby, Rust, ``push_bulk``, a task with Sidekiq retry options) fails Sidekiq's way.
FAILURES_KEY: Final = "failures"

#: The ``retry`` written into a job that fails Celery's way, for whoever runs it: 0, no
#: retries, dead at the first failure, which is what a Celery worker does with it (a FAILURE,
#: and the job in ``dead``); Celery's own retries (``self.retry``, ``autoretry_for``) are new
#: messages, not Sidekiq retries.
CELERY_WAY_RETRY: Final = 0

#: The message property carrying the original job JSON of a consumed job.
RAW_JOB_PROPERTY: Final = "sidekiq_job"

#: The message property of a retry: the failed job (every original key, plus Sidekiq's failure
#: fields) that goes to the ``retry`` ZSET at the message's ETA, instead of a new job built
#: from the message. ``celery_sidekiq`` sets it on ``Task.retry``'s republish.
RETRY_JOB_PROPERTY: Final = "sidekiq_retry_job"

#: Sidekiq classes that wrap another job, and how to unwrap one: the class whose task runs it,
#: its args and kwargs, extra headers. Today: ActiveJob's wrappers (:mod:`.activejob`).
UNWRAPPERS: Final[dict[str, Callable[[Job], activejob.Unwrapped]]] = dict.fromkeys(
    activejob.WRAPPER_CLASSES, activejob.unwrap
)

#: The header saying why a wrapper job could not be unwrapped. The job then goes to the task of
#: the wrapper class itself, which raises the reason when the job runs.
UNWRAP_ERROR_HEADER: Final = "sidekiq_unwrap_error"

#: Per-call Sidekiq options a producer may pass to ``apply_async``; they become job keys.
#: ``sidekiq_retry`` stands for Sidekiq's ``retry``, because Celery's ``apply_async(retry=...)``
#: already means "retry the publish".
CALL_OPTIONS: Final = (
    "retry_queue", "backtrace", "tags", "dead", "retry_for", "unique_for", "unique_until"
)  # fmt: skip

#: Celery protocol-2 headers that the job carries in its extension key when they differ from
#: what a job without them implies.
_HEADER_KEYS: Final = (
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "expires",
    "timelimit",
    "retries",
    "origin",
    "shadow",
    "ignore_result",
    "stamped_headers",
    "stamps",
    "replaced_task_nesting",
)
_OWN_HEADERS: Final = frozenset(
    (*_HEADER_KEYS, "lang", "task", "id", "eta", "argsrepr", "kwargsrepr")
)
_EMBED_KEYS: Final = ("callbacks", "errbacks", "chain", "chord")


class CodecError(ValueError):
    """A message that cannot become a Sidekiq job; the text says what to change."""


@dataclass(frozen=True)
class JobOptions:
    """What a producer needs to know about a task to write its job.

    ``klass`` is the Sidekiq class; ``local`` says a Python task of that name exists, so kwargs
    (which Sidekiq has no slot for) reach it through the extension key; ``extra`` holds the
    task's Sidekiq options (``backtrace``, ``tags``, ``retry_queue``...).
    """

    klass: str
    retry: bool | int = True
    local: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    #: The job fails Celery's way (FAILURE, errbacks), not Sidekiq's: it is written with
    #: :data:`FAILURES_KEY` in its extension key and ``retry`` = :data:`CELERY_WAY_RETRY`,
    #: unless the call names a Sidekiq ``retry`` (``apply_async(sidekiq_retry=...)``).
    celery_failures: bool = False
    #: The task's own ``ignore_result``: a call's ``ignore_result=False`` is written only when
    #: it overrides a task that ignores its results (the header is left out otherwise).
    ignore_result: bool = False


class Registry(Protocol):
    """Maps Celery task names to Sidekiq classes and back (``celery_sidekiq`` supplies one)."""

    def task_for(self, klass: str) -> str:
        """The task name that runs jobs of ``klass``."""
        ...

    def job_options(self, task_name: str) -> JobOptions:
        """How to write a job for ``task_name``."""
        ...


class ClassRegistry:
    """The plain mapping: task name == Sidekiq class, both ways."""

    def task_for(self, klass: str) -> str:
        return klass

    def job_options(self, task_name: str) -> JobOptions:
        return JobOptions(klass=task_name)


def fails_the_celery_way(job: Job) -> bool:
    """Whether a Celery producer wrote ``job`` to fail Celery's way (:data:`FAILURES_KEY`).

    >>> fails_the_celery_way({"class": "A", "celery": {"failures": "celery"}})
    True
    >>> fails_the_celery_way({"class": "A", "celery": {"id": "x"}})
    False
    """
    ext = job.get(EXTENSION_KEY)
    return isinstance(ext, dict) and ext.get(FAILURES_KEY) == "celery"


def is_task_message(message: dict[str, Any]) -> bool:
    """A Celery protocol-2 task message (as opposed to a control reply, an event or a result)."""
    return is_task_headers(message.get("headers"))


def is_task_headers(headers: Any) -> bool:
    """Headers of a Celery protocol-2 task message."""
    return isinstance(headers, dict) and "task" in headers and "id" in headers


def eta_of(message: dict[str, Any]) -> float | None:
    """The epoch seconds a task message is due at, or None to run now.

    Celery sends ``eta`` as ISO 8601; a naive value is taken as UTC, which is what Celery writes
    with its default ``enable_utc``.
    """
    return eta_in(message["headers"])


def eta_in(headers: dict[str, Any]) -> float | None:
    """:func:`eta_of` for a message's headers."""
    eta = headers.get("eta")
    if not eta:
        return None
    when = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return float(when.timestamp())


def job_from_message(
    message: dict[str, Any],
    queue: str,
    registry: Registry,
    *,
    body: Any = None,
    version: int = jobs.DEFAULT_SIDEKIQ_VERSION,
    scheduled: bool = False,
) -> Job:
    """The Sidekiq job for a Celery task message headed to ``queue``.

    ``body`` is the decoded protocol-2 body ``[args, kwargs, embed]``; without it the message's
    body is read as JSON. Raises :class:`CodecError` for what a job cannot carry.
    """
    if body is None:
        body = json_body(message)
    return job_from_task(
        message["headers"],
        message.get("properties") or {},
        body,
        queue,
        registry,
        version=version,
        scheduled=scheduled,
    )


def job_from_task(
    headers: dict[str, Any],
    props: dict[str, Any],
    body: Any,
    queue: str,
    registry: Registry,
    *,
    version: int = jobs.DEFAULT_SIDEKIQ_VERSION,
    scheduled: bool = False,
) -> Job:
    """:func:`job_from_message` for a message's parts, as a producer holds them before kombu
    builds the message: the headers, the properties and the body ``(args, kwargs, embed)``."""
    args, kwargs, embed = _split_body(body)
    task_id = str(headers["id"])
    options = registry.job_options(str(headers["task"]))
    if kwargs and not options.local:
        raise CodecError(
            f"{options.klass!r} has no Python task here, so it runs in Ruby, and Sidekiq jobs "
            f"take positional args only: kwargs {sorted(kwargs)} would be lost. "
            "Pass them as a trailing hash in args instead."
        )
    jid = jobs.jid_for_task_id(task_id)
    extension = _extension(headers, props, kwargs, embed, task_id, jid)
    extra = dict(options.extra)
    extra.update({key: props[key] for key in CALL_OPTIONS if props.get(key) is not None})
    try:
        unique.normalize(extra)  # unique_for as whole seconds: Sidekiq Enterprise reads it too
        if extra.get("retry_for") is not None:
            extra["retry_for"] = jobs.retry_for_seconds(extra["retry_for"])
    except ValueError as exc:
        raise CodecError(f"task {options.klass!r}: {exc}") from None
    if headers.get("ignore_result") is False and options.ignore_result:
        extension["ignore_result"] = False  # apply_async(ignore_result=False) wins, as in Celery
    retry = props.get("sidekiq_retry")
    if retry is None and options.celery_failures:
        extension[FAILURES_KEY] = "celery"
        retry = CELERY_WAY_RETRY
    if extension:
        extra[EXTENSION_KEY] = extension
    return jobs.build(
        options.klass,
        list(args),
        queue=queue,
        jid=jid,
        retry=options.retry if retry is None else retry,
        version=version,
        scheduled=scheduled,
        extra=extra,
    )


def json_body(message: dict[str, Any], decode: Callable[[Any, Any], Any] | None = None) -> Any:
    """The decoded JSON body of a message; any other content type is refused.

    ``decode(body, body_encoding)`` undoes kombu's transfer encoding (base64) first.
    """
    content_type = message.get("content-type") or message.get("content_type")
    if content_type not in (None, "application/json"):
        raise CodecError(
            f"the sidekiq transport carries JSON only, not {content_type!r}: "
            "set task_serializer='json' and accept_content=['json']"
        )
    body = message["body"]
    if decode is not None:
        body = decode(body, (message.get("properties") or {}).get("body_encoding"))
    return json.loads(body)


def _split_body(body: Any) -> tuple[list[Any] | tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    if not isinstance(body, (list, tuple)) or len(body) != 3:
        raise CodecError("not a Celery protocol-2 body [args, kwargs, embed]: set task_protocol=2")
    args, kwargs, embed = body
    kwargs, embed = kwargs or {}, embed or {}
    if (
        not isinstance(args, (list, tuple))
        or not isinstance(kwargs, dict)
        or not isinstance(embed, dict)
    ):
        raise CodecError(
            "not a Celery protocol-2 body [args, kwargs, embed]: args must be a list, kwargs and "
            f"embed objects, not {type(args).__name__}, {type(kwargs).__name__}, "
            f"{type(embed).__name__}"
        )
    return args, kwargs, embed


def _extension(
    headers: dict[str, Any],
    props: dict[str, Any],
    kwargs: dict[str, Any],
    embed: dict[str, Any],
    task_id: str,
    jid: str,
) -> dict[str, Any]:
    """Celery's metadata that a job cannot hold in Sidekiq's own keys; defaults left out."""
    ext: dict[str, Any] = {}
    if task_id != jid:
        ext["id"] = task_id
    if kwargs:
        ext["kwargs"] = kwargs
    for key in _HEADER_KEYS:
        value = headers.get(key)
        if _meaningful(key, value, task_id):
            ext[key] = value
    others = {k: v for k, v in headers.items() if k not in _OWN_HEADERS and v is not None}
    if others:
        ext["headers"] = others
    ext.update({key: embed[key] for key in _EMBED_KEYS if embed.get(key)})
    if props.get("reply_to"):
        ext["reply_to"] = props["reply_to"]
    if _iso(headers.get("eta")) is not None:  # request.eta, once the job is due
        ext["eta"] = headers["eta"]
    priority = _count(props.get("priority"))
    # 0 is what a message without one reads back: kombu's envelope says 0, the direct way
    # says nothing, and both write the same job.
    if priority and priority <= _PRIORITY_MAX:
        ext["priority"] = priority
    # Message properties a job has no slot for (apply_async(app_id=...), message_id, ...),
    # kept when they are plain JSON values, so the task's request.properties shows them.
    carried = {
        k: v
        for k, v in props.items()
        if k not in _NOT_CARRIED and v is not None and jobs.is_plain_json(v)
    }
    if carried:
        ext["properties"] = carried
    return ext


#: The largest message priority (AMQP's 0-255; Celery uses 0-9).
_PRIORITY_MAX: Final = 255

#: Message properties the job holds elsewhere (or that mean nothing in Redis): never carried
#: in the extension key's ``properties``.
_NOT_CARRIED: Final = frozenset(
    {
        "correlation_id", "reply_to", "priority", "delivery_mode", "delivery_info",
        "delivery_tag", "body_encoding", "sidekiq_retry", RAW_JOB_PROPERTY, RETRY_JOB_PROPERTY,
        "sidekiq_tag", "sidekiq_inflight", *CALL_OPTIONS,
    }
)  # fmt: skip


def _meaningful(key: str, value: Any, task_id: str) -> bool:
    if key == "group_index":
        return value is not None
    if value in (None, False, 0, [], {}, [None, None], (None, None)):
        return False
    return not (key == "root_id" and value == task_id)


def retry_job(carried: str, body: Any) -> Job:
    """The job a retry message carries (:data:`RETRY_JOB_PROPERTY`), with the message's args.

    Celery's ``retry(args=..., kwargs=...)`` may change the arguments: they are taken from the
    message body; every other key is the carried job's, in its order.

    >>> job = retry_job('{"class":"A","args":[1],"retry_count":0,"bid":"b"}', [[2], {}, {}])
    >>> job["args"], job["retry_count"], job["bid"]
    ([2], 0, 'b')
    """
    job = jobs.parse(carried)
    if job["class"] in UNWRAPPERS:
        return job  # the body holds the decoded inner args; the job keeps its envelope
    args, kwargs, _ = _split_body(body)
    job["args"] = list(args)
    ext = job.get(EXTENSION_KEY)
    ext = dict(ext) if isinstance(ext, dict) else {}
    if kwargs:
        ext["kwargs"] = kwargs
    else:
        ext.pop("kwargs", None)
    if ext:
        job[EXTENSION_KEY] = ext
    else:
        job.pop(EXTENSION_KEY, None)
    _check_writable(job)
    return job


def _check_writable(job: Job) -> None:
    """Refuse a job that could not be written back and read again (:func:`.job.parse`).

    The arguments of a retry come from the task (``retry(args=...)``), so they may be values
    JSON lacks (dates decoded by kombu's JSON), strings UTF-8 cannot carry or nest deeper than
    Ruby reads: saying so here names the job, where the Redis write would fail obscurely.
    """
    try:
        jobs.parse(jobs.dumps(job).encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:  # InvalidJob, UnicodeError too
        reason = exc.reason if isinstance(exc, jobs.InvalidJob) else f"{type(exc).__name__}: {exc}"
        raise CodecError(f"the retry of job {job.get('jid')} cannot be written: {reason}") from None


def message_from_job(job: Job, raw: str, queue: str, registry: Registry) -> dict[str, Any]:
    """The kombu envelope a consumer receives for ``job`` (read from ``raw``) on ``queue``.

    Nothing here may raise: a worker calls it after the job left its queue. The extension key
    is anybody's to write (a hand-written job, a buggy producer), so each of its values is used
    only when it has the type Celery gives it; any other value is ignored and the header keeps
    its default, because Celery's worker fails on most of them (``int()`` of the retries, the
    unpacking of the time limits), or the task's canvas would, after it ran.
    """
    ext = job.get(EXTENSION_KEY)
    if not isinstance(ext, dict):
        ext = {}
    task_id = _text(ext.get("id")) or _text(job.get("jid")) or str(uuid.uuid4())
    retry_count = _count(job.get("retry_count"), low=-1)  # -1: the UI's "Retry now" decrements
    retries = 0 if retry_count is None else retry_count + 1
    headers: dict[str, Any] = {
        "lang": "py" if ext else "rb",
        "task": registry.task_for(job["class"]),
        "id": task_id,
        "root_id": _text(ext.get("root_id")) or task_id,
        "parent_id": _text(ext.get("parent_id")),
        "group": _text(ext.get("group")),
        "group_index": _count(ext.get("group_index")),
        "retries": max(_count(ext.get("retries")) or 0, retries),
        "timelimit": _timelimit(ext.get("timelimit")),
        "eta": _eta(ext.get("eta")),
        "expires": _text(ext.get("expires")),  # Celery parses it, and refuses a bad one itself
        "shadow": _text(ext.get("shadow")),
        "origin": _text(ext.get("origin")),
    }
    for key, valid in _OPTIONAL_HEADERS.items():
        if key in ext and valid(ext[key]):
            headers[key] = ext[key]
    extra_headers = ext.get("headers")
    if isinstance(extra_headers, dict):
        # The writer never puts Celery's own headers here; a job that does must not override
        # the ones read (and checked) above.
        headers.update({k: v for k, v in extra_headers.items() if k not in _OWN_HEADERS})
    embed = {key: _signatures(key, ext.get(key)) for key in _EMBED_KEYS}
    kwargs = ext.get("kwargs") if isinstance(ext.get("kwargs"), dict) else {}
    body = json.dumps([job["args"] or [], kwargs, embed])
    if job["class"] in UNWRAPPERS:
        body = _unwrap(job, embed, headers, registry) or body
    reply_to = ext.get("reply_to")
    properties: dict[str, Any] = {}
    carried = ext.get("properties")
    if isinstance(carried, dict):
        properties.update((k, v) for k, v in carried.items() if k not in _NOT_CARRIED)
    priority = _count(ext.get("priority"))
    delivery_info: dict[str, Any] = {"exchange": "", "routing_key": queue}
    if ext.get("redelivered") is True:  # a task's Reject(requeue=True) sent it back
        delivery_info["redelivered"] = True
    properties.update(
        {
            "correlation_id": task_id,
            "reply_to": reply_to if isinstance(reply_to, str) else "",
            "delivery_mode": 2,
            "delivery_info": delivery_info,
            "priority": priority if priority is not None and priority <= _PRIORITY_MAX else 0,
            "body_encoding": None,
            "delivery_tag": str(uuid.uuid4()),
            RAW_JOB_PROPERTY: raw,
        }
    )
    return {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }


#: The largest count or index read from a job: past 2**53 the JSON readers of Ruby, Rust and
#: Python disagree, and nobody retried a job that often.
_COUNT_MAX: Final = 2**53

#: The largest time limit read from a job, in seconds (about 31 years): a larger one would
#: overflow the pool's timers.
_SECONDS_MAX: Final = 1e9


def _text(value: Any) -> str | None:
    """A non-empty string, or None for anything else."""
    return value if isinstance(value, str) and value else None


def _count(value: Any, low: int = 0) -> int | None:
    """An integer from ``low`` to :data:`_COUNT_MAX`, or None for anything else."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= _COUNT_MAX:
        return value
    return None


def _eta(value: Any) -> str | None:
    """An ISO 8601 time Celery's worker can parse (it raises on anything else), or None.

    The job reaches a worker once the poller moved it from ``schedule``, so the time is past
    and the task runs at once; ``request.eta`` shows when it was due, as on Celery's transports.
    A time still ahead (the Web UI's "Add to queue" ran it early) is left out: Celery's worker
    would hold the job in memory until then, and the job was asked to run now.
    """
    when = _iso(value)
    return value if when is not None and when <= datetime.now(timezone.utc) else None


def _iso(value: Any) -> datetime | None:
    """An ISO 8601 string as an aware datetime (naive: UTC, as Celery writes it), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when


def _seconds(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value if 0 <= value <= _SECONDS_MAX else None
    return None


def _timelimit(value: Any) -> list[float | None]:
    """``[soft, hard]`` seconds, each None for no limit, as Celery's Request unpacks it."""
    if isinstance(value, list) and len(value) == 2:
        return [_seconds(value[0]), _seconds(value[1])]
    return [None, None]


def _signatures(key: str, value: Any) -> Any:
    """A canvas entry as Celery's tracer reads it after the task ran: the chord a signature
    (an object), the callbacks, errbacks and chain lists of them; None for anything else."""
    if key == "chord":
        return value if isinstance(value, dict) else None
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value or None
    return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


#: Headers copied only when the job carries them, each with the type Celery reads.
_OPTIONAL_HEADERS: Final[dict[str, Callable[[Any], bool]]] = {
    "ignore_result": lambda value: isinstance(value, bool),
    "stamped_headers": _strings,
    "stamps": lambda value: isinstance(value, dict),
    "replaced_task_nesting": lambda value: _count(value) is not None,
}


def _unwrap(
    job: Job, embed: dict[str, Any], headers: dict[str, Any], registry: Registry
) -> str | None:
    """The body of the job a wrapper job carries; its task and headers go into ``headers``.

    Nothing may raise here, as the job is already off its queue: a job that cannot be unwrapped
    gives None and the reason in :data:`UNWRAP_ERROR_HEADER`, and runs as its wrapper class,
    whose task raises the reason. So it fails, is retried and dies like any failing job. The
    body is kombu's JSON, which carries the decoded values JSON lacks (dates, GlobalIDs...).
    """
    try:
        inner = UNWRAPPERS[job["class"]](job)
        body = kombu_json.dumps([inner.args, inner.kwargs, embed])
    except Exception as exc:
        reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        headers[UNWRAP_ERROR_HEADER] = reason
        return None
    headers["task"] = registry.task_for(inner.klass)
    headers.update(inner.headers)
    return str(body)


def sample_message(
    task: str, args: list[Any], kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A minimal protocol-2 task message, for examples and tests."""
    task_id = str(uuid.uuid4())
    return {
        "body": json.dumps(
            [
                args,
                kwargs or {},
                {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
            ]
        ),
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0},
        "properties": {"correlation_id": task_id, "reply_to": ""},
    }
