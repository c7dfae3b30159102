"""Periodic jobs in rusty-sidekiq's ``periodic`` ZSET, and claims that fire each time once.

Each member is the JSON of one entry, fields in rusty-sidekiq's order; its score is the entry's
next fire time in epoch seconds:

>>> print(Entry("0 * * * * *", "MyWorker", args=[{"user_guid": "USR-123"}], retry=5).member())
{"name":"Scheduled PeriodicJob","class":"MyWorker","cron":"0 * * * * *","queue":null,\
"args":"[{\\"user_guid\\":\\"USR-123\\"}]","retry":5}
>>> Cron.parse("0 0 8 * * mon-fri").next_after(1767225600)    # 2026-01-01, a Thursday
1767254400

The cron dialect is rusty-sidekiq's (the ``cron_clock`` crate): six or seven fields, seconds
first and an optional year last, day-of-week 1-7 with Sunday = 1, ``?`` for "any" in the two
day fields, and a day must match day-of-month AND day-of-week; times are UTC. croniter does the
date arithmetic, fed a translation (Sunday = 0, seconds first, ``day_or=False``).

A fire is claimed with a compare-and-set on the score the claimer read, in the script that also
enqueues the job (``periodic_claim.lua``): whoever moves the score first enqueues, everybody else
finds it moved and does nothing. So any number of claimers enqueue each fire time once, whatever
their clocks say; rusty-sidekiq's own claim (``ZADD CH`` with "next after now") never enqueues a
fire that a compare-and-set already moved past, as long as both compute the same next fire.

Missed fires: a fire at most :data:`CATCH_UP` seconds late (a slow poll, clock skew between
hosts) is still enqueued, each fire time once; an entry further behind (nothing polled for a
while) fires once for everything it missed and resumes at its next fire after now.

Everything read from the ZSET is untrusted. :func:`read` is the one door a member comes in by:
it returns an :class:`Entry` or a :class:`Refused` with the reason, and raises nothing
(:meth:`Entry.parse` and :meth:`Cron.parse` raise only :class:`InvalidEntry` and
:class:`InvalidCron`). A refused member (not JSON, a cron with ``²`` or ``99999999999``, a field
of the wrong type, args that ``job.parse`` would refuse in the job it fires) is moved aside,
byte for byte, by ``periodic_set_aside.lua``: out of ``periodic`` and into the HASH
``periodic:invalid`` (under the namespace), member -> ``{"reason", "score", "moved_at"}``, in one
atomic step, logged once by the process that moved it. Nobody retries it; ``HGETALL
periodic:invalid`` shows it; fixed, it goes back with ``ZADD periodic``. If even the move is
refused (that key holds something else), it stays where it is, logged once and skipped. Either
way the due entries behind it fire on time.

A claim that Redis refuses (a ``queue:<q>`` or ``queues`` key of the wrong type: the script
checks them before it writes anything, as an error half way through a script keeps the writes
before it) leaves the entry and its score as they were, logged once, and is tried again at the
next poll; the other entries go on. A lost connection is raised to the caller.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, cast

import redis
from croniter import CroniterBadDateError, croniter

from . import job as jobs
from . import scripts
from .job import Job
from .unique import canonical_json

if TYPE_CHECKING:
    from .client import Client

logger = logging.getLogger(__name__)

_Scored = list[tuple[bytes, float]]

#: rusty-sidekiq's default entry name (``periodic::builder(..).name(..)``). Members are compared
#: as whole strings, so an entry written with the same fields here and in Rust is one entry.
DEFAULT_NAME: Final = "Scheduled PeriodicJob"

#: Seconds a fire may be late and still be enqueued on its own; an entry further behind fires
#: once for all it missed. One minute, as sidekiq-cron's grace period: it covers rusty-sidekiq's
#: 30 s poll and any sane clock skew, and bounds the burst after an outage of every claimer.
CATCH_UP: Final = 60.0

#: Due members read per round trip.
CLAIM_BATCH: Final = 100

#: Rounds of one ``enqueue_due`` call at most; each reads the due range to its end and fires
#: each due entry at least once, and a catching-up one-second cron may need one round per
#: missed second.
MAX_ROUNDS: Final = int(CATCH_UP) + 2

#: How far ahead croniter looks for a match (its default, 50, cuts off years near 2099).
_MAX_YEARS: Final = 130

_MONTHS: Final = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)  # fmt: skip
_DAYS: Final = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


def _numbered(names: tuple[str, ...], **extra: int) -> dict[str, int]:
    """Full and three-letter names -> numbers from 1 (January = 1, Sunday = 1), plus ``extra``."""
    named = {form: index + 1 for index, name in enumerate(names) for form in (name, name[:3])}
    return {**named, **extra}


#: The largest number cron_clock reads (a Rust ``u32``); it refuses more digits than that.
_U32_MAX: Final = 2**32 - 1

#: What separates cron fields: cron_clock's ``multispace``, ASCII only (``str.split()`` would
#: also split on U+00A0, U+2003 and the other Unicode spaces, which cron_clock refuses).
_SPACE: Final = re.compile(r"[ \t\r\n]+")

#: At most this much of a refused text is quoted in a message (a member may be megabytes).
_QUOTED: Final = 60

#: The deepest nesting of arrays and objects in a member or its args: the job a member fires
#: must pass :func:`kombu_sidekiq.job.parse`, which refuses deeper (Ruby's ``max_nesting``).
MAX_NESTING: Final = jobs.MAX_NESTING


#: cron_clock's shorthands, as seven-field expressions (``@weekly`` is Sunday, day 1).
SHORTHANDS: Final = {
    "@yearly": "0 0 0 1 1 * *",
    "@annually": "0 0 0 1 1 * *",
    "@monthly": "0 0 0 1 * * *",
    "@weekly": "0 0 0 * * 1 *",
    "@daily": "0 0 0 * * * *",
    "@hourly": "0 0 * * * * *",
    "@minutely": "0 * * * * * *",
    "@secondly": "* * * * * * *",
}


class InvalidCron(ValueError):
    """A cron expression rusty-sidekiq's dialect does not accept; the text says why."""


class InvalidEntry(ValueError):
    """A ``periodic`` member that is not an entry; the text says why."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int] = field(default_factory=dict)
    any_mark: bool = False  # accepts "?"

    @property
    def everything(self) -> frozenset[int]:
        return frozenset(range(self.low, self.high + 1))


_FIELDS: Final = (
    _Field("second", 0, 59),
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31, any_mark=True),
    _Field("month", 1, 12, _numbered(_MONTHS)),
    _Field("day of week", 1, 7, _numbered(_DAYS, tues=3, thurs=5), any_mark=True),
    _Field("year", 1970, 2099),
)


@dataclass(frozen=True)
class Cron:
    """A parsed cron expression: the allowed values of each field, in rusty's numbering.

    ``values`` holds seconds, minutes, hours, days of month, months, days of week (1-7,
    Sunday = 1) and years; ``source`` is the text as given, which the member keeps verbatim.
    """

    source: str
    values: tuple[frozenset[int], ...]

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse ``text``; raise :class:`InvalidCron` saying what to change, and nothing else,
        whatever ``text`` holds.

        Numbers are ASCII digits only, at most 4294967295 as in cron_clock; names are ASCII.
        """
        if not isinstance(text, str):
            raise InvalidCron(f"a cron expression is a string, not {type(text).__name__}")
        expanded = SHORTHANDS.get(text.strip(" \t\r\n").lower(), text)
        parts = _SPACE.split(expanded.strip(" \t\r\n"))
        if parts == [""]:
            parts = []
        if len(parts) == 5:
            raise InvalidCron(
                f"cron {_quoted(text)} has 5 fields; rusty-sidekiq's cron puts seconds first: "
                f"use 6 fields, such as {_quoted('0 ' + text.strip())}"
            )
        if len(parts) not in (6, 7):
            raise InvalidCron(
                f"cron {_quoted(text)} has {len(parts)} fields; use 6 or 7: "
                "second minute hour day-of-month month day-of-week [year]"
            )
        values = tuple(
            _parse_field(part, spec, _quoted(text))
            for part, spec in zip(parts, _FIELDS, strict=False)
        )
        if len(values) == 6:
            values += (_FIELDS[6].everything,)
        return cls(text, values)

    def matches(self, when: datetime) -> bool:
        """Whether the whole second ``when`` (UTC) is a fire time: every field matches."""
        when = when.astimezone(timezone.utc)
        weekday = when.isoweekday() % 7 + 1  # Sunday = 1
        actual = (when.second, when.minute, when.hour, when.day, when.month, weekday, when.year)
        return all(value in allowed for value, allowed in zip(actual, self.values, strict=True))

    def croniter_expression(self) -> str:
        """The same schedule in croniter's terms (seconds first, Sunday = 0); evaluate it with
        ``second_at_beginning=True`` and ``day_or=False``."""
        texts = []
        for index, (allowed, spec) in enumerate(zip(self.values, _FIELDS, strict=True)):
            if allowed == spec.everything:
                texts.append("*")
                continue
            numbers = sorted(allowed)
            if index == 5:
                numbers = [day - 1 for day in numbers]  # Sunday: rusty 1, croniter 0
            texts.append(",".join(map(str, numbers)))
        if texts[6] == "*":
            texts.pop()
        return " ".join(texts)

    def next_after(self, moment: float) -> int | None:
        """The first fire time (epoch seconds) strictly after the second ``moment`` is in, as
        rusty-sidekiq's ``upcoming`` counts; None when there is none before 2100."""
        start = datetime.fromtimestamp(math.floor(moment), timezone.utc)
        try:
            found = croniter(
                self.croniter_expression(),
                start,
                day_or=False,
                second_at_beginning=True,
                max_years_between_matches=_MAX_YEARS,
            ).get_next(float)
        except CroniterBadDateError:
            return None
        return int(found)


def _parse_field(text: str, spec: _Field, source: str) -> frozenset[int]:
    """The values one field allows; ``source`` is the whole expression, quoted for messages."""
    allowed: set[int] = set()
    for item in text.split(","):
        allowed.update(_parse_item(item, spec, source))
    return frozenset(allowed)


def _parse_item(item: str, spec: _Field, source: str) -> range:
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        step = _number(step_text, spec, source, "step")
        if step < 1:  # cron_clock's step_by(0) would panic
            raise InvalidCron(f"cron {source}: the {spec.name} step must be at least 1")
    if base == "?" and not spec.any_mark:
        raise InvalidCron(f"cron {source}: '?' is only allowed in the day fields")
    if base in ("*", "?"):
        low, high = spec.low, spec.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(first, spec, source), _value(last, spec, source)
        if low > high:
            raise InvalidCron(
                f"cron {source}: the {spec.name} range {_quoted(base)} runs backwards"
            )
    else:
        low = _value(base, spec, source)
        high = spec.high if slash else low  # "5/15": from 5 on, every 15
    return range(low, high + 1, step)


def _value(text: str, spec: _Field, source: str) -> int:
    # Names are ASCII, as cron_clock's alpha1 reads them: str.lower() turns some non-ASCII
    # letters into ASCII ones (U+212A KELVIN SIGN into "k").
    named = spec.names.get(text.lower()) if text.isascii() else None
    number = named if named is not None else _number(text, spec, source, "value")
    if not spec.low <= number <= spec.high:
        hint = " (Sunday = 1)" if spec.name == "day of week" else ""
        raise InvalidCron(
            f"cron {source}: {spec.name} {_quoted(text)} is outside {spec.low}-{spec.high}{hint}"
        )
    return number


def _number(text: str, spec: _Field, source: str, what: str) -> int:
    """A run of ASCII digits, as cron_clock's ``digit1`` then ``u32`` parse read it.

    ``str.isdigit`` alone is true for ``²`` (which ``int`` refuses with a ValueError of its
    own), for ``٣`` and FULLWIDTH DIGIT ONE (which ``int`` reads as 3 and 1, where cron_clock
    refuses them), and hundreds more; and ``int`` of thousands of digits raises too, so the
    length is checked before it is called.
    """
    if not (text.isascii() and text.isdigit()):
        raise InvalidCron(
            f"cron {source}: {_quoted(text)} is not a {spec.name} {what} (ASCII digits 0-9)"
        )
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(_U32_MAX)) or int(digits) > _U32_MAX:
        raise InvalidCron(
            f"cron {source}: the {spec.name} {what} {_quoted(text)} is too large "
            f"(at most {_U32_MAX})"
        )
    return int(digits)


def _quoted(text: str) -> str:
    """``repr(text)``, cut to :data:`_QUOTED` characters: messages stay short whatever came in."""
    return repr(text) if len(text) <= _QUOTED else f"{text[:_QUOTED]!r}..."


@dataclass(frozen=True)
class Entry:
    """One periodic entry: what rusty-sidekiq's ``PeriodicJob`` holds.

    ``args`` None is written as ``null`` (the job gets no args); ``queue`` None means
    ``"default"`` and ``retry`` None means ``false`` when it fires, as in rusty-sidekiq.
    """

    cron: str
    klass: str
    name: str = DEFAULT_NAME
    queue: str | None = None
    args: list[Any] | None = None
    retry: bool | int | None = None

    def __post_init__(self) -> None:
        Cron.parse(self.cron)
        # rusty-sidekiq takes any name, the empty one too; a class names a job, so not empty.
        if not isinstance(self.name, str):
            raise InvalidEntry(f"a periodic entry needs a name string, not {_shown(self.name)}")
        if not isinstance(self.klass, str) or not self.klass:
            raise InvalidEntry(f"a periodic entry needs a class string, not {_shown(self.klass)}")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise InvalidEntry(f"queue must be a queue name or None, not {_shown(self.queue)}")
        if self.args is not None and not isinstance(self.args, list):
            raise InvalidEntry(f"args must be a list or None, not {type(self.args).__name__}")
        if not _is_retry(self.retry):
            raise InvalidEntry(
                f"retry must be true, false, a count >= 0 or None, not {_shown(self.retry)}"
            )
        if _has_lone_surrogate(self.name):
            raise InvalidEntry("the name holds a lone UTF-16 surrogate, which UTF-8 cannot carry")
        self._check_job()

    def _check_job(self) -> None:
        """Refuse an entry whose fires :func:`kombu_sidekiq.job.parse` would refuse, or whose
        member could not be written: every fire is read back by a worker, Ruby's included.

        The job goes to ``job.parse`` as ASCII JSON, so a lone surrogate stays the escape
        (``\\ud800``) that parse looks for, and NaN stays the ``NaN`` that it refuses.
        """
        candidate = {
            "class": self.klass,
            "args": self.args or [],
            "queue": self.queue or "default",
            "retry": False if self.retry is None else self.retry,
        }
        try:
            text = json.dumps(candidate, ensure_ascii=True, separators=(",", ":"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise InvalidEntry(f"args must hold JSON values only: {_cut(str(exc))}") from None
        try:
            jobs.parse(text)
        except jobs.InvalidJob as exc:
            raise InvalidEntry(f"its job would be refused: {exc.reason}") from None
        if self.args is not None:
            try:
                canonical_json(self.args)  # the member's args text; depth is bounded by now
            except (TypeError, ValueError) as exc:
                raise InvalidEntry(f"args cannot be written: {_cut(str(exc))}") from None

    @cached_property
    def schedule(self) -> Cron:
        """The parsed cron."""
        return Cron.parse(self.cron)

    def member(self) -> str:
        """The ZSET member, byte for byte as rusty-sidekiq writes it (args double-encoded)."""
        fields = {
            "name": self.name,
            "class": self.klass,
            "cron": self.cron,
            "queue": self.queue,
            "args": None if self.args is None else canonical_json(self.args),
            "retry": self.retry,
        }
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def parse(cls, member: bytes | str) -> Entry:
        """Read a member as rusty-sidekiq does (unknown fields ignored); raise
        :class:`InvalidEntry` saying why, and nothing else, whatever ``member`` holds.

        Refused as serde_json would refuse them: invalid UTF-8, NaN and Infinity, a known key
        given twice. Refused besides: nesting deeper than :data:`MAX_NESTING`, a cron
        :meth:`Cron.parse` refuses, a known key of the wrong type, and args or a class or
        queue that would make a job :func:`kombu_sidekiq.job.parse` refuses.
        """
        data = _decode(member, "the member")
        if not isinstance(data, dict):
            raise InvalidEntry(f"a periodic entry is a JSON object, not {_json_type(data)}")
        repeated = data.repeated & _KNOWN_KEYS if isinstance(data, _Object) else frozenset()
        if repeated:
            raise InvalidEntry(f"the entry gives {sorted(repeated)[0]!r} more than once")
        for key in ("name", "class", "cron"):
            if not isinstance(data.get(key), str):
                raise InvalidEntry(f"the entry has no {key!r} string")
        args_text = data.get("args")
        if args_text is not None and not isinstance(args_text, str):
            raise InvalidEntry("'args' must be a string holding JSON, or null")
        try:
            return cls(
                data["cron"],
                data["class"],
                name=data["name"],
                queue=data.get("queue"),
                args=None if args_text is None else _args(args_text),
                retry=data.get("retry"),
            )
        except InvalidCron as exc:
            raise InvalidEntry(str(exc)) from None

    def job(self, version: int = jobs.DEFAULT_SIDEKIQ_VERSION) -> Job:
        """The job one fire enqueues, built as rusty-sidekiq builds it, readable by all.

        Queue ``default`` and ``retry: false`` when the entry names none; no args (``null``)
        become ``[]``: rusty-sidekiq writes ``null``, which sidekiq.rb runs as no args too
        (``perform(*nil)``) but which is not a valid job for its client or for ours.
        """
        return jobs.build(
            self.klass,
            list(self.args or []),
            queue=self.queue or "default",
            retry=False if self.retry is None else self.retry,
            version=version,
        )


#: The keys of rusty-sidekiq's ``PeriodicJob``; serde refuses a member that repeats one.
_KNOWN_KEYS: Final = frozenset({"name", "class", "cron", "queue", "args", "retry"})


class _Object(dict[str, Any]):
    """A JSON object as decoded, with the keys it gave more than once (json keeps the last)."""

    repeated: frozenset[str] = frozenset()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    found = _Object(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        repeated: set[str] = set()
        for key, _ in pairs:
            (repeated if key in seen else seen).add(key)
        found.repeated = frozenset(repeated)
    return found


#: The decoders of members and of their args: NaN, Infinity, -Infinity and numbers too large
#: for a double refused (serde_json and Ruby refuse them); a member's objects keep note of
#: repeated keys, while args are plain JSON, read as job.parse reads them (the last one wins).
_MEMBER: Final = json.JSONDecoder(
    object_pairs_hook=_object, parse_constant=jobs.refuse_constant, parse_float=jobs.finite_float
)
_ARGS: Final = json.JSONDecoder(parse_constant=jobs.refuse_constant, parse_float=jobs.finite_float)


def _decode(raw: object, what: str, decoder: json.JSONDecoder = _MEMBER) -> Any:
    """JSON from Redis, or :class:`InvalidEntry` saying why not; ``what`` names it."""
    try:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            text = bytes(raw).decode("utf-8")
        elif isinstance(raw, str):
            text = raw
        else:
            raise InvalidEntry(f"{what} is bytes or a string, not {type(raw).__name__}")
        value = decoder.decode(text)
    except RecursionError:
        raise InvalidEntry(f"{what} is nested deeper than {MAX_NESTING} levels") from None
    except UnicodeDecodeError as exc:
        raise InvalidEntry(f"{what} is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except ValueError as exc:  # json's JSONDecodeError, and int's "exceeds the limit" too
        if isinstance(exc, InvalidEntry):
            raise
        raise InvalidEntry(f"{what} is not JSON: {_cut(str(exc))}") from None
    # Only a text with that many brackets can be that deep: most members skip the walk.
    if text.count("[") + text.count("{") > MAX_NESTING and jobs.depth(value) > MAX_NESTING:
        raise InvalidEntry(f"{what} is nested deeper than {MAX_NESTING} levels")
    return value


def _args(text: str) -> list[Any]:
    value = _decode(text, "'args'", _ARGS)
    if value is None:
        return []
    return value if isinstance(value, list) else [value]  # rusty's wrapping of a lone value


def _is_retry(value: Any) -> bool:
    return value is None or isinstance(value, bool) or (isinstance(value, int) and value >= 0)


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return "null" if value is None else "a number"


def _shown(value: Any) -> str:
    """A value for a message, cut short (values come from Redis and may be huge)."""
    try:
        return _cut(repr(value))
    except (RecursionError, ValueError):  # a deep list; an int too long for str()
        return f"a {type(value).__name__}"


def _cut(text: str) -> str:
    return text if len(text) <= 2 * _QUOTED else f"{text[: 2 * _QUOTED]}..."


@dataclass(frozen=True)
class Refused:
    """A member that :func:`read` could not take: ``reason`` says why.

    ``error`` is set when the reader failed in a way it does not document (a bug here, not
    bad data): such a member is left where it is rather than moved aside.
    """

    reason: str
    error: Exception | None = None

    @property
    def unexpected(self) -> bool:
        return self.error is not None


def read(member: object, score: object = None) -> Entry | Refused:
    """The entry a ``periodic`` member holds, or a :class:`Refused` saying why not.

    The one door for members read from Redis: it raises nothing (but what no program can
    handle, such as KeyboardInterrupt). ``score`` is the score as redis-py gave it (None when
    it does not matter); one that is not a number is refused too.
    """
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score)
    ):
        return Refused(f"its score {_shown(score)} is not a number")
    try:
        return Entry.parse(cast(bytes, member))
    except InvalidEntry as exc:
        return Refused(str(exc))
    except Exception as exc:  # the reader's own fault, not the member's: reported, never raised
        return Refused(f"unexpected {type(exc).__name__} reading it: {_cut(str(exc))}", exc)


def next_score(cron: Cron, score: float, now: float) -> float:
    """The score a claim of the fire at ``score`` moves its entry to (the missed-fire policy).

    The next fire after the claimed one while it is at most :data:`CATCH_UP` late, so every
    fire time is enqueued once; else the next fire after now, so an outage costs one job.
    ``inf`` (never due again) when the cron has no later fire.
    """
    after = cron.next_after(score if score >= now - CATCH_UP else now)
    return math.inf if after is None else float(after)


@dataclass(frozen=True)
class Fire:
    """One claimed fire: the entry, the fire time it claimed, and the job it enqueued."""

    entry: Entry
    at: float
    jid: str


class _Outcome(Enum):
    """What became of a due member that enqueued nothing this time."""

    GONE = "gone"  # no longer where it was read: claimed by another process, or moved aside
    LEFT = "left"  # still where it was: skipped when read again in the same call


#: The HASH beside ``periodic`` that unreadable members are moved to, under the namespace.
INVALID_KEY: Final = "periodic:invalid"


class Periodic:
    """The ``periodic`` ZSET of one Redis and namespace: add entries, fire what is due.

    >>> periodic = Periodic(client)                                     # doctest: +SKIP
    >>> periodic.add(Entry("*/10 * * * * *", "HelloWorker"))          # doctest: +SKIP
    >>> periodic.enqueue_due()                                          # doctest: +SKIP
    [Fire(entry=Entry(...), at=1767225610.0, jid='...')]
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        # (member, what went wrong) already logged: each problem is logged once per process.
        self._reported: set[tuple[bytes, str]] = set()
        # Members this process will not touch again: refused ones that could not be moved
        # aside, and ones the reader failed on unexpectedly. They stay in Redis as they are.
        self._stranded: set[bytes] = set()

    @property
    def key(self) -> str:
        return self.client.keys.periodic

    @property
    def invalid_key(self) -> str:
        """The HASH of members moved aside: member -> ``{"reason", "score", "moved_at"}``."""
        return self.client.keys.key(INVALID_KEY)

    def add(self, entry: Entry, now: float | None = None) -> bool:
        """Add ``entry`` scored at its next fire; True if it was new.

        An entry already there keeps its score (``ZADD NX``): moving it could undo or repeat a
        claim another process made meanwhile. (rusty-sidekiq moves it to the next fire after
        now, dropping an overdue fire; here the missed-fire policy of the claim decides.)
        """
        moment = time.time() if now is None else now
        first = entry.schedule.next_after(moment)
        if first is None:
            raise InvalidEntry(f"cron {entry.cron!r} never fires after now")
        return bool(self.client.redis.zadd(self.key, {entry.member(): float(first)}, nx=True))

    def entries(self) -> list[tuple[bytes, float]]:
        """Every member with its score, earliest first, as stored (read or not)."""
        found = self.client.redis.zrange(self.key, 0, -1, withscores=True)
        return [(bytes(member), float(score)) for member, score in cast(_Scored, found)]

    def read_all(self) -> list[tuple[bytes, float, Entry]]:
        """Every member that holds an entry, with its score and the entry, earliest first.

        The others are moved aside as :meth:`enqueue_due` moves them, whenever they are due.
        """
        found = []
        for member, score in self.entries():
            entry = self._entry(member, score)
            if isinstance(entry, Entry):
                found.append((member, score, entry))
        return found

    def invalid(self) -> dict[bytes, dict[str, Any]]:
        """The members moved aside, each with ``reason``, ``score`` (as text) and ``moved_at``."""
        stored = cast(dict[bytes, bytes], self.client.redis.hgetall(self.invalid_key))
        return {bytes(member): _record(raw) for member, raw in stored.items()}

    def remove(self, *members: bytes | str) -> int:
        return int(self.client.redis.zrem(self.key, *members)) if members else 0

    def destroy_all(self) -> None:
        """``DEL periodic``, as rusty-sidekiq's ``periodic::destroy_all``."""
        self.client.redis.delete(self.key)

    def next_due(self, now: float | None = None) -> float | None:
        """The earliest score after ``now``, or None when nothing is scheduled."""
        moment = time.time() if now is None else now
        found = self.client.redis.zrange(
            self.key, f"({moment!r}", "+inf", byscore=True, offset=0, num=1, withscores=True
        )
        return float(found[0][1]) if found else None

    def enqueue_due(self, now: float | None = None) -> list[Fire]:
        """Claim and enqueue every due fire; return the fires this call enqueued.

        ``now`` fixes the clock (tests of skew); by default each round reads ``time.time()``.
        A member that cannot fire is moved aside or left where it is (see the module's
        docstring) and never stops the ones behind it: a round reads the due range to its
        end, page by page, stepping over the members left in place. What fails for the ZSET
        as a whole is raised: a lost connection, an error reply to reading it.
        """
        fired: list[Fire] = []
        left: set[bytes] = set()
        for _ in range(MAX_ROUNDS):
            moment = time.time() if now is None else now
            progress = False
            offset = 0  # members left in place so far, all ahead of the first unread one
            while True:
                due = self.client.redis.zrange(
                    self.key, "-inf", moment, byscore=True, offset=offset, num=CLAIM_BATCH,
                    withscores=True,
                )  # fmt: skip
                for raw, score in cast(_Scored, due):
                    member = bytes(raw)
                    outcome = _Outcome.LEFT if member in left else self._fire(member, score, moment)
                    if outcome is _Outcome.LEFT:
                        left.add(member)
                        offset += 1
                        continue
                    progress = True
                    if isinstance(outcome, Fire):
                        fired.append(outcome)
                if len(due) < CLAIM_BATCH:
                    break
            if not progress:
                break
        return fired

    def _fire(self, member: bytes, score: float, now: float) -> Fire | _Outcome:
        """Read one due member and claim its fire, or deal with it if it cannot fire."""
        entry = self._entry(member, score)
        if not isinstance(entry, Entry):
            return entry
        try:
            fire = self._claim(entry, member, score, now)
        except redis.ResponseError as exc:
            # Redis refused the script (a queue key of another type, OOM, a read-only
            # replica): the script checked before writing, so entry and score are as they
            # were. The cause is outside the member; the next poll tries again.
            self._report(member, f"its claim was refused by Redis: {exc}", "left in place, retried")
            return _Outcome.LEFT
        except redis.RedisError:
            raise  # a lost connection: the caller waits and tries again, nothing was claimed
        except Exception as exc:  # a bug here: this member stays, the others go on
            self._strand(member, "claiming it failed unexpectedly", exc_info=exc)
            return _Outcome.LEFT
        return _Outcome.GONE if fire is None else fire

    def _claim(self, entry: Entry, member: bytes, score: float, now: float) -> Fire | None:
        """Claim the fire at ``score`` and enqueue its job in one script; None if another
        process claimed it first (or the member is gone)."""
        job = entry.job(self.client.version)
        queue = job["queue"]
        script = self.client.redis.register_script(scripts.source("periodic_claim"))
        won = script(
            keys=[self.key, self.client.keys.queues, self.client.keys.queue(queue)],
            args=[
                member,
                repr(score),
                _score_text(next_score(entry.schedule, score, now)),
                queue,
                jobs.dumps(job),
            ],
        )
        if not won:
            logger.debug("periodic: %s at %r was claimed by another process", entry.name, score)
            return None
        return Fire(entry, score, str(job["jid"]))

    def _entry(self, member: bytes, score: float) -> Entry | _Outcome:
        """The entry of ``member``; a refused one is moved aside (GONE) or left (LEFT)."""
        if member in self._stranded:
            return _Outcome.LEFT
        found = read(member, score)
        if isinstance(found, Entry):
            return found
        if found.error is not None:
            self._strand(member, found.reason, exc_info=found.error)
            return _Outcome.LEFT
        try:
            moved = self._set_aside(member, score, found.reason)
        except redis.ResponseError as exc:  # the script wrote nothing: the member stays
            self._strand(member, f"{found.reason}; moving it aside was refused by Redis: {exc}")
            return _Outcome.LEFT
        except redis.RedisError:
            raise  # a lost connection: the caller waits and tries again
        except Exception as exc:  # a bug here: this member stays, the others go on
            self._strand(member, f"{found.reason}; moving it aside failed", exc_info=exc)
            return _Outcome.LEFT
        if moved:
            logger.error(
                "periodic: moved an invalid entry from %s to %s: %s: %.200r",
                self.key, self.invalid_key, found.reason, member,
            )  # fmt: skip
        else:  # another process moved it first (and logged it), or its score changed
            logger.debug(
                "periodic: an invalid entry was moved or changed meanwhile: %.200r", member
            )
        return _Outcome.GONE

    def _set_aside(self, member: bytes, score: float, reason: str) -> bool:
        record = json.dumps(
            {"reason": reason, "score": _score_text(score), "moved_at": time.time()},
            ensure_ascii=True,  # a reason may quote a lone surrogate, which UTF-8 cannot carry
        )
        script = self.client.redis.register_script(scripts.source("periodic_set_aside"))
        return bool(script(keys=[self.key, self.invalid_key], args=[member, repr(score), record]))

    def _strand(self, member: bytes, reason: str, exc_info: Exception | None = None) -> None:
        """Leave ``member`` where it is and skip it from now on, logged once."""
        self._stranded.add(member)
        self._report(member, reason, "left in place and skipped", exc_info=exc_info)

    def _report(
        self, member: bytes, reason: str, action: str, exc_info: Exception | None = None
    ) -> None:
        if (member, reason) in self._reported:
            return
        self._reported.add((member, reason))
        logger.error(
            "periodic: cannot fire an entry of %s (%s): %s: %.200r",
            self.key, action, reason, member, exc_info=exc_info,
        )  # fmt: skip


def _record(raw: bytes) -> dict[str, Any]:
    """A record of ``periodic:invalid`` (written by us, but read back as untrusted)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return value
    return {"reason": bytes(raw).decode("utf-8", "replace")}


def _score_text(score: float) -> str:
    """A score as ZADD and Lua's tonumber read it back exactly (``inf`` as Redis spells it)."""
    if math.isinf(score):
        return "+inf" if score > 0 else "-inf"
    return repr(score)


def entry_from(
    cron: str,
    klass: str,
    *,
    name: str | None = None,
    queue: str | None = None,
    args: Sequence[Any] | None = None,
    retry: bool | int | None = None,
) -> Entry:
    """An :class:`Entry` from loose arguments (a tuple of args, a default name)."""
    if args is not None and (isinstance(args, (str, bytes)) or not isinstance(args, Sequence)):
        raise InvalidEntry(f"args must be a list or tuple of positional args, not {args!r}")
    return Entry(
        cron,
        klass,
        name=DEFAULT_NAME if name is None else name,
        queue=queue,
        args=None if args is None else list(args),
        retry=retry,
    )
