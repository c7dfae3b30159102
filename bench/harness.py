"""The benchmark's moving parts: a private redis-server, real ``celery worker`` processes,
marker files, Redis and process counters, and the two ways of filling a queue.

Measuring must not add to what is measured: workers report progress through files (the
``bench.mark`` task), the bench reads Redis counters with one ``INFO`` per sample (and takes
that ``INFO`` back out of the counts), and the process counters come from ``/proc``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import redis

REPO_ROOT = Path(__file__).resolve().parents[1]
APPS_DIR = REPO_ROOT / "bench" / "apps"
RUBY_DIR = REPO_ROOT / "bench" / "ruby"

# Reuse the test suite's redis-server (free port, temp dir, no persistence).
sys.path.insert(0, str(REPO_ROOT / "tests"))
from support.redis_server import RedisServer  # noqa: E402

__all__ = ["RedisServer"]

#: Jobs per pipeline when filling a queue: Sidekiq's push_bulk batch.
FILL_BATCH = 1_000

#: Seconds between checks of a marker file; well under a millisecond of CPU each.
POLL = 0.005

CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A run that cannot be trusted (a worker died, a job went missing): the bench stops."""


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = POLL
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- Redis counters --------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisSample:
    """One ``INFO commandstats stats cpu``: calls per command, read events, CPU seconds."""

    calls: dict[str, int]
    reads: int
    cpu: float

    @classmethod
    def take(cls, client: redis.Redis) -> RedisSample:
        info = client.execute_command("INFO", "commandstats", "stats", "cpu")
        calls = {
            key[len("cmdstat_") :]: int(value["calls"])
            for key, value in info.items()
            if key.startswith("cmdstat_")
        }
        cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
        return cls(calls, int(info["total_reads_processed"]), cpu)

    def minus(self, before: RedisSample) -> RedisSample:
        """What happened between ``before`` and this sample, less ``before``'s own INFO call
        (an INFO is counted once it has run: ``before`` shows in this sample, not in its own)
        and this sample's own read event."""
        calls = {name: n - before.calls.get(name, 0) for name, n in self.calls.items()}
        calls["info"] = calls.get("info", 0) - 1
        return RedisSample(
            {name: n for name, n in calls.items() if n},
            self.reads - before.reads - 1,
            self.cpu - before.cpu,
        )

    @property
    def total(self) -> int:
        return sum(self.calls.values())


# --- processes --------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 is index 0)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def session_cpu(sid: int) -> float:
    """CPU seconds of every live process of session ``sid`` (a worker and its pool), plus what
    its leader collected from children that ended."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = proc_stat(int(entry))
        if fields is None or int(fields[3]) != sid:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if int(entry) == sid:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLK_TCK


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


class Worker:
    """A real ``celery -A bench_app worker`` subprocess in its own session (so its pool is
    found, measured and killed with it), logging at WARNING to a file."""

    def __init__(
        self,
        broker_url: str,
        mark_dir: Path,
        log_path: Path,
        pool: str = "solo",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        queues: str = "default",
    ) -> None:
        self.broker_url = broker_url
        self.queues = queues
        self.mark_dir = mark_dir
        self.log_path = log_path
        self.pool = pool
        self.concurrency = concurrency
        self.name = f"bench-{uuid.uuid4().hex[:8]}"
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nodename(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def start(self) -> Worker:
        argv = [
            sys.executable, "-m", "celery", "-A", "bench_app", "worker",
            "-Q", self.queues, "-P", self.pool, "-c", str(self.concurrency),
            "--loglevel=WARNING", "-n", self.nodename,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        path = os.pathsep.join(
            filter(None, [str(APPS_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        env = {
            **os.environ,
            "PYTHONPATH": path,
            "BROKER_URL": self.broker_url,
            "BENCH_MARK_DIR": str(self.mark_dir),
            **self.extra_env,
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=APPS_DIR,
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
            raise BenchError(
                f"worker exited with {self.proc.returncode}; "
                f"log {self.log_path}:\n{self.log_tail()}"
            )

    def watching(self, predicate: Callable[[], Any]) -> Callable[[], Any]:
        """``predicate`` for :func:`wait_until` that fails at once if the worker died."""

        def check() -> Any:
            self.check_alive()
            return predicate()

        return check

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (TERM), then KILL whatever of the session is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def kill(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def running(worker: Worker, kill: bool = False) -> Iterator[Worker]:
    worker.start()
    try:
        yield worker
    finally:
        worker.kill() if kill else worker.stop()


class Marks:
    """The directory the workers' ``bench.mark``/``bench.stamp`` tasks write to."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        self.dir.mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        for path in self.dir.iterdir():
            path.unlink()

    def wait(self, name: str, timeout: float, worker: Worker) -> float:
        """The wall clock the worker wrote for mark ``name``, once it has."""
        path = self.dir / name

        def written() -> float | None:
            worker.check_alive()
            with contextlib.suppress(FileNotFoundError):
                return float(path.read_text())
            return None

        return float(wait_until(written, timeout, f"mark {name!r} ({worker.log_path})"))

    def stamps(self) -> list[tuple[float, float, float]]:
        """(due, ran, promoted) of every ``bench.stamp`` run so far (promoted: nan if unknown)."""
        with contextlib.suppress(FileNotFoundError):
            text = (self.dir / "stamps").read_text()
            return [(float(a), float(b), float(c)) for a, b, c in map(str.split, text.splitlines())]
        return []


# --- filling queues --------------------------------------------------------------------------


class NativeMessages:
    """Celery's own messages for the native transport, made fast.

    One real ``send_task`` gives the exact message Celery writes (headers, properties, base64
    body); copies get fresh ids and, where asked, other args or an ETA. That fills a queue with
    20,000 messages in a fraction of a second, where ``apply_async`` would take seconds, and
    the worker cannot tell the difference.
    """

    #: Where the template message is sent: a queue no worker consumes.
    TEMPLATE_QUEUE = "bench-template"

    def __init__(self, app: Any, client: redis.Redis) -> None:
        app.send_task("bench.noop", queue=self.TEMPLATE_QUEUE)
        template = cast(bytes | None, client.rpop(self.TEMPLATE_QUEUE))
        if template is None:
            raise BenchError(
                f"send_task wrote nothing under the native {self.TEMPLATE_QUEUE!r} key"
            )
        self.template: dict[str, Any] = json.loads(template)
        delivery_info = self.template["properties"]["delivery_info"]
        if delivery_info != {"exchange": "", "routing_key": self.TEMPLATE_QUEUE}:
            raise BenchError(f"unexpected delivery_info in Celery's message: {delivery_info}")
        self.template["properties"]["delivery_info"] = {"exchange": "", "routing_key": "default"}

    def message(
        self,
        task: str = "bench.noop",
        args: Sequence[Any] = (),
        eta: float | None = None,
        queue: str = "default",
    ) -> str:
        message = dict(self.template)
        headers = dict(message["headers"])
        properties = dict(message["properties"])
        properties["delivery_info"] = {"exchange": "", "routing_key": queue}
        task_id = str(uuid.uuid4())
        headers.update(task=task, id=task_id, root_id=task_id, argsrepr=repr(tuple(args)))
        if eta is not None:
            headers["eta"] = datetime.fromtimestamp(eta, timezone.utc).isoformat()
        properties.update(correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
        body = json.dumps(
            [list(args), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
        )
        message.update(
            headers=headers, properties=properties, body=base64.b64encode(body.encode()).decode()
        )
        return json.dumps(message)

    @staticmethod
    def push(client: redis.Redis, payloads: Iterable[str], key: str = "default") -> int:
        """LPUSH in order (the first payload is taken first), one pipeline per batch; returns
        the number of LPUSH calls."""
        calls = 0
        batch: list[str] = []
        for payload in payloads:
            batch.append(payload)
            if len(batch) == FILL_BATCH:
                client.lpush(key, *batch)
                calls, batch = calls + 1, []
        if batch:
            client.lpush(key, *batch)
            calls += 1
        return calls


def chunks(items: Sequence[Any], size: int = FILL_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- the machine -----------------------------------------------------------------------------


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return None


def _command(argv: list[str]) -> str | None:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except Exception:
        return None


def machine(client: redis.Redis) -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    info = client.info("server")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": _command(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"])
        or platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis_server": info.get("redis_version"),
        "celery": _version("celery"),
        "kombu": _version("kombu"),
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "ruby": _command(["ruby", "-e", "print RUBY_VERSION"]),
        "sidekiq_rb": _command(["ruby", "-e", 'require "sidekiq"; print Sidekiq::VERSION']),
        "commit": _command(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]),
        "dirty": bool(
            _command(
                [
                    "git",
                    "-C",
                    str(REPO_ROOT),
                    "status",
                    "--porcelain",
                    "--",
                    "kombu_sidekiq",
                    "celery_sidekiq",
                ]
            )
        ),
        "at_start": contention(),
    }


def contention() -> dict[str, Any]:
    """How busy the machine is besides us: load average and the share of the last minute in
    which some task waited for a CPU (``/proc/pressure/cpu``), a hint of how noisy a run was."""
    pressure = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        pressure = float(dict(part.split("=") for part in some[1:])["avg60"])
    return {"loadavg_1m": os.getloadavg()[0], "cpu_pressure_avg60": pressure}


def ruby_available() -> bool:
    return (
        shutil.which("ruby") is not None
        and _command(["ruby", "-e", 'require "sidekiq"; print 1']) == "1"
    )


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))
