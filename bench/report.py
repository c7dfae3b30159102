"""Figures -> summaries (median, min, max) and the markdown tables ``run.py`` prints."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from bench.drain import POOLS
from bench.enqueue import METHODS
from bench.pickup import INTERVAL, SYSTEMS


def summary(values: Iterable[float]) -> dict[str, float]:
    data = list(values)
    return {
        "median": statistics.median(data),
        "min": min(data),
        "max": max(data),
        "runs": len(data),
    }


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Medians (min/max) of every throughput and per-job cost, by section."""
    out: dict[str, Any] = {}
    drain: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in raw.get("drain", []):
        key = (row["pool"], row["transport"])
        drain.setdefault(key, []).append(row)
    out["drain"] = [
        {
            "pool": pool,
            "transport": transport,
            **{
                name: summary(row[name] for row in rows)
                for name in (
                    "jobs_per_s",
                    "commands_per_job",
                    "reads_per_job",
                    "redis_cpu_us_per_job",
                    "worker_cpu_us_per_job",
                )
            },
        }
        for (pool, transport), rows in drain.items()
    ]
    enqueue: dict[str, list[dict[str, Any]]] = {}
    for row in raw.get("enqueue", []):
        enqueue.setdefault(row["method"], []).append(row)
    out["enqueue"] = [
        {
            "method": method,
            "jobs": rows[0]["jobs"],
            "jobs_per_s": summary(r["jobs_per_s"] for r in rows),
        }
        for method, rows in enqueue.items()
    ]
    return out


def describe(raw: dict[str, Any]) -> str:
    """The machine, the versions and the conditions of a run, in one paragraph."""
    m = raw["machine"]
    versions = ", ".join(
        f"{name} {m[key]}"
        for name, key in [
            ("Redis", "redis_server"),
            ("Python", "python"),
            ("celery", "celery"),
            ("kombu", "kombu"),
            ("redis-py", "redis_py"),
            ("hiredis", "hiredis"),
            ("Ruby", "ruby"),
            ("sidekiq.rb", "sidekiq_rb"),
        ]
    )
    changes = " with local changes" if m["dirty"] else ""
    return (
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, {m['os']}; {versions}; "
        f"commit {m['commit']}{changes}; {raw['seconds'] / 60:.1f} minutes; "
        f"load average {_busy(m['at_start'])} at the start, {_busy(m['at_end'])} at the end."
    )


def _busy(sample: dict[str, Any]) -> str:
    pressure = sample.get("cpu_pressure_avg60")
    waiting = f", CPU pressure {pressure:.0f}%" if pressure is not None else ""
    return f"{sample['loadavg_1m']:.2f}{waiting}"


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _spread(s: dict[str, float], digits: int = 0) -> str:
    return f"{_n(s['median'], digits)} ({_n(s['min'], digits)}-{_n(s['max'], digits)})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], right: int = 1) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i < right else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _drain_by(summary_: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["pool"], row["transport"]): row for row in summary_.get("drain", [])}


def tables(raw: dict[str, Any], summary_: dict[str, Any]) -> str:
    config = raw["config"]
    parts = []
    drain = _drain_by(summary_)
    if drain:
        rows = []
        for pool, (name, concurrency) in POOLS.items():
            native, ours = drain.get((pool, "native")), drain.get((pool, "sidekiq"))
            if not (native or ours):
                continue
            rows.append(
                [
                    f"`-P {name}`" if name == "solo" else f"`-P {name} -c {concurrency}`",
                    _spread(native["jobs_per_s"]) if native else "n/a",
                    _spread(ours["jobs_per_s"]) if ours else "n/a",
                    _ratio(
                        ours["jobs_per_s"]["median"] if ours else None,
                        native["jobs_per_s"]["median"] if native else None,
                    ),
                ]
            )
        parts.append(
            f"### Drain: {config['jobs']:,} no-op jobs, jobs/s, "
            f"median of {config['runs']} (min-max)\n\n"
            + _table(["pool", "native redis://", "sidekiq://", "ratio"], rows)
        )
        parts.append(
            "### Cost per processed job during the drain (medians)\n\n"
            "Redis commands from `INFO commandstats` (a script call counts once, plus every "
            "command it runs); reads = read events Redis processed (≈ round trips).\n\n"
            + _table(
                [
                    "pool",
                    "transport",
                    "Redis commands",
                    "Redis reads",
                    "Redis CPU µs",
                    "worker CPU µs",
                ],
                (
                    [
                        f"`{pool}`",
                        transport,
                        _n(row["commands_per_job"]["median"], 2),
                        _n(row["reads_per_job"]["median"], 2),
                        _n(row["redis_cpu_us_per_job"]["median"]),
                        _n(row["worker_cpu_us_per_job"]["median"]),
                    ]
                    for pool in POOLS
                    for transport in ("native", "sidekiq")
                    if (row := drain.get((pool, transport)))
                ),
                right=2,
            )
        )
    enqueue = {row["method"]: row for row in summary_.get("enqueue", [])}
    if enqueue:
        native = enqueue.get("native_apply_async")
        base = native["jobs_per_s"]["median"] if native else None
        parts.append(
            f"### Enqueue: jobs/s, median of {config['runs']} (min-max)\n\n"
            + _table(
                ["method", "jobs", "jobs/s", "vs native apply_async"],
                (
                    [
                        label,
                        _n(row["jobs"]),
                        _spread(row["jobs_per_s"]),
                        _ratio(row["jobs_per_s"]["median"], base),
                    ]
                    for key, label, _ in METHODS
                    if (row := enqueue.get(key))
                ),
            )
        )
    memory = raw.get("memory", [])
    if memory:
        parts.append(
            f"### {memory[0]['jobs']:,} scheduled jobs (due in an hour): "
            "worker RSS (main process, `-P solo`)\n\n"
            + _table(
                [
                    "transport",
                    "RSS before MB",
                    "RSS after MB",
                    "growth MB",
                    "s until the worker held them",
                ],
                (
                    [
                        row["transport"],
                        _n(row["rss_before_kb"] / 1024, 1),
                        _n(row["rss_after_kb"] / 1024, 1),
                        _n(row["rss_growth_mb"], 1),
                        _n(row["seconds_to_take"], 1)
                        if row["seconds_to_take"] is not None
                        else "never (they wait in `schedule`)",
                    ]
                    for row in memory
                ),
            )
        )
    late = raw.get("lateness", [])
    if late:
        parts.append(
            f"### Lateness of {late[0]['jobs']:,} jobs due over {late[0]['spread_s']:g} s "
            f"(poll interval {late[0]['poll_interval_s']:g} s, `-P solo`)\n\n"
            "Promoted: due -> moved to its queue by the poller (the job's `enqueued_at`). "
            "Ran: due -> running, which adds the worker's backlog of jobs promoted together.\n\n"
            + _table(
                [
                    "transport",
                    "promoted p50 / p99 s",
                    "ran p50 / p99 / max s",
                    "p99 / poll interval",
                ],
                (
                    [
                        row["transport"],
                        f"{_n(row['promotion_p50_s'], 3)} / {_n(row['promotion_p99_s'], 3)}"
                        if row["promotion_p99_s"] is not None
                        else "n/a (an in-memory timer)",
                        f"{_n(row['p50_s'], 3)} / {_n(row['p99_s'], 3)} / {_n(row['max_s'], 3)}",
                        f"promoted {_poll_ratio(row, 'promotion_p99_s')}, "
                        f"ran {_poll_ratio(row, 'p99_s')}",
                    ]
                    for row in late
                ),
            )
        )
    picked = raw.get("pickup", [])
    if picked:
        parts.append(
            f"### Pick-up: an idle worker on 3 queues, {picked[0]['jobs']:,} jobs one at a time "
            f"to random queues, {INTERVAL[0]:g}-{INTERVAL[1]:g} s apart\n\n"
            "Push to start, in ms (the push's round trip included); idle cost: Redis commands "
            "per second and connections of the idle worker (heartbeat and poller included).\n\n"
            + _table(
                ["worker", "p50 ms", "p99 ms", "max ms", "idle commands/s", "connections"],
                (
                    [
                        SYSTEMS[row["system"]],
                        _n(row["p50_ms"], 1),
                        _n(row["p99_ms"], 1),
                        _n(row["max_ms"], 1),
                        _n(row["idle_commands_per_s"], 1),
                        str(row["connections"]),
                    ]
                    for row in picked
                ),
            )
        )
    parts.append(
        "### Targets (issues 7 and 14)\n\n"
        + _table(["target", "measured", "met"], targets(raw, summary_))
    )
    return "\n\n".join(parts)


def targets(raw: dict[str, Any], summary_: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    drain = _drain_by(summary_)
    for pool in POOLS:
        native, ours = drain.get((pool, "native")), drain.get((pool, "sidekiq"))
        if native and ours:
            ratio = ours["jobs_per_s"]["median"] / native["jobs_per_s"]["median"]
            rows.append(
                [f"drain `{pool}` ≥ 1.5x native (moonshot 2x)", f"{ratio:.2f}x", _yes(ratio >= 1.5)]
            )
        if ours:
            cmds = ours["commands_per_job"]["median"]
            rows.append([f"`{pool}`: ≤ 1.0 Redis command per job", _n(cmds, 3), _yes(cmds <= 1.0)])
    enqueue = {row["method"]: row["jobs_per_s"]["median"] for row in summary_.get("enqueue", [])}
    if "native_apply_async" in enqueue and "sidekiq_apply_async" in enqueue:
        ratio = enqueue["sidekiq_apply_async"] / enqueue["native_apply_async"]
        rows.append(["apply_async ≥ 1.5x native", f"{ratio:.2f}x", _yes(ratio >= 1.5)])
    if "sidekiq_push_bulk" in enqueue and "ruby_push_bulk" in enqueue:
        ratio = enqueue["sidekiq_push_bulk"] / enqueue["ruby_push_bulk"]
        rows.append(["push_bulk ≥ sidekiq.rb push_bulk", f"{ratio:.2f}x", _yes(ratio >= 1.0)])
    for row in raw.get("memory", []):
        if row["transport"] == "sidekiq":
            rows.append(
                [
                    f"RSS growth ≤ 10 MB for {row['jobs']:,} scheduled jobs",
                    f"{row['rss_growth_mb']:.1f} MB",
                    _yes(row["rss_growth_mb"] <= 10),
                ]
            )
    for row in raw.get("lateness", []):
        if row["transport"] == "sidekiq":
            ratio = row["promotion_p99_s"] / row["poll_interval_s"]
            rows.append(
                ["promotion lateness p99 ≤ 2x poll interval", f"{ratio:.2f}x", _yes(ratio <= 2)]
            )
    picked = {row["system"]: row for row in raw.get("pickup", [])}
    if "sidekiq" in picked:
        p99 = picked["sidekiq"]["p99_ms"]
        rows.append(["pick-up p99 ≤ 10 ms (`sidekiq://`)", f"{p99:.1f} ms", _yes(p99 <= 10)])
        if "ruby" in picked:
            gap = p99 - picked["ruby"]["p99_ms"]
            rows.append(
                ["pick-up p99 within 5 ms of sidekiq.rb's", f"{gap:+.1f} ms", _yes(gap <= 5)]
            )
    return rows


def _poll_ratio(row: dict[str, Any], key: str) -> str:
    return "n/a" if row.get(key) is None else f"{row[key] / row['poll_interval_s']:.2f}x"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"
