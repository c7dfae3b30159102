"""Rails ActiveJob jobs on the Sidekiq wire: the wrapper envelope and ActiveJob's argument format.

Rails' Sidekiq adapter does not write a job of the ActiveJob class. It writes a job of a
*wrapper* class whose only argument is ActiveJob's own serialization of the job::

    {"class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "wrapped": "InvoiceJob",
     "queue": "mailers", "args": [{"job_class": "InvoiceJob", "job_id": "<uuid>",
     "arguments": [42, {"notify": true, "_aj_ruby2_keywords": ["notify"]}], "executions": 0, ...}],
     "retry": true, "jid": "...", "created_at": ..., "enqueued_at": ...}

:func:`unwrap` turns such a job into what a consumer runs: the ActiveJob class (the task to
look up), Python ``args`` and ``kwargs``, and the ActiveJob metadata. :func:`wrap` is the way
back: a Sidekiq job that Rails runs as ``InvoiceJob.perform_later(42, notify: true)`` would.

>>> decode_arguments([1, {"a": 1, "_aj_symbol_keys": ["a"]}, {"_aj_globalid": "gid://shop/User/7"},
...                   {"notify": True, "_aj_ruby2_keywords": ["notify"]}])
([1, {'a': 1}, GlobalID(gid='gid://shop/User/7')], {'notify': True})
>>> encode_arguments([Symbol("paid")], {"notify": True})
[{'_aj_serialized': 'ActiveJob::Serializers::SymbolSerializer', 'value': 'paid'}, \
{'notify': True, '_aj_ruby2_keywords': ['notify']}]

Ruby values without a JSON counterpart become these Python values (and back):

=============================  ========================================================
Ruby (ActiveJob serializer)    Python
=============================  ========================================================
Symbol                         ``str`` (produce one with :class:`Symbol`)
Hash, HashWithIndifferentAcc.  ``dict`` (markers removed; symbol keys become ``str``)
trailing keyword-args Hash     the task's ``**kwargs``
GlobalID (``_aj_globalid``)    :class:`GlobalID` (the gid string; nothing is looked up)
Time, TimeWithZone, DateTime   aware ``datetime`` (microseconds: Python has no nanoseconds)
Date                           ``date``
ActiveSupport::Duration        :class:`Duration`, a ``timedelta`` that keeps Rails' parts
BigDecimal (Rails 7.1+)        ``Decimal``
Range (Rails 7.1+)             :class:`Range`
Module / Class                 ``str``, the constant's name (never resolved)
=============================  ========================================================

Any other ``_aj_serialized`` value (an app's custom serializer) is an :class:`ActiveJobDecodeError`:
we never guess what a serializer we do not know meant.

Importing this module teaches kombu's JSON (the Celery message body) the three types above
that JSON lacks, so decoded arguments reach the worker's pool processes intact.
"""

from __future__ import annotations

import math
import re
import reprlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qsl, quote, unquote, urlencode

from kombu.utils.json import register_type

from . import job as jobs
from .job import Job

#: Rails' own Sidekiq adapter (Rails up to 8.0, with Sidekiq 6.x and 7.x) and Sidekiq's adapter
#: from 7.3.3 write this wrapper class; Sidekiq 8 keeps it as an alias, so it is read forever.
RAILS_WRAPPER: Final = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"

#: The wrapper class Sidekiq 8's own ActiveJob adapter writes.
SIDEKIQ8_WRAPPER: Final = "Sidekiq::ActiveJob::Wrapper"

#: Every Sidekiq class whose jobs carry an ActiveJob job.
WRAPPER_CLASSES: Final = (RAILS_WRAPPER, SIDEKIQ8_WRAPPER)

#: The message header holding the ActiveJob metadata: ``args[0]`` without ``arguments``, with
#: ``provider_job_id`` set to the jid as Ruby's wrapper sets it before running the job.
METADATA_HEADER: Final = "activejob"

#: The Rails version whose format :func:`wrap` writes when nothing else is said. Every Rails from
#: 6.1 to 8.x reads what 6.1 writes identically: 7.1+ parses second-precision ``enqueued_at``
#: and treats a missing ``scheduled_at`` as unknown. Written the other way round, 6.1 and 7.0
#: would fail on the BigDecimal and Range serializers that only 7.1 introduced.
DEFAULT_RAILS_VERSION: Final = "6.1"

#: The oldest Rails whose ActiveJob format we write: 6.1 marks keyword arguments
#: (``_aj_ruby2_keywords``) and records ``timezone``.
MIN_RAILS_VERSION: Final = (6, 1)

# ActiveJob::Arguments' reserved keys. Serialization refuses user hashes that contain them.
GLOBALID_KEY: Final = "_aj_globalid"
SYMBOL_KEYS_KEY: Final = "_aj_symbol_keys"
RUBY2_KEYWORDS_KEY: Final = "_aj_ruby2_keywords"
WITH_INDIFFERENT_ACCESS_KEY: Final = "_aj_hash_with_indifferent_access"
OBJECT_SERIALIZER_KEY: Final = "_aj_serialized"
RESERVED_KEYS: Final = frozenset(
    (
        GLOBALID_KEY,
        SYMBOL_KEYS_KEY,
        RUBY2_KEYWORDS_KEY,
        WITH_INDIFFERENT_ACCESS_KEY,
        OBJECT_SERIALIZER_KEY,
    )
)

_SERIALIZERS: Final = "ActiveJob::Serializers::"
SYMBOL_SERIALIZER: Final = _SERIALIZERS + "SymbolSerializer"
TIME_SERIALIZER: Final = _SERIALIZERS + "TimeSerializer"
TIME_WITH_ZONE_SERIALIZER: Final = _SERIALIZERS + "TimeWithZoneSerializer"
DATE_TIME_SERIALIZER: Final = _SERIALIZERS + "DateTimeSerializer"
DATE_SERIALIZER: Final = _SERIALIZERS + "DateSerializer"
DURATION_SERIALIZER: Final = _SERIALIZERS + "DurationSerializer"
BIG_DECIMAL_SERIALIZER: Final = _SERIALIZERS + "BigDecimalSerializer"
RANGE_SERIALIZER: Final = _SERIALIZERS + "RangeSerializer"
MODULE_SERIALIZER: Final = _SERIALIZERS + "ModuleSerializer"

#: ActiveSupport::Duration's parts, in the order Rails lists them.
DURATION_PARTS: Final = ("years", "months", "weeks", "days", "hours", "minutes", "seconds")

_UTC: Final = timezone.utc


class ActiveJobDecodeError(ValueError):
    """An ActiveJob job we cannot turn into Python values without guessing.

    Raised when the job runs (by the wrapper class's task), so the job fails like any failing
    job: it is retried, and dies when its retries run out.
    """


class ActiveJobEncodeError(ValueError):
    """A Python value that ActiveJob (of the targeted Rails version) cannot carry."""


def wrapper_class(sidekiq_version: int = jobs.DEFAULT_SIDEKIQ_VERSION) -> str:
    """The wrapper class the given Sidekiq version's ActiveJob adapter writes."""
    return SIDEKIQ8_WRAPPER if sidekiq_version >= 8 else RAILS_WRAPPER


def parse_rails_version(version: str) -> tuple[int, int]:
    """``"7.1"`` as ``(7, 1)``; a version we cannot write for fails with what to change."""
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.\d+)*", str(version))
    parsed = (int(match[1]), int(match[2])) if match else None
    if parsed is None or parsed < MIN_RAILS_VERSION:
        raise ValueError(
            f"rails_version={version!r}: give the Rails version the Ruby side runs as "
            f"'MAJOR.MINOR', {MIN_RAILS_VERSION[0]}.{MIN_RAILS_VERSION[1]} or later, such as '7.1'"
        )
    return parsed


# -- value types ----------------------------------------------------------------------------


class Symbol(str):
    """A Ruby Symbol to send: ``Symbol("paid")`` arrives as ``:paid``; as a hash key, a symbol key.

    Received symbols are plain ``str``: a ``str`` subclass cannot survive the JSON of a Celery
    message, and no Python code should have to care.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Symbol({str(self)!r})"


_GID = re.compile(r"gid://([^/?#]+)/([^/?#]+)/([^?#]+)(?:\?([^#]*))?")


@dataclass(frozen=True)
class GlobalID:
    """A Rails GlobalID such as ``gid://shop/User/42``: which record, never the record itself.

    >>> user = GlobalID("gid://shop/User/42")
    >>> user.app, user.model_name, user.model_id
    ('shop', 'User', '42')
    >>> GlobalID.create("shop", "Admin::Account", 7).gid
    'gid://shop/Admin::Account/7'
    """

    gid: str

    def __post_init__(self) -> None:
        if not isinstance(self.gid, str) or not _GID.fullmatch(self.gid):
            raise ValueError(f"not a GlobalID URI (gid://APP/MODEL/ID): {self.gid!r}")

    @classmethod
    def create(cls, app: str, model_name: str, model_id: object, **params: str) -> GlobalID:
        """The GlobalID of ``model_name`` record ``model_id`` in ``app`` (``GlobalID.app``)."""
        gid = f"gid://{app}/{model_name}/{quote(str(model_id), safe='')}"
        return cls(gid + (f"?{urlencode(params)}" if params else ""))

    @property
    def app(self) -> str:
        """The Rails application name (Ruby's ``GlobalID.app``)."""
        return self._parts()[0]

    @property
    def model_name(self) -> str:
        """The model class name, such as ``"User"`` or ``"Admin::Account"``."""
        return self._parts()[1]

    @property
    def model_id(self) -> str:
        """The record id, as the string the URI carries."""
        return unquote(self._parts()[2])

    @property
    def params(self) -> dict[str, str]:
        """The URI's query parameters (rarely used)."""
        query = self._parts()[3]
        return dict(parse_qsl(query)) if query else {}

    def _parts(self) -> tuple[str, str, str, str | None]:
        match = _GID.fullmatch(self.gid)
        assert match is not None  # checked in __post_init__
        return match[1], match[2], match[3], match[4]

    def __str__(self) -> str:
        return self.gid


class Duration(timedelta):
    """An ``ActiveSupport::Duration``: a ``timedelta`` that also keeps Rails' ``parts``.

    ``1.month`` is 2,629,746 seconds to Rails (an average month) but one calendar month to
    ``Time#+``; the parts keep that meaning for a round trip back to Ruby. Plain ``timedelta``
    values are sent as days and seconds.

    >>> d = Duration(2629746, {"months": 1})
    >>> d == timedelta(seconds=2629746), d.parts
    (True, {'months': 1})
    """

    __slots__ = ("_parts",)
    _parts: tuple[tuple[str, float], ...]

    def __new__(cls, seconds: float, parts: Mapping[str, float] | None = None) -> Duration:
        self = super().__new__(cls, seconds=seconds)
        if parts is None:
            parts = _timedelta_parts(self)
        unknown = sorted(set(parts) - set(DURATION_PARTS))
        if unknown:
            raise ValueError(f"unknown Duration parts {unknown}; known: {list(DURATION_PARTS)}")
        self._parts = tuple((name, parts[name]) for name in DURATION_PARTS if name in parts)
        return self

    @property
    def parts(self) -> dict[str, float]:
        """Rails' parts, such as ``{"months": 1, "days": 3}``."""
        return dict(self._parts)

    @property
    def value(self) -> int | float:
        """Rails' ``value``: the whole duration in seconds, an int when it is whole."""
        return _number(self.total_seconds())

    def __reduce__(self) -> tuple[Any, ...]:
        return (Duration, (self.total_seconds(), self.parts))

    def __repr__(self) -> str:
        return f"Duration({self.value!r}, {self.parts!r})"


def _timedelta_parts(td: timedelta) -> dict[str, float]:
    # Days stay days, so adding the duration in a Rails time zone keeps the wall-clock time
    # across a DST change, as Python's aware-datetime arithmetic does.
    sign = -1 if td < timedelta(0) else 1
    whole = abs(td)
    seconds = _number(whole.seconds + whole.microseconds / 1_000_000)
    parts: dict[str, float] = {}
    if whole.days:
        parts["days"] = sign * whole.days
    if seconds or not whole.days:
        parts["seconds"] = sign * seconds
    return parts


@dataclass(frozen=True)
class Range:
    """A Ruby Range (Rails 7.1+ serializes them): ``1..5`` is ``Range(1, 5)``, ``1...5`` is
    ``Range(1, 5, exclude_end=True)``; ``None`` is an open end. Ends may be numbers, dates,
    times or strings.

    >>> Range(1, 5).to_range(), Range.from_range(range(0, 3))
    (range(1, 6), Range(begin=0, end=3, exclude_end=True))
    """

    begin: Any
    end: Any
    exclude_end: bool = False

    @classmethod
    def from_range(cls, r: range) -> Range:
        """``range(a, b)`` as Ruby's ``a...b``; only a step of 1 has a Ruby counterpart."""
        if r.step != 1:
            raise ValueError(f"{r!r}: Ruby ranges have no step; only a step of 1 converts")
        return cls(r.start, r.stop, exclude_end=True)

    def to_range(self) -> range:
        """The Python ``range`` of an integer Range with both ends."""
        if not (_is_int(self.begin) and _is_int(self.end)):
            raise ValueError(f"{self!r} is not an integer range with both ends")
        return range(self.begin, self.end if self.exclude_end else self.end + 1)


_BRIEF: Final = reprlib.Repr()
_BRIEF.maxlevel = 3
_BRIEF.maxstring = _BRIEF.maxother = 100


def _brief(value: Any) -> str:
    """A short repr for an error message, whatever the value: the containers of a job that
    was never parsed may be nested too deep for ``repr``, its integers too long for ``str``."""
    try:
        return _BRIEF.repr(value)
    except (RecursionError, ValueError):
        return f"<a {type(value).__name__} too large to show>"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Metadata:
    """What ActiveJob knows about a job besides its arguments (``args[0]`` of the envelope).

    ``provider_job_id`` is the Sidekiq jid; ``enqueued_at`` and ``scheduled_at`` (Rails 7.1+)
    are aware datetimes; ``extra`` holds keys we do not model (such as Rails 8.1's
    ``continuation``), unchanged.
    """

    job_class: str
    job_id: str
    provider_job_id: str | None = None
    queue_name: str | None = None
    priority: int | None = None
    executions: int = 0
    exception_executions: dict[str, int] = field(default_factory=dict)
    locale: str | None = None
    timezone: str | None = None
    enqueued_at: datetime | None = None
    scheduled_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_job_data(cls, data: Mapping[str, Any]) -> Metadata:
        """Read ActiveJob's ``serialize`` hash (``arguments`` is ignored)."""
        if not isinstance(data, Mapping):
            raise ActiveJobDecodeError(f"ActiveJob data must be a JSON object, not {_brief(data)}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: v for k, v in data.items() if k not in known and k != "arguments"}
        return cls(
            job_class=_field(data, "job_class", str, required=True),
            job_id=_field(data, "job_id", str, required=True),
            provider_job_id=_field(data, "provider_job_id", str),
            queue_name=_field(data, "queue_name", str),
            priority=_field(data, "priority", int),
            executions=_field(data, "executions", int) or 0,
            exception_executions=_field(data, "exception_executions", dict) or {},
            locale=_field(data, "locale", str),
            timezone=_field(data, "timezone", str),
            enqueued_at=_timestamp(data, "enqueued_at"),
            scheduled_at=_timestamp(data, "scheduled_at"),
            extra=extra,
        )


def _field(data: Mapping[str, Any], key: str, kind: type, required: bool = False) -> Any:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value):
        need = "a non-empty string" if kind is str else f"a JSON {kind.__name__}"
        raise ActiveJobDecodeError(f"ActiveJob data: {key!r} must be {need}, not {_brief(value)}")
    return value


def _timestamp(data: Mapping[str, Any], key: str) -> datetime | None:
    value = data.get(key)
    return None if value is None else parse_time(value, key)


_ISO_TIME = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)", re.IGNORECASE
)


def parse_time(value: Any, where: str = "value") -> datetime:
    """An ISO 8601 time as Ruby's ``Time#iso8601(n)`` writes it, as an aware datetime.

    Digits past the microsecond are dropped (Python has no nanoseconds); a time without an
    offset is refused, since its zone would be a guess.
    """
    match = _ISO_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ActiveJobDecodeError(f"{where}: not an ISO 8601 time with an offset: {_brief(value)}")
    year, month, day, hour, minute, second = (int(match[n]) for n in range(1, 7))
    micro = int((match[7] or "0")[:6].ljust(6, "0"))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=_offset(match[8]))
    except ValueError as exc:
        raise ActiveJobDecodeError(f"{where}: {exc}: {value!r}") from None


def _offset(text: str) -> tzinfo:
    if text.upper() == "Z":
        return _UTC
    digits = text[1:].replace(":", "")
    delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    if delta >= timedelta(hours=24):
        raise ActiveJobDecodeError(f"UTC offset out of range: {text!r}")
    return _UTC if not delta else timezone(-delta if text[0] == "-" else delta)


def format_time(when: datetime, digits: int = 9) -> str:
    """``when`` as Ruby's ``Time#iso8601(digits)``: ``"2026-11-27T23:45:05.123456000Z"``."""
    offset = when.utcoffset()
    if offset is None:
        raise ActiveJobEncodeError(
            f"{when!r} is naive: ActiveJob times carry their offset; attach a tzinfo"
        )
    text = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
        f"T{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )
    if digits:
        text += f".{when.microsecond:06d}".ljust(digits + 1, "0")[: digits + 1]
    if offset % timedelta(minutes=1):
        raise ActiveJobEncodeError(f"{when!r}: ISO 8601 offsets are whole minutes, not {offset}")
    if not offset:
        return text + "Z"
    sign, offset = ("-", -offset) if offset < timedelta(0) else ("+", offset)
    minutes = int(offset.total_seconds()) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


# -- decoding (Ruby -> Python) --------------------------------------------------------------


class Unwrapped(NamedTuple):
    """A wrapper job, unwrapped: the class whose task runs it, its arguments, extra headers."""

    klass: str
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]


def unwrap(job: Job) -> Unwrapped:
    """The ActiveJob job inside a wrapper job; :class:`ActiveJobDecodeError` if it is not one
    we can read without guessing."""
    wrapped = job.get("args")
    if not (isinstance(wrapped, list) and len(wrapped) == 1 and isinstance(wrapped[0], dict)):
        raise ActiveJobDecodeError(
            f"{job.get('class')} takes one argument, ActiveJob's job data (a JSON object), "
            f"not {_brief(wrapped)}"
        )
    data: dict[str, Any] = wrapped[0]
    metadata = {k: v for k, v in data.items() if k != "arguments"}
    metadata["provider_job_id"] = job.get("jid")  # as JobWrapper#perform does before running
    job_class = Metadata.from_job_data(metadata).job_class
    arguments = data.get("arguments")
    if not isinstance(arguments, list):
        raise ActiveJobDecodeError(
            f"{job_class}: ActiveJob 'arguments' must be a JSON array, not {_brief(arguments)}"
        )
    try:
        args, kwargs = decode_arguments(arguments)
    except ActiveJobDecodeError as exc:
        raise ActiveJobDecodeError(f"{job_class} (job_id {data.get('job_id')}): {exc}") from None
    return Unwrapped(job_class, args, kwargs, {METADATA_HEADER: metadata})


def decode_arguments(arguments: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
    """ActiveJob's ``arguments`` as Python ``(args, kwargs)``.

    A trailing keyword-arguments hash (``_aj_ruby2_keywords``) becomes ``kwargs``, as Ruby
    splats it into keyword arguments.
    """
    if not isinstance(arguments, (list, tuple)):
        raise ActiveJobDecodeError(f"arguments must be a JSON array, not {_brief(arguments)}")
    _check_nesting(arguments, "arguments")
    items = list(arguments)
    kwargs: dict[str, Any] = {}
    if items and _is_keywords_hash(items[-1]):
        kwargs = _value(items.pop(), f"arguments[{len(items)}]")
    args = [_value(item, f"arguments[{n}]") for n, item in enumerate(items)]
    return args, kwargs


def _check_nesting(value: Any, where: str) -> None:
    """Refuse a value nested deeper than a job may be (:data:`.job.MAX_NESTING`, Ruby's limit).

    A job read from Redis never is (:func:`.job.parse` refuses it); a value handed to the decoder
    directly might, and decoding it would exhaust Python's stack.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth > jobs.MAX_NESTING:
                raise ActiveJobDecodeError(
                    f"{where}: nested deeper than {jobs.MAX_NESTING} arrays or objects"
                )
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _is_keywords_hash(value: Any) -> bool:
    return isinstance(value, dict) and _hash_kind(value) == RUBY2_KEYWORDS_KEY


def _truthy(value: Any) -> bool:
    """Ruby truthiness: everything but nil and false (so ``[]`` and ``0`` are true)."""
    return value is not None and value is not False


#: The markers of a plain hash, in the order Ruby's ``deserialize_hash`` tries them.
_HASH_MARKERS: Final = (WITH_INDIFFERENT_ACCESS_KEY, SYMBOL_KEYS_KEY, RUBY2_KEYWORDS_KEY)


def _hash_kind(value: dict[str, Any]) -> str | None:
    """Which of ActiveJob's readings applies to a hash, decided as Ruby decides it."""
    if len(value) == 1 and GLOBALID_KEY in value:
        return GLOBALID_KEY
    if OBJECT_SERIALIZER_KEY in value:
        return OBJECT_SERIALIZER_KEY
    return next((key for key in _HASH_MARKERS if _truthy(value.get(key))), None)


def decode_value(value: Any, where: str = "argument") -> Any:
    """One ActiveJob-serialized value as a Python value; ``where`` names it in errors."""
    _check_nesting(value, where)
    return _value(value, where)


def _value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list):
        return [_value(item, f"{where}[{n}]") for n, item in enumerate(value)]
    if not isinstance(value, dict):
        raise ActiveJobDecodeError(f"{where}: not a JSON value: {_brief(value)}")
    kind = _hash_kind(value)
    if kind == GLOBALID_KEY:
        return _global_id(value[GLOBALID_KEY], where)
    if kind == OBJECT_SERIALIZER_KEY:
        return _deserialize(value, where)
    return _decode_hash(value, where)


def _decode_hash(value: dict[str, Any], where: str) -> dict[str, Any]:
    # Ruby deletes markers in order until one is set (not nil/false) and acts on that one;
    # markers after it stay ordinary keys, exactly as Rails would hand them to the job.
    hash_ = dict(value)
    for marker in _HASH_MARKERS:
        flag = hash_.pop(marker, None)
        if _truthy(flag):
            if marker != WITH_INDIFFERENT_ACCESS_KEY and not _str_list(flag):
                raise ActiveJobDecodeError(
                    f"{where}: {marker} must list key names, not {_brief(flag)}"
                )
            break
    return {key: _value(item, f"{where}[{key!r}]") for key, item in hash_.items()}


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _global_id(gid: Any, where: str) -> GlobalID:
    try:
        return GlobalID(gid)
    except ValueError as exc:
        raise ActiveJobDecodeError(f"{where}: {exc}") from None


def _deserialize(value: dict[str, Any], where: str) -> Any:
    name = value[OBJECT_SERIALIZER_KEY]
    decoder = _DECODERS.get(name) if isinstance(name, str) else None
    if decoder is None:
        raise ActiveJobDecodeError(
            f"{where}: unknown ActiveJob serializer {_brief(name)}; Python reads Rails' own "
            "(Symbol, Time, TimeWithZone, DateTime, Date, Duration, BigDecimal, Range, Module), "
            "so send this value in one of those forms"
        )
    return decoder(value, f"{where} ({name.rsplit('::', 1)[-1]})")


def _string_value(value: dict[str, Any], where: str) -> str:
    text = value.get("value")
    if not isinstance(text, str):
        raise ActiveJobDecodeError(f"{where}: 'value' must be a string, not {_brief(text)}")
    return text


def _date(value: dict[str, Any], where: str) -> date:
    text = _string_value(value, where)
    try:
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", text):
            raise ValueError("not YYYY-MM-DD")
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ActiveJobDecodeError(f"{where}: {exc}: {text!r}") from None


def _time(value: dict[str, Any], where: str) -> datetime:
    return parse_time(_string_value(value, where), where)


def _decimal(value: dict[str, Any], where: str) -> Decimal:
    text = _string_value(value, where)
    try:
        return Decimal(text)
    except InvalidOperation:
        raise ActiveJobDecodeError(f"{where}: not a decimal number: {_brief(text)}") from None


def _duration(value: dict[str, Any], where: str) -> Duration:
    seconds = value.get("value")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise ActiveJobDecodeError(f"{where}: 'value' must be a number, not {_brief(seconds)}")
    raw_parts = _value(value.get("parts"), f"{where}.parts")
    # Rails serializes the parts hash with Arguments.serialize, which maps it to [key, value]
    # pairs with symbol keys; accept a hash too, as a fixed Rails would write it.
    pairs = raw_parts.items() if isinstance(raw_parts, dict) else raw_parts
    try:
        parts = {str(name): number for name, number in pairs}
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in parts.values()):
            raise ValueError("part values must be numbers")
        return Duration(seconds, parts)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ActiveJobDecodeError(f"{where}: bad parts {_brief(raw_parts)}: {exc}") from None


def _range(value: dict[str, Any], where: str) -> Range:
    exclude_end = _value(value.get("exclude_end"), f"{where}.exclude_end")
    if not isinstance(exclude_end, bool):
        raise ActiveJobDecodeError(f"{where}: 'exclude_end' must be true or false")
    begin = _value(value.get("begin"), f"{where}.begin")
    return Range(begin, _value(value.get("end"), f"{where}.end"), exclude_end)


def _symbol(value: dict[str, Any], where: str) -> str:
    return _string_value(value, where)


_DECODERS: Final[dict[str, Callable[[dict[str, Any], str], Any]]] = {
    SYMBOL_SERIALIZER: _symbol,
    MODULE_SERIALIZER: _symbol,  # the constant's name; resolving it is Ruby's business
    TIME_SERIALIZER: _time,
    TIME_WITH_ZONE_SERIALIZER: _time,  # Rails 7.1+ adds "time_zone"; the offset is exact anyway
    DATE_TIME_SERIALIZER: _time,
    DATE_SERIALIZER: _date,
    DURATION_SERIALIZER: _duration,
    BIG_DECIMAL_SERIALIZER: _decimal,
    RANGE_SERIALIZER: _range,
}


# -- encoding (Python -> Ruby) --------------------------------------------------------------


def encode_arguments(
    args: Sequence[Any],
    kwargs: Mapping[str, Any] | None = None,
    rails_version: str = DEFAULT_RAILS_VERSION,
) -> list[Any]:
    """``args`` and ``kwargs`` as ActiveJob's ``arguments`` for the given Rails version.

    Raises :class:`ActiveJobEncodeError` naming the first value that has no ActiveJob form.
    """
    encoder = _Encoder(parse_rails_version(rails_version))
    arguments = [encoder.encode(arg, f"args[{n}]") for n, arg in enumerate(args)]
    if kwargs:
        hash_ = encoder.encode_hash(kwargs, "kwargs")
        hash_[RUBY2_KEYWORDS_KEY] = list(kwargs)
        arguments.append(hash_)
    return arguments


class _Encoder:
    """Python values as ActiveJob::Arguments of one Rails version serializes them."""

    def __init__(self, rails: tuple[int, int]) -> None:
        self.rails = rails

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, int)):
            return value
        if isinstance(value, Symbol):
            return {OBJECT_SERIALIZER_KEY: SYMBOL_SERIALIZER, "value": str(value)}
        if isinstance(value, str):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ActiveJobEncodeError(f"{where}: {value!r} has no JSON form")
            return value
        if isinstance(value, GlobalID):
            return {GLOBALID_KEY: value.gid}
        if isinstance(value, (list, tuple)):
            return [self.encode(item, f"{where}[{n}]") for n, item in enumerate(value)]
        if isinstance(value, dict):
            hash_ = self.encode_hash(value, where)
            hash_[SYMBOL_KEYS_KEY] = [str(key) for key in value if isinstance(key, Symbol)]
            return hash_
        return self.serialize(value, where)

    def encode_hash(self, value: Mapping[Any, Any], where: str) -> dict[str, Any]:
        hash_: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ActiveJobEncodeError(
                    f"{where}: hash keys must be strings (or Symbol), not {key!r:.100}"
                )
            if key in RESERVED_KEYS:
                raise ActiveJobEncodeError(f"{where}: {key!r} is a key ActiveJob reserves")
            hash_[str(key)] = self.encode(item, f"{where}[{key!r}]")
        return hash_

    def serialize(self, value: Any, where: str) -> dict[str, Any]:
        """A value ActiveJob writes through one of its serializers."""
        if isinstance(value, datetime):
            return self._time(value, where)
        if isinstance(value, date):
            return {OBJECT_SERIALIZER_KEY: DATE_SERIALIZER, "value": value.isoformat()}
        if isinstance(value, timedelta):
            duration = value if isinstance(value, Duration) else Duration(value.total_seconds())
            parts = [[self.encode(Symbol(k), where), _number(n)] for k, n in duration._parts]
            return {
                OBJECT_SERIALIZER_KEY: DURATION_SERIALIZER,
                "value": duration.value,
                "parts": parts,
            }
        if isinstance(value, Decimal):
            self._require((7, 1), value, where, "BigDecimal", "pass str(value) or float(value)")
            if value.is_snan():
                raise ActiveJobEncodeError(f"{where}: a signalling NaN has no Ruby form")
            return {OBJECT_SERIALIZER_KEY: BIG_DECIMAL_SERIALIZER, "value": str(value)}
        if isinstance(value, (Range, range)):
            self._require((7, 1), value, where, "Range", "pass its ends instead")
            try:
                rng = Range.from_range(value) if isinstance(value, range) else value
            except ValueError as exc:
                raise ActiveJobEncodeError(f"{where}: {exc}") from None
            return {
                OBJECT_SERIALIZER_KEY: RANGE_SERIALIZER,
                "begin": self.encode(rng.begin, f"{where}.begin"),
                "end": self.encode(rng.end, f"{where}.end"),
                "exclude_end": bool(rng.exclude_end),
            }
        raise ActiveJobEncodeError(
            f"{where}: ActiveJob cannot carry a {type(value).__qualname__} ({value!r:.100}); "
            "send JSON values, Symbol, GlobalID, datetime, date, timedelta, Decimal or Range"
        )

    def _time(self, value: datetime, where: str) -> dict[str, Any]:
        try:
            text = format_time(value)
        except ActiveJobEncodeError as exc:
            raise ActiveJobEncodeError(f"{where}: {exc}") from None
        zone = getattr(value.tzinfo, "key", None)  # a zoneinfo.ZoneInfo: Rails' TimeWithZone
        if not isinstance(zone, str):
            return {OBJECT_SERIALIZER_KEY: TIME_SERIALIZER, "value": text}
        serialized = {OBJECT_SERIALIZER_KEY: TIME_WITH_ZONE_SERIALIZER, "value": text}
        if self.rails >= (7, 1):  # 7.1 keeps the zone; earlier Rails use the app's Time.zone
            serialized["time_zone"] = zone
        return serialized

    def _require(
        self, version: tuple[int, int], value: Any, where: str, what: str, instead: str
    ) -> None:
        if self.rails < version:
            raise ActiveJobEncodeError(
                f"{where}: {value!r:.100}: Rails before {version[0]}.{version[1]} has no "
                f"{what} serializer; {instead}, or set rails_version='{version[0]}.{version[1]}' "
                "if the Rails side runs it"
            )


def _number(value: float) -> int | float:
    """A whole float as an int, as Ruby writes ``300`` for ``5.minutes`` rather than ``300.0``."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def job_data(
    job_class: str,
    arguments: list[Any],
    *,
    job_id: str | None = None,
    queue_name: str = "default",
    priority: int | None = None,
    locale: str | None = "en",
    timezone: str | None = None,
    scheduled_at: float | None = None,
    rails_version: str = DEFAULT_RAILS_VERSION,
) -> dict[str, Any]:
    """ActiveJob's ``serialize`` hash, key for key as the given Rails version writes it."""
    version = parse_rails_version(rails_version)
    now = datetime.now(tz=_UTC)
    data: dict[str, Any] = {
        "job_class": job_class,
        "job_id": job_id or str(uuid.uuid4()),
        "provider_job_id": None,
        "queue_name": queue_name,
        "priority": priority,
        "arguments": arguments,
        "executions": 0,
        "exception_executions": {},
        "locale": locale,
        "timezone": timezone,
        "enqueued_at": format_time(now, 9 if version >= (7, 1) else 0),
    }
    if version >= (7, 1):
        at = None if scheduled_at is None else datetime.fromtimestamp(scheduled_at, _UTC)
        data["scheduled_at"] = None if at is None else format_time(at)
    return data


def wrap(
    job_class: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    queue: str = "default",
    priority: int | None = None,
    locale: str | None = "en",
    timezone: str | None = None,
    at: float | None = None,
    retry: bool | int = True,
    sidekiq_version: int = jobs.DEFAULT_SIDEKIQ_VERSION,
    rails_version: str = DEFAULT_RAILS_VERSION,
) -> Job:
    """The Sidekiq job Rails' adapter writes for ``job_class.perform_later(*args, **kwargs)``.

    ``at`` (epoch seconds) makes it a scheduled job, for the ``schedule`` ZSET with that score:
    no ``enqueued_at`` in the envelope and, for Rails 7.1+, ``scheduled_at`` in the job data.

    >>> job = wrap("InvoiceJob", [42], {"notify": True}, queue="mailers")
    >>> job["class"], job["wrapped"], job["args"][0]["arguments"]
    ('ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper', 'InvoiceJob', \
[42, {'notify': True, '_aj_ruby2_keywords': ['notify']}])
    """
    if not isinstance(job_class, str) or not job_class:
        raise ValueError(f"job_class must name the ActiveJob class, not {job_class!r}")
    data = job_data(
        job_class,
        encode_arguments(args, kwargs, rails_version),
        queue_name=queue,
        priority=priority,
        locale=locale,
        timezone=timezone,
        scheduled_at=at,
        rails_version=rails_version,
    )
    return jobs.build(
        wrapper_class(sidekiq_version),
        [data],
        queue=queue,
        retry=retry,
        version=sidekiq_version,
        scheduled=at is not None,
        extra={"wrapped": job_class},
    )


# -- kombu JSON: the decoded values must survive the Celery message body --------------------

register_type(GlobalID, "activejob.globalid", lambda gid: gid.gid, GlobalID)
register_type(
    Duration,
    "activejob.duration",
    lambda d: {"value": d.value, "parts": d.parts},
    lambda o: Duration(o["value"], o["parts"]),
)
register_type(
    Range,
    "activejob.range",
    lambda r: {"begin": r.begin, "end": r.end, "exclude_end": r.exclude_end},
    lambda o: Range(o["begin"], o["end"], o["exclude_end"]),
)
