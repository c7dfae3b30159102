"""Pick-up: how soon an idle worker starts a job pushed to any of its three queues (issue 14).

One run per worker, on the same redis-server: the worker consumes ``critical``, ``default`` and
``low``, is left idle, then gets N jobs one at a time, each to a random queue, at random
intervals of 0.1 to 0.3 s (the same seeded sequence for every worker). Each job records when it
started; pick-up = start - push (the push's own round trip included, as a producer sees it).
Beforehand the idle worker's cost is read: Redis commands per second (``INFO commandstats``
over ``IDLE_SECONDS``) and its connections (``CLIENT LIST``).

Workers compared:

``ruby``     sidekiq.rb (6.4.1 here), ``sidekiq -q critical -q default -q low`` (its defaults:
             10 threads, each blocking on the three queues with ``BRPOP``);
``native``   Celery's own Redis transport, ``redis://``, ``-P solo``;
``sidekiq``  celery-sidekiq, ``sidekiq://``, ``-P solo``: a wait on ``critical``, woken for the
             others (``kombu_sidekiq/wake.py``);
``rotate``   the same with ``instant_pickup=False``: the design before issue 14, a wait on one
             queue at a time for ``polling_interval / 3`` each, in turn.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from bench.drain import fresh
from bench.harness import (
    RUBY_DIR,
    BenchError,
    Marks,
    NativeMessages,
    RedisSample,
    Worker,
    wait_until,
)
from bench.scheduled import percentile
from kombu_sidekiq import job as jobs

QUEUES = ("critical", "default", "low")

#: (label, description) of each worker, in the order of the table.
SYSTEMS = {
    "ruby": "sidekiq.rb, `-q critical -q default -q low`",
    "native": "Celery, native `redis://`, `-P solo`",
    "sidekiq": "Celery, `sidekiq://`, `-P solo`",
    "rotate": "Celery, `sidekiq://`, `-P solo`, `instant_pickup=False` (before)",
}

#: Seconds between two jobs: uniform in this range.
INTERVAL = (0.1, 0.3)

#: Seconds the idle cost is measured over (a Sidekiq 6 heartbeat every 5 s falls in twice).
IDLE_SECONDS = 10.0


class RubyWorker:
    """``sidekiq -r bench/ruby/pickup.rb -q critical -q default -q low`` in its own session."""

    def __init__(self, port: int, mark_dir: Path, log_path: Path) -> None:
        self.port = port
        self.mark_dir = mark_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RubyWorker:
        exe = shutil.which("sidekiq")
        argv = [exe] if exe else ["ruby", "-S", "sidekiq"]
        argv += ["-r", str(RUBY_DIR / "pickup.rb")]
        for queue in QUEUES:
            argv += ["-q", queue]
        env = {
            **os.environ,
            "REDIS_URL": f"redis://127.0.0.1:{self.port}/0",
            "BENCH_MARK_DIR": str(self.mark_dir),
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"sidekiq exited with {self.proc.returncode}; log {self.log_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def _worker(system: str, port: int, marks: Marks, log: Path) -> Any:
    if system == "ruby":
        return RubyWorker(port, marks.dir, log)
    scheme = "redis" if system == "native" else "sidekiq"
    env = {"BENCH_TRANSPORT_OPTIONS": '{"instant_pickup": false}'} if system == "rotate" else {}
    return Worker(
        f"{scheme}://127.0.0.1:{port}/0",
        marks.dir,
        log,
        "solo",
        1,
        env=env,
        queues=",".join(QUEUES),
    )


class Pusher:
    """Pushes one job of ``system``'s kind to a queue; returns nothing, records nothing."""

    def __init__(self, system: str, app: Any, client: redis.Redis) -> None:
        self.system = system
        self.client = client
        self.native = NativeMessages(app, client) if system == "native" else None

    def push(self, queue: str, pushed: float | None = None) -> None:
        pushed = time.time() if pushed is None else pushed
        if self.native is not None:
            self.client.lpush(queue, self.native.message("bench.pickup", [pushed], queue=queue))
            return
        klass = "BenchPickup" if self.system == "ruby" else "bench.pickup"
        job = jobs.build(klass, [pushed], queue=queue)
        payload = jobs.dumps(job)
        with self.client.pipeline(transaction=False) as pipe:  # as Sidekiq's client does
            pipe.sadd("queues", queue)
            pipe.lpush(f"queue:{queue}", payload)
            pipe.execute()


def _pickups(marks: Marks) -> list[tuple[float, float]]:
    with contextlib.suppress(FileNotFoundError):
        text = (marks.dir / "pickups").read_text()
        return [(float(line.split()[0]), float(line.split()[1])) for line in text.splitlines()]
    return []


def run_once(system: str, port: int, count: int, work_dir: Path, seed: int) -> dict[str, Any]:
    transport = "native" if system == "native" else "sidekiq"
    client, marks, app = fresh(transport, port, work_dir)
    worker = _worker(system, port, marks, work_dir / f"pickup-{system}.log")
    pusher = Pusher(system, app, client)  # its connections open before the count
    before_clients = len(client.client_list())

    def started(n: int) -> bool:
        worker.check_alive()
        return len(_pickups(marks)) >= n

    worker.start()
    try:
        # Warm: one job in each queue, all started, then the worker is left alone.
        for queue in QUEUES:
            pusher.push(queue)
        wait_until(lambda: started(len(QUEUES)), 120, f"{system}: the warm-up jobs")
        time.sleep(2.0)
        idle_before = RedisSample.take(client)
        connections = 0
        for _ in range(int(IDLE_SECONDS)):  # the most at once: some come and go
            time.sleep(1.0)
            connections = max(connections, len(client.client_list()) - before_clients)
        idle = RedisSample.take(client).minus(idle_before)
        listed = idle.calls.pop("client|list", 0) - int(IDLE_SECONDS)  # the bench's own
        if listed:
            idle.calls["client|list"] = listed
        rng = random.Random(seed)
        start = RedisSample.take(client)
        for _ in range(count):
            time.sleep(rng.uniform(*INTERVAL))
            pusher.push(rng.choice(QUEUES))
        wait_until(lambda: started(len(QUEUES) + count), 60, f"{system}: {count} jobs started")
        during = RedisSample.take(client).minus(start)
    finally:
        worker.stop()
        app.close()
        client.close()
    late = sorted((started - pushed) * 1000 for pushed, started in _pickups(marks)[len(QUEUES) :])
    if len(late) != count:
        raise BenchError(f"{system}: {len(late)} jobs started, not {count}")
    return {
        "system": system,
        "jobs": count,
        "p50_ms": percentile(late, 50),
        "p90_ms": percentile(late, 90),
        "p99_ms": percentile(late, 99),
        "max_ms": late[-1],
        "idle_commands_per_s": idle.total / IDLE_SECONDS,
        "idle_commands": dict(sorted(idle.calls.items(), key=lambda kv: -kv[1])),
        "connections": connections,
        "commands_per_job": during.total / count,
        "commands": dict(sorted(during.calls.items(), key=lambda kv: -kv[1])),
    }
