"""Unique jobs: rusty-sidekiq's lock keys, taken in the same script that pushes the job.

A job that carries ``unique_for`` (seconds) takes ``sidekiq:unique:<queue>:<class>:<sha256>``
before it is pushed, where the digest is SHA-256 over the compact JSON of its args exactly as
rusty-sidekiq's ``serde_json`` writes them (object keys sorted, ryu floats). So Rust and Python
producers dedupe each other: whoever holds the key, the other's duplicate pushes nothing.

>>> digest([{"customer_guid": "CST-123"}])
'15f1e65e72d71db4b65e92d9dac6849cd56abb32c7a7e7d01ed3835a0973f19b'
>>> from .keys import Keys
>>> lock_key({"class": "HelloWorker", "queue": "default", "args": [None]}, Keys("yolo_app"))
'yolo_app:sidekiq:unique:default:HelloWorker:1d8fc6ceb1f94c6326d6d5483d258fcb2e179e9869325b245d105c2219bf69fd'
>>> canonical_json([1e16, 0.00001, 1e-6, {"b": 1, "a": [True, None]}])
'[1e16,0.00001,1e-6,{"a":[true,null],"b":1}]'

Beyond rusty-sidekiq (which never releases a lock; it only expires):

* the lock's value is the owner's jid (rusty-sidekiq writes ``""``; it only ever uses ``SET NX``,
  so any value dedupes it), so a release can check the owner, and a push that finds its own jid
  there is the same job sent again (a retry after a lost reply): it writes nothing while the
  job is still where it would go, and pushes it again once it is not (see :func:`push`);
* ``unique_until``: ``"ttl"`` (the default, rusty-sidekiq's), ``"start"`` or ``"success"``; the
  worker releases with a compare-and-delete, never on a retry;
* a scheduled job holds its lock for its delay plus ``unique_for``, as Sidekiq Enterprise does;
* retries (a Celery retry, or a job with ``retry_count``), restores and promotions of scheduled
  jobs never check a lock: they are the job that holds it, or its lock has expired on purpose.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from . import job as jobs
from . import scripts
from .client import RESEND_WINDOW, script_command
from .job import Job
from .keys import Keys

if TYPE_CHECKING:
    from .client import Client

#: When a lock may be released early: ``"ttl"`` never (it expires; rusty-sidekiq's rule),
#: ``"start"`` when a worker starts the job, ``"success"`` when the job succeeds.
UNIQUE_UNTIL: Final = ("ttl", "start", "success")

#: The job key that Celery's metadata rides in (``codec.EXTENSION_KEY``; codec imports us).
_EXTENSION_KEY: Final = "celery"


class DuplicateJob(Exception):
    """A job with the same queue, class and args holds the lock: nothing was pushed.

    ``key`` is the lock, ``owner`` the jid holding it (``None`` when a producer that records no
    owner, such as rusty-sidekiq, took it), ``ttl`` the seconds it has left.
    """

    def __init__(self, key: str, owner: str | None, ttl: int) -> None:
        holder = f"held by job {owner}" if owner else "held by a producer that records no owner"
        super().__init__(
            f"duplicate job: the unique lock {key} is {holder} for {ttl} more seconds; "
            "nothing was enqueued"
        )
        self.key = key
        self.owner = owner
        self.ttl = ttl


@dataclass(frozen=True)
class Lock:
    """The lock one push takes: ``SET key owner NX EX ttl``."""

    key: str
    owner: str
    ttl: int


def seconds(value: Any) -> int:
    """``unique_for`` as whole seconds for ``EX``: a number of seconds or a ``timedelta``.

    Fractions round up, so a lock never lives shorter than asked; under one second is refused
    (Redis rejects ``EX 0``, and rusty-sidekiq then pushes nothing).
    """
    if isinstance(value, timedelta):
        total = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        total = float(value)
    else:
        raise ValueError(f"unique_for={value!r}: give seconds (a number) or a timedelta")
    if not math.isfinite(total) or total < 1:
        raise ValueError(f"unique_for={value!r}: a unique lock lasts at least 1 second")
    return math.ceil(total)


def normalize(options: dict[str, Any]) -> None:
    """Check a job's ``unique_for``/``unique_until`` keys in place, as they will be written.

    ``unique_for`` becomes whole seconds (Sidekiq Enterprise reads the same key, so it stays in
    the job); ``unique_until="ttl"`` is the default and is left out of the job.
    """
    until = options.get("unique_until")
    if until is not None and until not in UNIQUE_UNTIL:
        raise ValueError(f"unique_until={until!r}: use one of {', '.join(map(repr, UNIQUE_UNTIL))}")
    if "unique_for" not in options:
        if until is not None:
            raise ValueError(f"unique_until={until!r} needs unique_for (the lock's lifetime)")
        return
    options["unique_for"] = seconds(options["unique_for"])
    if until == "ttl":
        del options["unique_until"]


def until(job: Job) -> str:
    """When the job's lock may be released: one of :data:`UNIQUE_UNTIL`."""
    value = job.get("unique_until")
    return value if value in UNIQUE_UNTIL else "ttl"


# -- the digest, byte for byte as serde_json writes it -------------------------------------


def canonical_json(value: Any) -> str:
    """JSON as ``serde_json::to_string`` of a ``serde_json::Value`` writes it.

    Compact, UTF-8 unescaped, object keys sorted at every level (its map is a BTreeMap, and
    UTF-8 byte order is code point order), floats in ryu's format. Non-finite floats are refused:
    they are not JSON.
    """
    out: list[str] = []
    _write(value, out)
    return "".join(out)


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(ryu(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    elif isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(
                f"object keys must be strings for a unique digest: {sorted(map(repr, value))}"
            )
        out.append("{")
        for index, key in enumerate(sorted(value)):
            if index:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")


def ryu(value: float) -> str:
    """A float as the ryu crate (serde_json) writes it.

    The digits are the shortest that round-trip, as Python's ``repr``; only the layout differs:
    ``1e16`` (Python ``1e+16``), ``0.00001`` (``1e-05``), ``1e-6`` (``1e-06``).
    """
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not JSON")
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    decimal = Decimal(repr(abs(value))).normalize()
    _, digit_tuple, exponent = decimal.as_tuple()
    digits = "".join(map(str, digit_tuple))
    k = int(exponent)
    length = len(digits)
    kk = length + k  # 10^(kk-1) <= value < 10^kk
    if k >= 0 and kk <= 16:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 16:
        text = f"{digits[:kk]}.{digits[kk:]}"
    elif -5 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + text


def digest(args: list[Any]) -> str:
    """rusty-sidekiq's args digest: SHA-256 hex of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(args).encode("utf-8")).hexdigest()


def lock_args(job: Job) -> list[Any]:
    """What the digest covers: the job's args, and Celery kwargs as a trailing hash.

    Sidekiq jobs have no kwargs; a Ruby or Rust caller passes them as a last positional hash.
    Counting them that way means ``task.delay(1, a=2)`` and Ruby's ``perform_async(1, "a" => 2)``
    are the same job, and two calls that differ only in kwargs are not.
    """
    args = list(job.get("args") or [])
    extension = job.get(_EXTENSION_KEY)
    kwargs = extension.get("kwargs") if isinstance(extension, dict) else None
    return [*args, kwargs] if kwargs else args


def lock_key(job: Job, keys: Keys) -> str:
    """The job's lock key, under the namespace of ``keys``."""
    return keys.unique(job.get("queue") or "default", job["class"], digest(lock_args(job)))


def is_retry(job: Job) -> bool:
    """A retry of a job that already went through its lock (Sidekiq's or Celery's count)."""
    if job.get("retry_count") is not None:
        return True
    extension = job.get(_EXTENSION_KEY)
    retries = extension.get("retries") if isinstance(extension, dict) else None
    return isinstance(retries, int) and retries > 0


def lock_for(job: Job, keys: Keys, delay: float = 0.0) -> Lock | None:
    """The lock a push of ``job`` must take, or None (not unique, or a retry).

    ``delay`` is how far in the future a scheduled job runs: its lock lasts that long plus
    ``unique_for``, so it still dedupes when it reaches its queue.
    """
    if job.get("unique_for") is None or is_retry(job):
        return None
    ttl = seconds(job["unique_for"]) + math.ceil(max(delay, 0.0))
    return Lock(lock_key(job, keys), str(job["jid"]), ttl)


# -- Redis -------------------------------------------------------------------------------------


def push(client: Client, job: Job, lock: Lock, at: float | None = None) -> str:
    """Take ``lock`` and push ``job`` (or schedule it ``at``) in one script; return the jid.

    Raises :class:`DuplicateJob`, having written nothing, when another job holds the lock.

    Sent twice, it leaves one copy. A lock held by the job's own jid means it was sent before:
    while the job is still where this push would put it (among the newest of its queue, or in
    ``schedule`` near ``at``), that copy is the job and nothing is written; once it is not
    (a worker took it, or the earlier attempt never landed), it is pushed again, which is what
    publishing the same task id again means. Celery's own retries never come here: they go to
    ``retry`` without a lock. After a lost reply the jid is in doubt
    (:meth:`~kombu_sidekiq.client.Client.write_once`) and the retry looks for the job before
    anything else, even if the lock has expired or passed to another job since. The limits
    are ``write_once``'s: a worker that took the first copy before the retry looked gets a
    second one (the job may run twice, never zero times).
    """
    keys = client.keys
    queue = job.get("queue") or "default"
    if at is None:
        target, score = keys.queue(queue), ""
    else:
        job.pop("enqueued_at", None)
        target, score = keys.schedule, repr(float(at))
    payload = jobs.dumps(job)
    script_keys = (lock.key, keys.queues, target)
    head = (lock.owner, lock.ttl, payload, queue, score)
    reply = client.write_once(
        str(job["jid"]),
        (script_command("unique_push", script_keys, (*head, "", RESEND_WINDOW), by_sha=True),),
        lambda: script_command("unique_push", script_keys, (*head, "1", RESEND_WINDOW)),
    )
    if int(reply[0]) == 0:
        raise DuplicateJob(lock.key, _text(reply[1]) or None, int(reply[2]))
    return str(job["jid"])


def release(client: Client, job: Job) -> bool:
    """Delete the job's lock if the job still owns it; True if this call deleted it."""
    script = client.redis.register_script(scripts.source("unique_release"))
    return bool(script(keys=[lock_key(job, client.keys)], args=[str(job["jid"])]))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
