"""celery-sidekiq against Celery's native Redis transport, in one run: ``make bench``.

    .venv/bin/python bench/run.py            # the full comparison (about 15 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # every section, small counts, one run (< 2 min)
    .venv/bin/python bench/run.py --only drain --pools solo --runs 3 --jobs 5000

Starts its own redis-server (temp dir, no persistence, free port) and real ``celery worker``
processes (``bench/apps/bench_app.py``), and measures:

* drain: jobs/s of one worker emptying a queue of no-op jobs, native ``redis://`` (Celery
  messages) against ``sidekiq://`` (Sidekiq jobs), for ``-P solo``, ``-P prefork -c 2`` and
  ``-P threads -c 8``; and per job: Redis commands (``INFO commandstats``), Redis read events,
  Redis CPU and worker CPU;
* enqueue: ``apply_async`` on both, ``celery_sidekiq.bulk.push_bulk``, ``Client.push_bulk``,
  sidekiq.rb's ``push_bulk`` and a raw pipelined LPUSH;
* scheduled: worker RSS with N jobs due in an hour, and how late jobs run once due;
* pickup: how soon an idle worker on three queues starts a job pushed to any of them, for
  sidekiq.rb, native ``redis://`` and ``sidekiq://``, and what an idle worker costs.

Prints markdown tables (median of ``--runs``, min-max, ratios) and writes every raw figure to
``bench/results/bench-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from bench import drain, enqueue, pickup, report, scheduled
from bench.harness import (
    REPO_ROOT,
    BenchError,
    RedisServer,
    contention,
    machine,
    ruby_available,
    tempdir,
)

#: (full, --quick) defaults of every count.
DEFAULTS = {
    "runs": (5, 1),
    "jobs": (20_000, 2_000),
    "enqueue_jobs": (5_000, 1_000),
    "bulk_jobs": (100_000, 20_000),
    "scheduled_jobs": (100_000, 5_000),
    "lateness_jobs": (2_000, 300),
    "lateness_spread": (5.0, 2.0),
    "pickup_jobs": (400, 60),
}

SECTIONS = ("drain", "enqueue", "scheduled", "pickup")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts and one run (under 2 minutes)"
    )
    parser.add_argument("--runs", type=int, help="runs per throughput figure (default 5; quick 1)")
    parser.add_argument("--jobs", type=int, help="no-op jobs per drain (default 20,000)")
    parser.add_argument(
        "--enqueue-jobs", type=int, help="jobs per one-by-one apply_async run (5,000)"
    )
    parser.add_argument("--bulk-jobs", type=int, help="jobs per bulk enqueue run (100,000)")
    parser.add_argument(
        "--scheduled-jobs", type=int, help="jobs due in an hour for the RSS test (100,000)"
    )
    parser.add_argument("--lateness-jobs", type=int, help="jobs in the lateness test (2,000)")
    parser.add_argument(
        "--lateness-spread", type=float, help="seconds over which those are due (5)"
    )
    parser.add_argument("--pickup-jobs", type=int, help="jobs per worker in the pick-up test (400)")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="setup(poll_interval=) for the scheduled tests (1.0)",
    )
    parser.add_argument(
        "--pools",
        default=",".join(drain.POOLS),
        help=f"drain pools (default {','.join(drain.POOLS)})",
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"sections to run (default {','.join(SECTIONS)})"
    )
    parser.add_argument(
        "--no-ruby", action="store_true", help="leave out sidekiq.rb (push_bulk, pick-up)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON file (default bench/results/bench-<time>.json)"
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the workers' logs and marks")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.pools = [p for p in args.pools.split(",") if p]
    args.only = [s for s in args.only.split(",") if s]
    bad = [p for p in args.pools if p not in drain.POOLS] + [
        s for s in args.only if s not in SECTIONS
    ]
    if bad:
        parser.error(
            f"unknown pools/sections {bad}: "
            f"pools are {list(drain.POOLS)}, sections {list(SECTIONS)}"
        )
    for name in (
        "runs", "jobs", "enqueue_jobs", "bulk_jobs", "scheduled_jobs", "lateness_jobs",
        "pickup_jobs",
    ):  # fmt: skip
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    ruby_sections = {"enqueue", "pickup"} & set(args.only)
    if ruby_sections and not args.no_ruby and not ruby_available():
        parser.error("ruby with sidekiq is missing: run `make deps`, or pass --no-ruby")
    return args


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, port: int, work_dir: Path, raw: dict[str, Any]) -> None:
    if "drain" in args.only:
        raw["drain"] = []
        for number in range(1, args.runs + 1):
            for pool in args.pools:
                for transport in drain.TRANSPORTS:
                    row = drain.run_once(transport, pool, args.jobs, port, work_dir, number)
                    raw["drain"].append({"transport": transport, "pool": pool, **row})
                    progress(
                        f"drain {pool:8} {transport:8} run {number}/{args.runs}: "
                        f"{row['jobs_per_s']:8,.0f} jobs/s, "
                        f"{row['commands_per_job']:.2f} commands/job, "
                        f"{row['reads_per_job']:.2f} reads/job"
                    )
    if "enqueue" in args.only:
        raw["enqueue"] = []
        for number in range(1, args.runs + 1):
            rows = enqueue.run_once(
                port, args.enqueue_jobs, args.bulk_jobs, number, ruby=not args.no_ruby
            )
            raw["enqueue"] += rows
            progress(
                f"enqueue run {number}/{args.runs}: "
                + ", ".join(f"{r['method']} {r['jobs_per_s']:,.0f}/s" for r in rows)
            )
    if "scheduled" in args.only:
        raw["memory"], raw["lateness"] = [], []
        for transport in ("native", "sidekiq"):
            row = scheduled.memory_run(
                transport, port, args.scheduled_jobs, work_dir, args.poll_interval
            )
            raw["memory"].append(row)
            progress(
                f"memory {transport}: RSS +{row['rss_growth_mb']:.1f} MB "
                f"for {row['jobs']:,} scheduled jobs"
            )
        for transport in ("native", "sidekiq"):
            row = scheduled.lateness_run(
                transport,
                port,
                args.lateness_jobs,
                args.lateness_spread,
                work_dir,
                args.poll_interval,
            )
            raw["lateness"].append(row)
            progress(
                f"lateness {transport}: p50 {row['p50_s']:.3f}s "
                f"p99 {row['p99_s']:.3f}s max {row['max_s']:.3f}s"
            )
    if "pickup" in args.only:
        raw["pickup"] = []
        for system in pickup.SYSTEMS:
            if system == "ruby" and args.no_ruby:
                continue
            row = pickup.run_once(system, port, args.pickup_jobs, work_dir, seed=14)
            raw["pickup"].append(row)
            progress(
                f"pickup {system:8}: p50 {row['p50_ms']:.1f} ms p99 {row['p99_ms']:.1f} ms "
                f"max {row['max_ms']:.1f} ms; idle {row['idle_commands_per_s']:.1f} commands/s, "
                f"{row['connections']} connections"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (
        args.out or REPO_ROOT / "bench" / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    work_dir = tempdir("celery-sidekiq-bench-")
    started = time.time()
    config = {k: v for k, v in vars(args).items() if k not in ("out",)}
    failed = None
    with RedisServer() as server:
        client = redis.Redis(port=server.port)
        raw: dict[str, Any] = {"config": config, "machine": machine(client)}
        client.close()
        progress(
            f"redis-server {raw['machine']['redis_server']} on port {server.port}; "
            f"logs in {work_dir}"
        )
        try:
            run(args, server.port, work_dir, raw)
        except (BenchError, KeyboardInterrupt) as exc:
            failed = f"{type(exc).__name__}: {exc}"
    raw["seconds"] = time.time() - started
    raw["machine"]["at_end"] = contention()
    raw["summary"] = report.summarize(raw)
    if failed:
        raw["error"] = failed
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    if failed:
        progress(f"bench FAILED: {failed}\nraw figures so far: {out}\nlogs: {work_dir}")
        return 1
    print(f"## celery-sidekiq benchmark\n\n{report.describe(raw)}\n")
    print(report.tables(raw, raw["summary"]))
    print(f"\nraw figures: {out}")
    if not args.keep_logs:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
