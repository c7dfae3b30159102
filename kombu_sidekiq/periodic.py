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
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, cast

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

#: Rounds of one ``enqueue_due`` call at most; each fires a due entry once, and a catching-up
#: one-second cron needs one round per missed second.
MAX_ROUNDS: Final = int(CATCH_UP) + 2

#: How far ahead croniter looks for a match (its default, 50, cuts off years near 2099).
_MAX_YEARS: Final = 130

_MONTHS: Final = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)  # fmt: skip
_DAYS: Final = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")


def _numbered(names: tuple[str, ...]) -> dict[str, int]:
    """Full and three-letter names -> numbers from 1 (January = 1, Sunday = 1)."""
    return {form: index + 1 for index, name in enumerate(names) for form in (name, name[:3])}


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
    _Field("day of week", 1, 7, _numbered(_DAYS), any_mark=True),
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
        """Parse ``text``; raise :class:`InvalidCron` saying what to change."""
        if not isinstance(text, str):
            raise InvalidCron(f"a cron expression is a string, not {type(text).__name__}")
        expanded = SHORTHANDS.get(text.strip().lower(), text)
        parts = expanded.split()
        if len(parts) == 5:
            raise InvalidCron(
                f"cron {text!r} has 5 fields; rusty-sidekiq's cron puts seconds first: "
                f"use 6 fields, such as {'0 ' + text.strip()!r}"
            )
        if len(parts) not in (6, 7):
            raise InvalidCron(
                f"cron {text!r} has {len(parts)} fields; use 6 or 7: "
                "second minute hour day-of-month month day-of-week [year]"
            )
        values = tuple(
            _parse_field(part, spec, text) for part, spec in zip(parts, _FIELDS, strict=False)
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
    if text == "?":
        if not spec.any_mark:
            raise InvalidCron(f"cron {source!r}: '?' is only allowed in the day fields")
        return spec.everything
    allowed: set[int] = set()
    for item in text.split(","):
        allowed.update(_parse_item(item, spec, source))
    return frozenset(allowed)


def _parse_item(item: str, spec: _Field, source: str) -> range:
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        step = _number(step_text, spec, source, "step")
        if step < 1:
            raise InvalidCron(f"cron {source!r}: the {spec.name} step must be at least 1")
    if base == "*":
        low, high = spec.low, spec.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(first, spec, source), _value(last, spec, source)
        if low > high:
            raise InvalidCron(f"cron {source!r}: the {spec.name} range {base!r} runs backwards")
    else:
        low = _value(base, spec, source)
        high = spec.high if slash else low  # "5/15": from 5 on, every 15
    return range(low, high + 1, step)


def _value(text: str, spec: _Field, source: str) -> int:
    named = spec.names.get(text.lower())
    number = named if named is not None else _number(text, spec, source, "value")
    if not spec.low <= number <= spec.high:
        hint = " (Sunday = 1)" if spec.name == "day of week" else ""
        raise InvalidCron(
            f"cron {source!r}: {spec.name} {text!r} is outside {spec.low}-{spec.high}{hint}"
        )
    return number


def _number(text: str, spec: _Field, source: str, what: str) -> int:
    if not text.isdigit():
        raise InvalidCron(f"cron {source!r}: {text!r} is not a {spec.name} {what}")
    return int(text)


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
        for label, value in (("name", self.name), ("class", self.klass)):
            if not isinstance(value, str) or not value:
                raise InvalidEntry(f"a periodic entry needs a {label} string, not {value!r}")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise InvalidEntry(f"queue must be a queue name or None, not {self.queue!r}")
        if self.args is not None and not isinstance(self.args, list):
            raise InvalidEntry(f"args must be a list or None, not {type(self.args).__name__}")
        if not _is_retry(self.retry):
            raise InvalidEntry(
                f"retry must be true, false, a count >= 0 or None, not {self.retry!r}"
            )

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
        """Read a member as rusty-sidekiq does (unknown fields ignored); raise InvalidEntry."""
        try:
            data = json.loads(member)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEntry(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidEntry("a periodic entry is a JSON object")
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


def _args(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidEntry(f"'args' does not hold JSON: {exc}") from None
    if value is None:
        return []
    return value if isinstance(value, list) else [value]  # rusty's wrapping of a lone value


def _is_retry(value: Any) -> bool:
    return value is None or isinstance(value, bool) or (isinstance(value, int) and value >= 0)


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


class Periodic:
    """The ``periodic`` ZSET of one Redis and namespace: add entries, fire what is due.

    >>> periodic = Periodic(client)                                     # doctest: +SKIP
    >>> periodic.add(Entry("*/10 * * * * *", "HelloWorker"))          # doctest: +SKIP
    >>> periodic.enqueue_due()                                          # doctest: +SKIP
    [Fire(entry=Entry(...), at=1767225610.0, jid='...')]
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self._reported: set[bytes] = set()

    @property
    def key(self) -> str:
        return self.client.keys.periodic

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
        """Every member with its score, earliest first."""
        found = self.client.redis.zrange(self.key, 0, -1, withscores=True)
        return [(bytes(member), float(score)) for member, score in cast(_Scored, found)]

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
        """
        fired: list[Fire] = []
        for _ in range(MAX_ROUNDS):
            moment = time.time() if now is None else now
            due = self.client.redis.zrange(
                self.key, "-inf", moment, byscore=True, offset=0, num=CLAIM_BATCH, withscores=True
            )
            claimed = [
                fire
                for member, score in cast(_Scored, due)
                if (fire := self._claim(bytes(member), float(score), moment))
            ]
            fired += claimed
            if not claimed:
                break
        return fired

    def _claim(self, member: bytes, score: float, now: float) -> Fire | None:
        entry = self._entry(member)
        if entry is None:
            return None
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

    def _entry(self, member: bytes) -> Entry | None:
        try:
            return Entry.parse(member)
        except InvalidEntry as exc:
            # Left in place (it is somebody's data) and skipped; logged once per member.
            if member not in self._reported:
                self._reported.add(member)
                logger.error("skipping an invalid periodic entry: %s: %.200r", exc, member)
            return None


def _score_text(score: float) -> str:
    return "+inf" if math.isinf(score) else repr(score)


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
