"""``celery -A proj sidekiq ...``: the Web UI's dashboard and buttons on the command line.

Installed as a Celery sub-command through the ``celery.commands`` entry point::

    celery -A proj sidekiq stats [--days 7]          # the dashboard's figures
    celery -A proj sidekiq queues                    # size and latency of every queue
    celery -A proj sidekiq scheduled | retries | dead [--limit 50]
    celery -A proj sidekiq processes | workers | periodic
    celery -A proj sidekiq retry JID [--from dead]   # back to its queue now
    celery -A proj sidekiq kill JID                  # to the dead set
    celery -A proj sidekiq delete JID [--from queue:default]
    celery -A proj sidekiq retry-all dead            # with a progress bar
    celery -A proj sidekiq kill-all retries
    celery -A proj sidekiq clear retries|scheduled|dead|queue:NAME
    celery -A proj sidekiq quiet IDENTITY | --all
    celery -A proj sidekiq stop IDENTITY | --all

Every command takes ``--json`` (one JSON document on stdout, for scripts); destructive ones
(delete, clear, retry-all, kill-all, stop) ask first unless given ``--yes``. Exit codes: 0 done,
1 failed (no such job or process, the job moved before the action, Redis refused a command),
2 bad usage (an unknown set, a broker that is not ``sidekiq://``), 69 Redis unreachable.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

import click
import redis
from kombu.exceptions import OperationalError
from redis.client import NEVER_DECODE

from kombu_sidekiq.client import Client
from kombu_sidekiq.job import InvalidJob

from . import api

#: Exit code of a command that could not do what it was asked (sysexits' EX_SOFTWARE is 70;
#: 1 is what shells and CI treat as plain failure).
EXIT_FAILED: Final = 1

#: Exit code when Redis cannot be reached (sysexits' EX_UNAVAILABLE, as Celery's commands use).
EXIT_UNAVAILABLE: Final = 69

#: Set names on the command line -> key names: the Web UI's words and the key names both work.
SET_NAMES: Final = {
    "scheduled": "schedule",
    "schedule": "schedule",
    "retries": "retry",
    "retry": "retry",
    "dead": "dead",
}

#: Key name -> the word shown to people.
SET_LABELS: Final = {"schedule": "scheduled", "retry": "retries", "dead": "dead"}

_JOB_SETS: Final[dict[str, Callable[[Client], api.JobSet]]] = {
    "schedule": api.ScheduledSet,
    "retry": api.RetrySet,
    "dead": api.DeadSet,
}

#: Prefix that names a queue where a set is expected: ``queue:default``.
QUEUE_PREFIX: Final = "queue:"

#: Widest a table cell gets before it is cut with an ellipsis.
CELL_WIDTH: Final = 60


class Failed(click.ClickException):
    """The command could not do it: printed as ``Error: ...``, exit code 1."""

    exit_code = EXIT_FAILED


class Unavailable(click.ClickException):
    """Redis could not be reached: exit code 69."""

    exit_code = EXIT_UNAVAILABLE


if TYPE_CHECKING:  # click 8.2+ types ParamType as a generic; older clicks cannot subscript it
    _ParamType = click.ParamType[str, Any]
else:
    _ParamType = click.ParamType


class SetName(_ParamType):
    """A set name (``scheduled``, ``retries``, ``dead``) or, where allowed, ``queue:NAME``;
    converts to the key name (``schedule``, ``retry``, ``dead``) or ``queue:NAME``."""

    name = "SET"

    def __init__(self, sets: Sequence[str] = ("schedule", "retry", "dead"), queues: bool = False):
        self.sets = tuple(sets)
        self.queues = queues

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if self.queues and text.startswith(QUEUE_PREFIX) and len(text) > len(QUEUE_PREFIX):
            return text
        key = SET_NAMES.get(text)
        if key in self.sets:
            return key
        choices = [SET_LABELS[name] for name in self.sets]
        if self.queues:
            choices.append("queue:NAME")
        self.fail(f"unknown set {text!r}: use one of {', '.join(choices)}", param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        choices = [SET_LABELS[name] for name in self.sets] + (["queue:NAME"] if self.queues else [])
        return "[" + "|".join(choices) + "]"


class SidekiqGroup(click.Group):
    """Turns Redis failures in any sub-command into one clear line: an outage exits 69, any
    other refusal (a key of the wrong type, a read-only replica) exits 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (redis.ConnectionError, redis.TimeoutError, OperationalError) as exc:
            raise Unavailable(f"cannot reach Redis: {type(exc).__name__}: {exc}") from exc
        except redis.RedisError as exc:
            raise Failed(f"Redis refused: {type(exc).__name__}: {exc}") from exc


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of text."
)
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


@click.group(cls=SidekiqGroup)
@click.pass_context
def sidekiq(ctx: click.Context) -> None:
    """Sidekiq's queues, sets and processes: look and act (Sidekiq::API for Celery)."""


# -- plumbing --------------------------------------------------------------------------------


def _client(ctx: click.Context) -> Client:
    app = ctx.find_root().obj.app
    try:
        return api.client_of(app)
    except ValueError as exc:
        raise click.UsageError(str(exc), ctx) from exc


def _emit(ctx: click.Context, as_json: bool, data: Any, text: str | Callable[[], str]) -> None:
    if as_json:
        click.echo(json.dumps(_finite(data), indent=2, ensure_ascii=False, default=str))
    else:
        _echo(ctx, text() if callable(text) else text)


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (a score Redis accepts) as null: JSON has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _echo(ctx: click.Context, text: str) -> None:
    obj = ctx.find_root().obj
    if obj is not None and getattr(obj, "no_color", False):
        click.echo(text, color=False)
    else:
        click.echo(text)


def _fail(as_json: bool, message: str) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"ok": False, "error": message}, ensure_ascii=False))
    raise Failed(message)


def _confirm(yes: bool, question: str) -> None:
    # The prompt goes to stderr, so that `--json` output on stdout stays one document.
    if not yes:
        click.confirm(question, abort=True, err=True)


def _bulk(
    as_json: bool, total: int, label: str, action: Callable[[api.Progress | None], int]
) -> int:
    if as_json or total == 0:
        return action(None)
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        return action(bar.update)


def _style(ctx: click.Context, text: str, **styles: Any) -> str:
    obj = ctx.find_root().obj
    return text if obj is None or getattr(obj, "no_color", False) else click.style(text, **styles)


def _table(ctx: click.Context, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]
    head = "  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True))
    lines = [_style(ctx, head.rstrip(), bold=True)]
    for row in cells:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= CELL_WIDTH else text[: CELL_WIDTH - 1] + "…"


def _span(seconds: float) -> str:
    """A short duration: 42s, 5m, 3h, 2d."""
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    delta = moment.timestamp() - datetime.now(timezone.utc).timestamp()
    relative = f"in {_span(delta)}" if delta >= 0 else f"{_span(delta)} ago"
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S')} ({relative})"


def _from_score(score: float) -> datetime | None:
    """The moment a score stands for; None for one no calendar holds (``+inf``: a periodic
    entry with no fire left, or a score somebody else wrote)."""
    try:
        return datetime.fromtimestamp(score, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def _latency(seconds: float) -> str:
    return f"{seconds:.2f}s"


# -- looking ---------------------------------------------------------------------------------


@sidekiq.command()
@click.option(
    "--days",
    type=click.IntRange(0, api.HISTORY_MAX_DAYS),
    default=0,
    help="Also show processed/failed per day for this many days.",
)
@json_option
@click.pass_context
def stats(ctx: click.Context, days: int, as_json: bool) -> None:
    """The dashboard's figures and the size of every queue."""
    snapshot = api.Stats(_client(ctx))
    data = snapshot.to_dict()
    history = snapshot.history(days) if days else None
    if history is not None:
        data["history"] = {"processed": history.processed, "failed": history.failed}

    def text() -> str:
        figures = [
            ("Processed", snapshot.processed),
            ("Failed", snapshot.failed),
            ("Busy", snapshot.workers_size),
            ("Processes", snapshot.processes_size),
            ("Enqueued", snapshot.enqueued),
            ("Scheduled", snapshot.scheduled_size),
            ("Retries", snapshot.retry_size),
            ("Dead", snapshot.dead_size),
            ("Default latency", _latency(snapshot.default_queue_latency)),
        ]
        width = max(len(name) for name, _ in figures)
        parts = ["\n".join(f"{name.ljust(width)}  {value}" for name, value in figures)]
        if snapshot.queues:
            parts.append(_table(ctx, ("QUEUE", "SIZE"), snapshot.queues.items()))
        if history is not None:
            rows = [(day, n, history.failed[day]) for day, n in history.processed.items()]
            parts.append(_table(ctx, ("DAY", "PROCESSED", "FAILED"), rows))
        return "\n\n".join(parts)

    _emit(ctx, as_json, data, text)


@sidekiq.command()
@json_option
@click.pass_context
def queues(ctx: click.Context, as_json: bool) -> None:
    """Every queue with its size and latency (how long its oldest job has waited)."""
    rows = [(queue.name, queue.size(), queue.latency()) for queue in api.Queue.all(_client(ctx))]
    data = [{"name": name, "size": size, "latency": latency} for name, size, latency in rows]
    shown = [(name, size, _latency(latency)) for name, size, latency in rows]
    text = _table(ctx, ("QUEUE", "SIZE", "LATENCY"), shown) if rows else "No queues."
    _emit(ctx, as_json, data, text)


def _list_set(ctx: click.Context, name: str, limit: int, as_json: bool) -> None:
    jobset = _JOB_SETS[name](_client(ctx))
    total = jobset.size()
    # Next to run first for schedule and retry; most recent death first for dead.
    entries = jobset.page(0, limit if limit > 0 else total, reverse=name == "dead")
    if as_json:
        _emit(ctx, True, [entry.to_dict() for entry in entries], "")
        return
    if not entries:
        _echo(ctx, f"No jobs in {SET_LABELS[name]}.")
        return
    when = {"schedule": "WHEN", "retry": "NEXT RETRY", "dead": "DIED"}[name]
    headers: tuple[str, ...] = (when, "JID", "CLASS", "QUEUE", "ARGS")
    if name != "schedule":
        headers += ("RETRIES", "ERROR")
    rows = []
    for entry in entries:
        row: list[Any] = [
            _when(entry.at),
            entry.jid,
            # Not a job: say why where the class goes; ARGS shows the payload as it is.
            f"(invalid: {entry.reason})" if entry.invalid else entry.display_class,
            entry.queue,
            entry.display_args,
        ]
        if name != "schedule":
            error = ": ".join(part for part in (entry.error_class, entry.error_message) if part)
            row += [entry.retry_count, error or None]
        rows.append(row)
    footer = f"{len(entries)} of {total} shown" + (
        "; --limit 0 shows all" if len(entries) < total else ""
    )
    _echo(ctx, _table(ctx, headers, rows) + "\n" + footer)


_limit_option = click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=api.PAGE_SIZE,
    show_default=True,
    help="How many jobs to show; 0 for all.",
)


@sidekiq.command()
@_limit_option
@json_option
@click.pass_context
def scheduled(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Jobs waiting for their time (the schedule set), next first."""
    _list_set(ctx, "schedule", limit, as_json)


@sidekiq.command()
@_limit_option
@json_option
@click.pass_context
def retries(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Failed jobs waiting for their next try (the retry set), next first."""
    _list_set(ctx, "retry", limit, as_json)


@sidekiq.command()
@_limit_option
@json_option
@click.pass_context
def dead(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Jobs out of retries (the dead set), latest first."""
    _list_set(ctx, "dead", limit, as_json)


@sidekiq.command()
@json_option
@click.pass_context
def processes(ctx: click.Context, as_json: bool) -> None:
    """Live processes (Ruby, Rust and Celery workers) with their load."""
    client = _client(ctx)
    found = list(api.ProcessSet(client))
    if as_json:
        _emit(ctx, True, [process.to_dict() for process in found], "")
        return
    if not found:
        _echo(ctx, "No live processes.")
        return
    rows = [
        (
            process.identity,
            process.tag,
            ",".join(process.queues),
            f"{process.busy}/{process.concurrency}",
            "quiet" if process.stopping else "running",
            _when(process.beat),
            f"{process.rss_kb // 1024}M" if process.rss_kb else None,
            process.version,
        )
        for process in found
    ]
    headers = ("IDENTITY", "TAG", "QUEUES", "BUSY", "STATE", "BEAT", "RSS", "VERSION")
    busy, threads = sum(p.busy for p in found), sum(p.concurrency for p in found)
    _echo(ctx, _table(ctx, headers, rows) + f"\n{len(found)} processes, {busy} of {threads} busy")


@sidekiq.command()
@json_option
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """Jobs running right now, oldest first (as of each process's last beat)."""
    works = list(api.Workers(_client(ctx)))
    if as_json:
        _emit(ctx, True, [work.to_dict() for work in works], "")
        return
    if not works:
        _echo(ctx, "No jobs running.")
        return
    rows = [
        (
            work.process_id,
            work.thread_id,
            work.queue,
            work.job.jid,
            work.job.display_class,
            work.job.display_args,
            _when(work.run_at),
        )
        for work in works
    ]
    _echo(ctx, _table(ctx, ("PROCESS", "THREAD", "QUEUE", "JID", "CLASS", "ARGS", "STARTED"), rows))


@sidekiq.command()
@json_option
@click.pass_context
def periodic(ctx: click.Context, as_json: bool) -> None:
    """Periodic jobs (rusty-sidekiq's ``periodic`` set), next to fire first."""
    entries = periodic_entries(_client(ctx))
    if as_json:
        _emit(ctx, True, entries, "")
        return
    if not entries:
        _echo(ctx, "No periodic jobs.")
        return
    rows = [
        (
            _when(_from_score(e["score"])),
            e.get("name"),
            e.get("class"),
            e.get("cron"),
            e.get("queue"),
            e.get("args"),
            e.get("retry"),
        )
        if not e["invalid"]
        # As many cells as the headers, or the table cannot be laid out.
        else (_when(_from_score(e["score"])), "(unreadable)", e["member"], None, None, None, None)
        for e in entries
    ]
    _echo(ctx, _table(ctx, ("NEXT", "NAME", "CLASS", "CRON", "QUEUE", "ARGS", "RETRY"), rows))


def periodic_entries(client: Client) -> list[dict[str, Any]]:
    """The ``periodic`` ZSET as rusty-sidekiq writes it: members ``{"name", "class", "cron",
    "queue", "args", "retry"}`` with ``args`` a JSON string holding the args array, score = the
    next fire time. Values are shown as rusty-sidekiq enqueues them (no queue: ``default``; no
    retry: ``false``); an unreadable member is listed as it is, marked ``invalid``."""
    # Raw bytes whatever the client decodes: a member that is not UTF-8 is listed, not fatal.
    execute: Any = client.redis.execute_command  # untyped in redis-py
    reply = execute(
        "ZRANGE", client.keys.periodic, 0, -1, "WITHSCORES", withscores=True, **{NEVER_DECODE: True}
    )
    entries = []
    for member, score in cast(list[tuple[bytes, float]], reply):
        text = member.decode("utf-8", "replace") if isinstance(member, bytes) else str(member)
        moment = _from_score(score)
        at = moment.isoformat().replace("+00:00", "Z") if moment is not None else None
        base = {"score": score, "next_at": at, "member": text}
        try:
            entry = _printable_json(text)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            entries.append({**base, "invalid": True})
            continue
        args = entry.get("args")
        if isinstance(args, str):  # double-encoded by rusty-sidekiq
            with contextlib.suppress(ValueError):
                args = _printable_json(args)
        entries.append(
            {
                **base,
                "invalid": False,
                "name": entry.get("name"),
                "class": entry.get("class"),
                "cron": entry.get("cron"),
                "queue": entry.get("queue") or "default",
                "args": args,
                "retry": False if entry.get("retry") is None else entry.get("retry"),
            }
        )
    return entries


def _printable_json(text: str) -> Any:
    """``json.loads``, refusing (``ValueError``) what it reads but this command could not print:
    a lone surrogate escape (UTF-8 cannot carry it), NaN or Infinity (no JSON), nesting too deep
    to walk (a ``RecursionError``)."""
    try:
        value = json.loads(text)
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except RecursionError:
        raise ValueError("nested too deep") from None
    return value


# -- acting on one job -----------------------------------------------------------------------


def _find(client: Client, jid: str, where: Sequence[str]) -> tuple[str, api.JobRecord] | None:
    """The first place in ``where`` (set key names or ``queue:NAME``) holding ``jid``."""
    for place in where:
        found: api.JobRecord | None
        if place.startswith(QUEUE_PREFIX):
            found = api.Queue(client, place[len(QUEUE_PREFIX) :]).find_job(jid)
        else:
            found = _JOB_SETS[place](client).find_job(jid)
        if found is not None:
            return place, found
    return None


def _label(place: str) -> str:
    return SET_LABELS.get(place, place)


def _not_found(as_json: bool, jid: str, where: Sequence[str]) -> NoReturn:
    _fail(as_json, f"no job {jid} in {', '.join(_label(place) for place in where)}")


def _moved(as_json: bool, jid: str, place: str) -> NoReturn:
    _fail(
        as_json,
        f"job {jid} left {_label(place)} before the action (a poller or another "
        "process took it); nothing was changed",
    )


@sidekiq.command("retry")
@click.argument("jid")
@click.option(
    "--from", "where", type=SetName(), help="Look only here (default: retries, dead, scheduled)."
)
@json_option
@click.pass_context
def retry_job(ctx: click.Context, jid: str, where: str | None, as_json: bool) -> None:
    """Push job JID back to its queue now.

    From retries or dead this is the Web UI's "Retry" (it does not use up a retry); from
    scheduled, its "Add to queue".
    """
    client = _client(ctx)
    places = [where] if where else ["retry", "dead", "schedule"]
    found = _find(client, jid, places)
    if found is None:
        _not_found(as_json, jid, places)
    place, entry = found
    assert isinstance(entry, api.SortedEntry)
    try:
        done = entry.add_to_queue() if place == "schedule" else entry.retry()
    except InvalidJob as exc:
        _fail(as_json, f"{jid} in {_label(place)} is not a valid job ({exc.reason}); left as it is")
    if not done:
        _moved(as_json, jid, place)
    data = {
        "ok": True,
        "action": "retry",
        "jid": jid,
        "from": _label(place),
        "queue": entry.queue or "default",
        "class": entry.display_class,
    }
    _emit(
        ctx,
        as_json,
        data,
        f"Retried {jid} ({entry.display_class}) from {_label(place)} into queue {data['queue']}.",
    )


@sidekiq.command("kill")
@click.argument("jid")
@click.option(
    "--from", "where", type=SetName(), help="Look only here (default: retries, scheduled)."
)
@json_option
@click.pass_context
def kill_job(ctx: click.Context, jid: str, where: str | None, as_json: bool) -> None:
    """Move job JID to the dead set (the Web UI's "Kill")."""
    client = _client(ctx)
    places = [where] if where else ["retry", "schedule"]
    found = _find(client, jid, places)
    if found is None:
        _not_found(as_json, jid, places)
    place, entry = found
    assert isinstance(entry, api.SortedEntry)
    if not entry.kill():
        _moved(as_json, jid, place)
    data = {
        "ok": True,
        "action": "kill",
        "jid": jid,
        "from": _label(place),
        "class": entry.display_class,
    }
    _emit(
        ctx,
        as_json,
        data,
        f"Killed {jid} ({entry.display_class}): moved from {_label(place)} to dead.",
    )


@sidekiq.command("delete")
@click.argument("jid")
@click.option(
    "--from",
    "where",
    type=SetName(queues=True),
    help="Look only here (default: scheduled, retries, dead, then every queue).",
)
@yes_option
@json_option
@click.pass_context
def delete_job(ctx: click.Context, jid: str, where: str | None, yes: bool, as_json: bool) -> None:
    """Delete job JID for good (the Web UI's "Delete")."""
    client = _client(ctx)
    if where:
        places = [where]
    else:
        places = ["schedule", "retry", "dead"]
        places += [QUEUE_PREFIX + queue.name for queue in api.Queue.all(client)]
    found = _find(client, jid, places)
    if found is None:
        _not_found(as_json, jid, places if where else ["scheduled, retries, dead or any queue"])
    place, record = found
    _confirm(
        yes, f"Delete job {jid} ({record.display_class}) from {_label(place)}? There is no undo."
    )
    if not record.delete():
        _moved(as_json, jid, place)
    data = {
        "ok": True,
        "action": "delete",
        "jid": jid,
        "from": _label(place),
        "class": record.display_class,
    }
    _emit(ctx, as_json, data, f"Deleted {jid} ({record.display_class}) from {_label(place)}.")


# -- acting on many --------------------------------------------------------------------------


@sidekiq.command("retry-all")
@click.argument("set_name", metavar="SET", type=SetName())
@yes_option
@json_option
@click.pass_context
def retry_all(ctx: click.Context, set_name: str, yes: bool, as_json: bool) -> None:
    """Push every job of SET back to its queue (retries, dead; scheduled: run all now)."""
    jobset = _JOB_SETS[set_name](_client(ctx))
    total = jobset.size()
    label = _label(set_name)
    if total:
        _confirm(yes, f"Push all {total} jobs of {label} back to their queues now?")
    action = jobset.add_all_to_queue if set_name == "schedule" else jobset.retry_all
    moved = _bulk(as_json, total, f"Retrying {label}", action)
    left = jobset.size()
    data = {"ok": True, "action": "retry-all", "set": label, "moved": moved, "left": left}
    _emit(ctx, as_json, data, f"Retried {moved} jobs from {label}; {left} left there.")


@sidekiq.command("kill-all")
@click.argument("set_name", metavar="SET", type=SetName(("retry", "schedule")))
@yes_option
@json_option
@click.pass_context
def kill_all(ctx: click.Context, set_name: str, yes: bool, as_json: bool) -> None:
    """Move every job of SET (retries, scheduled) to the dead set."""
    jobset = _JOB_SETS[set_name](_client(ctx))
    total = jobset.size()
    label = _label(set_name)
    if total:
        _confirm(yes, f"Move all {total} jobs of {label} to the dead set?")
    moved = _bulk(as_json, total, f"Killing {label}", jobset.kill_all)
    left = jobset.size()
    data = {"ok": True, "action": "kill-all", "set": label, "moved": moved, "left": left}
    _emit(ctx, as_json, data, f"Killed {moved} jobs from {label}; {left} left there.")


@sidekiq.command("clear")
@click.argument("set_name", metavar="SET", type=SetName(queues=True))
@yes_option
@json_option
@click.pass_context
def clear(ctx: click.Context, set_name: str, yes: bool, as_json: bool) -> None:
    """Delete every job of SET (scheduled, retries, dead, or queue:NAME) for good."""
    client = _client(ctx)
    target: api.Queue | api.JobSet
    if set_name.startswith(QUEUE_PREFIX):
        target = api.Queue(client, set_name[len(QUEUE_PREFIX) :])
    else:
        target = _JOB_SETS[set_name](client)
    label = _label(set_name)
    total = target.size()
    if total:
        _confirm(yes, f"Delete all {total} jobs of {label}? There is no undo.")
    removed = target.clear()
    data = {"ok": True, "action": "clear", "set": label, "removed": removed}
    _emit(ctx, as_json, data, f"Deleted {removed} jobs from {label}.")


# -- processes -------------------------------------------------------------------------------


def _chosen_processes(
    client: Client, identity: str | None, every: bool, as_json: bool
) -> list[api.Process]:
    live = list(api.ProcessSet(client))
    if every:
        if not live:
            _fail(as_json, "no live processes")
        return live
    if not identity:
        raise click.UsageError(
            "name a process IDENTITY (see `celery sidekiq processes`) or pass --all"
        )
    exact = [process for process in live if process.identity == identity]
    if exact:
        return exact
    # A unique prefix is enough ("host:1234" for "host:1234:0f3c9a1b2d4e").
    matches = [process for process in live if process.identity.startswith(identity)]
    if len(matches) == 1:
        return matches
    if not matches:
        _fail(as_json, f"no live process {identity!r} (see `celery sidekiq processes`)")
    names = ", ".join(process.identity for process in matches)
    _fail(as_json, f"{identity!r} matches {len(matches)} processes ({names}); give more of it")


def _signal(
    ctx: click.Context, identity: str | None, every: bool, as_json: bool, stop: bool, yes: bool
) -> None:
    chosen = _chosen_processes(_client(ctx), identity, every, as_json)
    word = "stop" if stop else "quiet"
    if stop:
        _confirm(
            yes,
            f"Stop {', '.join(p.identity for p in chosen)}? Running jobs get the shutdown timeout.",
        )
    signalled = []
    for process in chosen:
        try:
            if stop:
                process.stop()
            else:
                process.quiet()
        except ValueError as exc:  # an embedded process ignores signals
            _fail(as_json, str(exc))
        signalled.append(process.identity)
    data = {"ok": True, "action": word, "processes": signalled}
    _emit(
        ctx,
        as_json,
        data,
        "\n".join(f"Asked {name} to {word} (takes effect at its next beat)." for name in signalled),
    )


@sidekiq.command()
@click.argument("identity", required=False)
@click.option("--all", "every", is_flag=True, help="Every live process.")
@json_option
@click.pass_context
def quiet(ctx: click.Context, identity: str | None, every: bool, as_json: bool) -> None:
    """Tell process IDENTITY to stop taking jobs (the Web UI's "Quiet")."""
    _signal(ctx, identity, every, as_json, stop=False, yes=True)


@sidekiq.command()
@click.argument("identity", required=False)
@click.option("--all", "every", is_flag=True, help="Every live process.")
@yes_option
@json_option
@click.pass_context
def stop(ctx: click.Context, identity: str | None, every: bool, yes: bool, as_json: bool) -> None:
    """Tell process IDENTITY to shut down (the Web UI's "Stop")."""
    _signal(ctx, identity, every, as_json, stop=True, yes=yes)
