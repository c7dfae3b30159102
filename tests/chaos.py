"""The chaos soak: producers, workers, the scheduled poller and beat run for a while behind a
fault proxy while faults hit them on a random (seeded, logged) schedule; at the end every job
is accounted for.

    make chaos CHAOS_ARGS="--minutes 10"
    .venv/bin/python tests/chaos.py --seconds 60 --seed 7 --workdir /tmp/chaos

What runs (all real processes, all through the proxy in front of a private redis-server with
``appendonly yes`` and ``appendfsync always``):

- Python producers (``python tests/chaos.py produce``): ``apply_async`` of ``Chaos::Work``,
  some with a countdown (the scheduled set and its poller);
- a Ruby producer (``tests/ruby/chaos_producer.rb``: ``Sidekiq::Client.push``), if sidekiq.rb
  is installed;
- three workers, ``-P solo``, ``-P prefork -c 2`` and ``-P threads -c 4``, each with the
  in-worker scheduled poller, on ``tests/apps/chaos_app.py`` (each run recorded straight into
  Redis, past the proxy);
- ``celery beat -S sidekiq``, a job every second.

Faults, one every ``--fault-every`` seconds on average, each kind once per shuffled round: the
proxy drops a reply, delays replies, stalls, cuts every connection or the one sending a
matching command; ``CLIENT KILL``, ``CLIENT PAUSE ... WRITE``, ``DEBUG SLEEP``; Redis
restarted with SIGTERM or SIGKILL; ``kill -9`` of a random worker (started again a moment
later).

At the end: the producers stop, the faults stop, the queues drain, the workers get SIGTERM.
Every job a producer was told was written (and every fire beat logged) must have run; a job
that ran twice is allowed only if one of its earlier runs was in a worker that was killed;
one that ran again within 2 s of a lost broker connection is counted apart, as the known limit
it is (docs/RELIABILITY.md: a job Celery had reserved, not yet handed to its pool, goes back to
its queue and the pool may still run it), and the run still passes; a worker that exited other than by our kill is a failure. A push that raised is "uncertain":
it may or may not run. The summary is printed and written to ``<workdir>/summary.json``; the
exit status is 0 only if nothing was lost, wedged or run twice without a reason.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import redis  # noqa: E402
from redis.backoff import ExponentialBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402
from support.faultproxy import FaultProxy  # noqa: E402
from support.procs import REPO_ROOT, kill_group, tail, terminate  # noqa: E402
from support.recorded import inflight  # noqa: E402
from support.redis_server import RedisServer  # noqa: E402
from support.ruby import RUBY_DIR, ruby_available, ruby_env  # noqa: E402
from support.worker import APPS_DIR, CeleryWorker  # noqa: E402

logger = logging.getLogger("chaos")

RUNS = "chaos:runs"  # chaos_app records each run there

REDIS_ARGS = [
    "--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "local",
]  # fmt: skip

#: Every client gives up on a reply after 5 s (a dropped reply would hang it forever), and
#: kombu's BRPOP health check gives up on a fetch 3 s overdue.
TRANSPORT = {"polling_interval": 1, "health_check_interval": 2, "socket_timeout": 5}

#: Workers: a dead one's jobs come back within the lease and a recovery interval.
SETUP = {"poll_interval": 0.5, "fetch_lease": 10}

POOLS = [("solo", "solo", 1), ("prefork", "prefork", 2), ("threads", "threads", 4)]

FAULTS = (
    "drop",
    "delay",
    "stall",
    "cut",
    "cut_on",
    "client_kill",
    "client_pause",
    "debug_sleep",
    "restart_term",
    "restart_kill",
    "kill_worker",
)

#: What a drop or a cut_on picks its command from.
PATTERNS = [
    r"EVALSHA\b",  # fetch, settle, recovery, promotion, periodic claims
    r"(LPUSH|SADD|ZADD|HSET|SET|MULTI|EXEC)\b",  # producers, heartbeat, leases
    r"BRPOPLPUSH\b",  # an idle worker's wait
    None,  # the next command of anybody
]


# -- processes -------------------------------------------------------------------------------


class Worker(CeleryWorker):
    """A chaos worker: started without waiting (restarts happen mid-fault), one label per
    incarnation, so each run names the process that ran it."""

    def __init__(self, name: str, pool: str, concurrency: int, broker: str, record: str, log: Path):
        super().__init__(
            broker,
            log,
            app_module="chaos_app",
            pool=pool,
            concurrency=concurrency,
            name=name,
            env={
                "RECORD_URL": record,
                "TRANSPORT_OPTIONS": json.dumps(TRANSPORT),
                "SIDEKIQ_SETUP": json.dumps(SETUP),
            },
        )
        self.incarnation = 0
        self.killed: set[str] = set()  # labels of incarnations we killed
        self.expected_exit = False

    @property
    def label(self) -> str:
        return f"{self.name}#{self.incarnation}"

    def spawn(self) -> None:
        self.incarnation += 1
        self.extra_env["CHAOS_WORKER"] = self.label
        self.expected_exit = False
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== chaos: starting {self.label} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.app_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        self.expected_exit = True
        self.killed.add(self.label)
        self.kill9()


class Child:
    """A producer or beat: a subprocess with its output in a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], out: Path) -> None:
        self.name, self.argv, self.env, self.out = name, argv, env, out
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected_exit = False

    def start(self) -> Child:
        with open(self.out, "ab") as out, open(self.out.with_suffix(".err"), "ab") as err:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                cwd=APPS_DIR,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if self.name == "beat" else err,  # beat logs to stderr
                start_new_session=True,
            )
        return self

    def stop(self, timeout: float = 20) -> int | None:
        self.expected_exit = True
        if self.proc is None:
            return None
        return terminate(self.proc, signal.SIGTERM, timeout)


def pythonpath() -> str:
    return os.pathsep.join([str(APPS_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Options:
    seconds: float = 60.0
    seed: int = 1
    rate: float = 150.0  # jobs/s over all producers
    fault_every: float = 3.0
    workdir: Path | None = None
    ruby: bool = True
    beat: bool = True
    faults: tuple[str, ...] = FAULTS
    drain_timeout: float = 90.0
    producers: int = 2
    verbose: bool = True


@dataclass
class Summary:
    ok: bool = False
    seed: int = 0
    duration: float = 0.0
    jobs: int = 0  # pushes each producer was told succeeded, plus beat's logged fires
    jobs_by_source: dict[str, int] = field(default_factory=dict)
    countdown_jobs: int = 0
    runs: int = 0
    ran: int = 0  # distinct job ids that ran
    lost: int = 0
    lost_ids: list[str] = field(default_factory=list)
    duplicates: int = 0  # job ids that ran more than once
    duplicates_after_kill: int = 0
    #: Known limit (docs/RELIABILITY.md): a job Celery had reserved but not yet handed to its
    #: pool when the broker connection broke went back to its queue, and the pool still ran it.
    duplicates_after_connection_loss: int = 0
    duplicates_unexplained: int = 0
    unexplained_by_gap: dict[str, int] = field(default_factory=dict)
    unexplained: list[dict[str, Any]] = field(default_factory=list)
    uncertain: int = 0  # pushes that raised
    uncertain_ran: int = 0
    unknown_ran: int = 0  # ran, but nobody said it was sent (a raised push, a beat fire)
    faults: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    leftovers: dict[str, int] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)
    workdir: str = ""
    problems: list[str] = field(default_factory=list)

    def text(self) -> str:
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items()))
        lines = [
            f"chaos: {'OK' if self.ok else 'FAILED'} (seed {self.seed}, {self.duration:.0f} s, "
            f"{self.jobs / max(self.duration, 1):.0f} jobs/s)",
            f"  jobs      {self.jobs} sent {self.jobs_by_source} ({self.countdown_jobs} with a "
            f"countdown); {self.runs} runs of {self.ran} distinct jobs",
            f"  lost      {self.lost} {self.lost_ids[:10]}",
            f"  twice     {self.duplicates} jobs ran more than once: {self.duplicates_after_kill} "
            f"after a worker was killed (allowed), {self.duplicates_after_connection_loss} "
            "within 2 s of a lost connection (the known limit), "
            f"{self.duplicates_unexplained} unexplained "
            f"{self.unexplained_by_gap or ''}",
            f"  uncertain {self.uncertain} pushes raised ({self.uncertain_ran} of them ran); "
            f"{self.unknown_ran} unannounced jobs ran",
            f"  faults    {sum(self.faults.values())}: {faults}",
            f"  exits     {self.kills} workers killed -9 (restarted); "
            f"{len(self.unexpected_exits)} unexpected {self.unexpected_exits}",
            f"  leftovers {self.leftovers}",
            f"  logs      {self.workdir}",
        ]
        lines += [f"  problem   {problem}" for problem in self.problems]
        for dup in self.unexplained[:10]:
            lines.append(f"  unexplained duplicate {json.dumps(dup)}")
        return "\n".join(lines)


class Chaos:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.rng = random.Random(options.seed)
        self.workdir = Path(options.workdir or tempfile.mkdtemp(prefix="chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server = RedisServer(extra_args=REDIS_ARGS, startup_timeout=120)
        self.proxy: FaultProxy | None = None
        self.workers: list[Worker] = []
        self.producers: list[Child] = []
        self.beat: Child | None = None
        self.faults: collections.Counter[str] = collections.Counter()
        self.fault_log = open(self.workdir / "faults.log", "a")  # noqa: SIM115
        self.unexpected: list[str] = []
        self.stop_faults = threading.Event()
        self.stop_watch = threading.Event()
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.wall0 = time.time()  # the same instant, for the runs' time.time() stamps
        self.events: list[tuple[float, str]] = []  # (seconds since the start, fault)
        self.timers: list[threading.Timer] = []

    # -- logging -------------------------------------------------------------------------

    def log(self, message: str) -> None:
        at = time.monotonic() - self.started
        line = f"{time.strftime('%H:%M:%S')} +{at:6.1f}s {message}"
        if message.startswith("fault "):
            self.events.append((at, message.split(":")[0][6:120]))
        with self.lock:
            self.fault_log.write(line + "\n")
            self.fault_log.flush()
        if self.o.verbose:
            print(line, flush=True)

    def direct(self) -> redis.Redis:
        """A client of the real Redis that rides out restarts and CLIENT KILL."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.server.port,
            socket_timeout=10,
            socket_connect_timeout=2,
            retry=Retry(ExponentialBackoff(cap=1, base=0.05), 20),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )

    # -- setup -------------------------------------------------------------------------------

    def start(self) -> None:
        self.server.dir = self.workdir / "redis"
        self.server.dir.mkdir(exist_ok=True)
        self.server.logfile = self.workdir / "redis.log"
        self.server.start()
        self.proxy = FaultProxy(self.server.port).start()
        broker = self.proxy.url("sidekiq")
        self.log(f"redis 127.0.0.1:{self.server.port}, proxy {broker}, workdir {self.workdir}")
        for name, pool, concurrency in POOLS:
            worker = Worker(
                name, pool, concurrency, broker, self.server.url, self.workdir / f"{name}.log"
            )
            self.workers.append(worker)
            worker.spawn()
        deadline = time.monotonic() + 90
        for worker in self.workers:
            while b" ready." not in worker.log_path.read_bytes():
                if not worker.running or time.monotonic() > deadline:
                    raise RuntimeError(f"worker {worker.name} did not start:\n{worker.log_tail()}")
                time.sleep(0.1)
        env = {
            "PYTHONPATH": pythonpath(),
            "BROKER_URL": broker,
            "RECORD_URL": self.server.url,
            "TRANSPORT_OPTIONS": json.dumps(TRANSPORT),
            "PYTHONUNBUFFERED": "1",
        }
        if self.o.beat:
            beat_argv = [sys.executable, "-m", "celery", "-A", "chaos_app", "beat", "-S", "sidekiq"]
            beat_argv += ["--loglevel=INFO", "-s", str(self.workdir / "beat.schedule")]
            self.beat = Child(
                "beat", beat_argv, {**env, "CHAOS_BEAT": "1"}, self.workdir / "beat.log"
            ).start()
        rate = self.o.rate
        if self.o.ruby and ruby_available("6"):
            ruby_rate = rate / (self.o.producers + 1)
            rate -= ruby_rate
            self.producers.append(
                Child(
                    "ruby",
                    ["ruby", str(RUBY_DIR / "chaos_producer.rb")],
                    {
                        **ruby_env("6"),
                        "REDIS_URL": self.proxy.url("redis"),
                        "CHAOS_RATE": str(ruby_rate),
                        "CHAOS_SEED": str(self.o.seed),
                    },
                    self.workdir / "producer-ruby.out",
                ).start()
            )
        elif self.o.ruby:
            self.log("sidekiq.rb is not installed: no Ruby producer")
        for n in range(self.o.producers):
            argv = [sys.executable, str(Path(__file__).resolve()), "produce"]
            argv += ["--rate", str(rate / self.o.producers), "--seed", str(self.o.seed * 100 + n)]
            argv += ["--source", f"py{n}"]
            out = self.workdir / f"producer-py{n}.out"
            self.producers.append(Child(f"py{n}", argv, env, out).start())
        self.log(
            f"started {len(self.workers)} workers, {len(self.producers)} producers"
            f"{', beat' if self.beat else ''}"
        )

    # -- faults ------------------------------------------------------------------------------

    def fault_schedule(self) -> Iterator[str]:
        while True:
            round_ = list(self.o.faults)
            self.rng.shuffle(round_)
            yield from round_

    def run_faults(self) -> None:
        kinds = self.fault_schedule()
        while not self.stop_faults.wait(self.rng.uniform(0.5, 1.5) * self.o.fault_every):
            kind = next(kinds)
            try:
                self.inject(kind)
            except Exception as exc:
                self.log(f"fault {kind} failed: {type(exc).__name__}: {exc}")

    def inject(self, kind: str) -> None:
        proxy, rng = self.proxy, self.rng
        assert proxy is not None
        self.faults[kind] += 1
        if kind == "drop":
            pattern = rng.choice(PATTERNS)
            rule = proxy.drop_reply(pattern)
            fired = rule.wait(5)
            proxy.remove(rule)
            self.log(f"fault drop reply of {pattern or 'any command'}: {rule.commands[:1]}")
            if not fired:
                self.faults["drop (no match)"] += 1
        elif kind == "delay":
            ms, seconds = rng.uniform(200, 2500), rng.uniform(1, 5)
            self.log(f"fault delay every reply {ms:.0f} ms for {seconds:.1f} s")
            with proxy.delaying(ms):
                time.sleep(seconds)
        elif kind == "stall":
            seconds = rng.uniform(0.5, 4)
            self.log(f"fault stall every reply for {seconds:.1f} s")
            with proxy.stalled():
                time.sleep(seconds)
        elif kind == "cut":
            self.log(f"fault cut every connection: {proxy.cut()}")
        elif kind == "cut_on":
            pattern, when = rng.choice(PATTERNS), rng.choice(["before", "partial", "after"])
            rule = proxy.cut_on(pattern, when=when)  # type: ignore[arg-type]
            fired = rule.wait(5)
            proxy.remove(rule)
            self.log(f"fault cut {when} {pattern or 'any command'}: {rule.commands[:1]}")
            if not fired:
                self.faults["cut_on (no match)"] += 1
        elif kind == "client_kill":
            with self.direct() as conn:
                killed = conn.execute_command("CLIENT", "KILL", "TYPE", "normal")
            self.log(f"fault CLIENT KILL TYPE normal: {killed}")
        elif kind == "client_pause":
            ms = rng.randint(500, 3000)
            self.log(f"fault CLIENT PAUSE {ms} WRITE")
            with self.direct() as conn:
                conn.execute_command("CLIENT", "PAUSE", str(ms), "WRITE")
            time.sleep(ms / 1000)
        elif kind == "debug_sleep":
            seconds = round(rng.uniform(0.5, 3), 1)
            self.log(f"fault DEBUG SLEEP {seconds}")
            with self.direct() as conn:
                conn.execute_command("DEBUG", "SLEEP", str(seconds))
        elif kind in ("restart_term", "restart_kill"):
            self.log(f"fault redis restart ({'SIGTERM' if kind == 'restart_term' else 'SIGKILL'})")
            started = time.monotonic()
            if kind == "restart_term":
                self.server.restart()
            else:
                assert self.server.proc is not None
                self.server.proc.kill()
                self.server.proc.wait(10)
                self.server.proc = None
                self.server.start()
            self.log(f"  redis back after {time.monotonic() - started:.1f} s")
        elif kind == "kill_worker":
            running = [w for w in self.workers if w.running]
            if not running:
                return
            worker = rng.choice(running)
            label = worker.label
            worker.kill()
            delay = rng.uniform(1, 3)
            self.log(f"fault kill -9 {label} (pid {worker.pid}); restart in {delay:.1f} s")
            timer = threading.Timer(delay, self.restart_worker, (worker,))
            timer.daemon = True
            self.timers.append(timer)
            timer.start()
        else:
            raise ValueError(f"unknown fault {kind!r}")

    def restart_worker(self, worker: Worker) -> None:
        with self.lock:
            if worker.running:
                return
            worker.spawn()
        self.log(f"restarted {worker.label} (pid {worker.pid})")

    # -- watching ----------------------------------------------------------------------------

    def watch(self) -> None:
        """Every worker, producer and beat must stay up unless we stopped it."""
        last_progress = time.monotonic()
        while not self.stop_watch.wait(0.5):
            for worker in self.workers:
                with self.lock:
                    if worker.proc is None or worker.running or worker.expected_exit:
                        continue
                    code = worker.proc.returncode
                    what = f"worker {worker.label} exited with {code}"
                    self.unexpected.append(what)
                    worker.expected_exit = True
                self.log(f"UNEXPECTED {what}:\n{worker.log_tail(30)}")
                self.restart_worker(worker)
            for child in [*self.producers, *([self.beat] if self.beat else [])]:
                if child.proc is None or child.expected_exit or child.proc.poll() is None:
                    continue
                what = f"{child.name} exited with {child.proc.returncode}"
                self.unexpected.append(what)
                self.log(f"UNEXPECTED {what}: {tail(child.out, 20)}")
                child.expected_exit = True
                if child.name == "beat":
                    child.start()
                    child.expected_exit = False
            if time.monotonic() - last_progress >= 10:
                last_progress = time.monotonic()
                with contextlib.suppress(redis.RedisError), self.direct() as conn:
                    self.log(
                        f"progress: {conn.hlen(RUNS)} runs, {conn.llen('queue:default')} "
                        f"queued, {conn.zcard('schedule')} scheduled, {inflight(conn)} in flight, "
                        f"{sum(self.faults.values())} faults"
                    )

    # -- the end -----------------------------------------------------------------------------

    def sent(self) -> tuple[dict[str, set[str]], set[str], int]:
        """What producers were told was written (by source), what raised, and how many had a
        countdown."""
        sure: dict[str, set[str]] = collections.defaultdict(set)
        uncertain: set[str] = set()
        countdown = 0
        for child in self.producers:
            for line in child.out.read_text(errors="replace").splitlines():
                parts = line.split(" ", 2)
                if len(parts) >= 2 and parts[0] in ("ok", "okc"):
                    sure[child.name].add(parts[1])
                    countdown += parts[0] == "okc"
                elif len(parts) >= 2 and parts[0] == "err":
                    uncertain.add(parts[1])
        if self.beat is not None:
            text = self.beat.out.read_text(errors="replace")
            sure["beat"] = set(re.findall(r"beat: enqueued .* jid (\w+)", text))
        return sure, uncertain, countdown

    def drain(self, expected: set[str]) -> dict[str, int]:
        deadline = time.monotonic() + self.o.drain_timeout
        with self.direct() as conn:
            while True:
                ran = {json.loads(v)["id"] for v in conn.hvals(RUNS)}
                left = {
                    "missing": len(expected - ran),
                    "queued": int(conn.llen("queue:default")),
                    "scheduled": int(conn.zcard("schedule")),
                    "retry": int(conn.zcard("retry")),
                    "dead": int(conn.zcard("dead")),
                    "in_flight": inflight(conn),
                }
                if not any(left.values()) or time.monotonic() > deadline:
                    return left
                time.sleep(0.5)

    def run(self) -> Summary:
        summary = Summary(seed=self.o.seed, workdir=str(self.workdir))
        threads = [
            threading.Thread(target=self.run_faults, name="faults", daemon=True),
            threading.Thread(target=self.watch, name="watch", daemon=True),
        ]
        try:
            self.start()
            chaos_began = time.monotonic()
            for thread in threads:
                thread.start()
            self.stop_faults.wait(self.o.seconds)
            self.log("chaos over: stopping faults and producers")
            self.stop_faults.set()
            threads[0].join(60)
            assert self.proxy is not None
            self.proxy.clear()
            if not self.server.running:
                self.server.start()
            for timer in self.timers:
                timer.join()
            for child in [*self.producers, *([self.beat] if self.beat else [])]:
                code = child.stop()
                if code not in (0, None):
                    summary.problems.append(f"{child.name} stopped with exit code {code}")
            duration = time.monotonic() - chaos_began
            sure, uncertain, countdown = self.sent()
            expected = set().union(*sure.values()) if sure else set()
            self.log(f"draining {len(expected)} jobs")
            left = self.drain(expected)
            time.sleep(3)  # a late redelivery would show up now
            self.stop_watch.set()
            threads[1].join(10)
            for worker in self.workers:
                worker.expected_exit = True
                code = worker.stop(signal.SIGTERM, timeout=30)
                if code != 0:
                    self.unexpected.append(f"worker {worker.label} stopped with exit code {code}")
            with self.direct() as conn:
                runs = collections.defaultdict(list)
                for value in conn.hvals(RUNS):
                    run = json.loads(value)
                    runs[run["id"]].append(run)
                left["in_flight"] = inflight(conn)
                left["queued"] = int(conn.llen("queue:default"))
            self.account(summary, sure, uncertain, countdown, runs, left, duration)
        finally:
            self.stop_faults.set()
            self.stop_watch.set()
            self.close()
        summary.problems += [f"unexpected exit: {what}" for what in self.unexpected]
        summary.unexpected_exits = list(self.unexpected)
        summary.ok = not (
            summary.lost
            or summary.duplicates_unexplained
            or summary.unexpected_exits
            or any(summary.leftovers.values())
            or summary.problems
        )
        (self.workdir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
        return summary

    def _connection_lost_near(self, at: float) -> bool:
        """A fault that breaks workers' connections (a cut, CLIENT KILL, a Redis restart)
        came within 2 s before ``at`` (seconds since the start)."""
        breaks = ("cut", "CLIENT KILL", "redis restart")
        return any(
            at - 2 <= when <= at + 0.5 and what.startswith(breaks) for when, what in self.events
        )

    def account(
        self,
        summary: Summary,
        sure: dict[str, set[str]],
        uncertain: set[str],
        countdown: int,
        runs: dict[str, list[dict[str, Any]]],
        left: dict[str, int],
        duration: float,
    ) -> None:
        expected = set().union(*sure.values()) if sure else set()
        killed = {label for worker in self.workers for label in worker.killed}
        summary.duration = duration
        summary.jobs = len(expected)
        summary.jobs_by_source = {name: len(ids) for name, ids in sorted(sure.items())}
        summary.countdown_jobs = countdown
        summary.runs = sum(len(r) for r in runs.values())
        summary.ran = len(runs)
        lost = sorted(expected - set(runs))
        summary.lost, summary.lost_ids = len(lost), lost[:50]
        summary.uncertain = len(uncertain)
        summary.uncertain_ran = len(uncertain & set(runs))
        summary.unknown_ran = len(set(runs) - expected - uncertain)
        for job_id, job_runs in runs.items():
            if len(job_runs) < 2:
                continue
            summary.duplicates += 1
            job_runs.sort(key=lambda run: run["t"])
            if any(run["worker"] in killed for run in job_runs[:-1]):
                summary.duplicates_after_kill += 1
                continue
            gap = job_runs[1]["t"] - job_runs[0]["t"]
            if gap < 2 and self._connection_lost_near(job_runs[0]["t"] - self.wall0):
                summary.duplicates_after_connection_loss += 1
                continue
            summary.duplicates_unexplained += 1
            if gap < 2:
                why = "again within 2 s (put back while it ran?)"
            elif gap >= SETUP["fetch_lease"] * 0.75:
                why = "again after about a lease (its ack lost, recovered?)"
            else:
                why = "again after 2 s to 3/4 of a lease"
            by_gap = summary.unexplained_by_gap
            by_gap[why] = by_gap.get(why, 0) + 1
            if len(summary.unexplained) < 50:
                summary.unexplained.append(
                    {
                        "id": job_id,
                        "source": job_runs[0]["source"],
                        "runs": [
                            f"{run['worker']} pid {run['pid']} at +{run['t'] - self.wall0:.2f}s"
                            for run in job_runs
                        ],
                        "faults_before": [
                            f"+{at:.1f}s {what}"
                            for at, what in self.events
                            if at <= job_runs[-1]["t"] - self.wall0
                        ][-2:],
                    }
                )
        summary.faults = dict(self.faults)
        summary.kills = len(killed)
        summary.leftovers = {key: value for key, value in left.items() if key != "missing"}
        if self.proxy is not None:
            counters = asdict(self.proxy.counters)
            counters.pop("by_command")
            summary.proxy = counters

    def close(self) -> None:
        for child in [*self.producers, *([self.beat] if self.beat else [])]:
            if child.proc is not None:
                kill_group(child.proc)
        for worker in self.workers:
            if worker.proc is not None:
                kill_group(worker.proc)
        if self.proxy is not None:
            self.proxy.stop()
        self.server.stop()
        self.fault_log.close()


# -- the Python producer -----------------------------------------------------------------------


def produce(rate: float, seed: int, source: str) -> None:
    """``apply_async`` at ``rate`` jobs/s until SIGTERM; one line per job on stdout: ``ok
    <id>`` (``okc`` with a countdown), or ``err <id> <error>`` for a publish that raised."""
    sys.path.insert(0, str(APPS_DIR))
    chaos_app = importlib.import_module("chaos_app")  # reads BROKER_URL, set by the runner

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    rng = random.Random(seed)
    out = sys.stdout
    started = time.monotonic()
    seq = 0
    while not stopping.is_set():
        seq += 1
        task_id = uuid.uuid4().hex
        countdown = rng.uniform(0.5, 3) if rng.random() < 0.1 else None
        sleep = rng.uniform(0, 0.01) if rng.random() < 0.1 else 0.0
        try:
            chaos_app.work.apply_async((source, seq, sleep), task_id=task_id, countdown=countdown)
            out.write(f"{'okc' if countdown else 'ok'} {task_id}\n")
        except Exception as exc:
            out.write(f"err {task_id} {type(exc).__name__}: {str(exc)[:200]!r}\n")
            time.sleep(0.2)
        out.flush()
        ahead = started + seq / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)


# -- command line ------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    producer = sub.add_parser("produce", help="(internal) a Python producer")
    producer.add_argument("--rate", type=float, required=True)
    producer.add_argument("--seed", type=int, required=True)
    producer.add_argument("--source", required=True)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long the faults go on")
    length.add_argument("--seconds", type=float, help="how long the faults go on (default 60)")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--rate", type=float, default=Options.rate, help="jobs/s, all producers")
    parser.add_argument(
        "--fault-every", type=float, default=Options.fault_every, help="mean seconds between"
    )
    parser.add_argument("--faults", default=",".join(FAULTS), help="kinds, comma-separated")
    parser.add_argument("--workdir", type=Path, help="logs and Redis data (default: a temp dir)")
    parser.add_argument("--no-ruby", action="store_true", help="no Ruby producer")
    parser.add_argument("--no-beat", action="store_true", help="no celery beat")
    parser.add_argument("--drain-timeout", type=float, default=Options.drain_timeout)
    parser.add_argument("--quiet", action="store_true", help="print the summary only")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    kinds = tuple(kind for kind in args.faults.split(",") if kind)
    unknown = set(kinds) - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    return Options(
        seconds=args.minutes * 60 if args.minutes else args.seconds or 60.0,
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(10**6),
        rate=args.rate,
        fault_every=args.fault_every,
        workdir=args.workdir,
        ruby=not args.no_ruby,
        beat=not args.no_beat,
        faults=kinds,
        drain_timeout=args.drain_timeout,
        verbose=not args.quiet,
    )


def run(options: Options) -> Summary:
    return Chaos(options).run()


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "produce":
        produce(args.rate, args.seed, args.source)
        return 0
    options = options_from(args)
    print(f"chaos: seed {options.seed}, {options.seconds:.0f} s of faults", flush=True)
    summary = run(options)
    print(summary.text(), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())


__all__ = ["FAULTS", "Options", "Summary", "main", "run"]
