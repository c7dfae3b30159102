"""`make demo`: the PaymentReportWorker story end to end, on a throwaway Redis.

Starts its own redis-server, a Celery worker on examples/payments (queue ``reports``), and,
when Ruby with sidekiq is installed, a real sidekiq.rb process (queue ``mailers``). Jobs come
from Ruby (``perform_async``, ``perform_in``) and from Python (``delay``, ``apply_async``
with a countdown); each report, built in Python, is announced by a job that runs in Ruby. At
the end it prints what ran where.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: gave up waiting for {what}")
        time.sleep(0.1)


def ruby_has_sidekiq() -> bool:
    if not shutil.which("ruby"):
        return False
    check = subprocess.run(["ruby", "-e", 'require "sidekiq"'], capture_output=True)
    return check.returncode == 0


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="celery-sidekiq-demo-"))
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdout=subprocess.DEVNULL,
    )
    procs.append(server)
    store = redis.Redis(port=port)
    wait(lambda: _pings(store), 10, "redis-server")
    env = {
        **os.environ,
        "BROKER_URL": f"sidekiq://127.0.0.1:{port}/0",
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "PYTHONPATH": f"{HERE}:{ROOT}",
    }
    try:
        print(f"redis-server on port {port}; starting a Celery worker on queue 'reports'...")
        worker_log = open(tmp / "celery.log", "wb")  # noqa: SIM115 (the worker's, until the end)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "payments.app",
                "worker",
                "-Q",
                "reports",
                "-P",
                "solo",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=HERE,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(worker)
        wait(lambda: b" ready." in (tmp / "celery.log").read_bytes(), 60, "the Celery worker")

        ruby = ruby_has_sidekiq()
        if ruby:
            print("sidekiq.rb found: a Ruby worker on queue 'mailers', and jobs from Ruby...")
            sidekiq_log = open(tmp / "sidekiq.log", "wb")  # noqa: SIM115
            procs.append(
                subprocess.Popen(
                    [
                        "sidekiq",
                        "-r",
                        str(HERE / "ruby" / "payments.rb"),
                        "-q",
                        "mailers",
                        "-c",
                        "2",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=sidekiq_log,
                    stderr=subprocess.STDOUT,
                )
            )
            subprocess.run(
                ["ruby", str(HERE / "ruby" / "enqueue.rb")],
                env=env,
                check=True,
                capture_output=True,
            )
        else:
            print("no Ruby with sidekiq here (apt-get install ruby-sidekiq): Python side only.")

        print("enqueuing from Python: delay() now, apply_async(countdown=2)...")
        sys.path[:0] = [str(HERE), str(ROOT)]
        os.environ["BROKER_URL"] = env["BROKER_URL"]
        from payments.app import payment_report

        payment_report.delay(7, "2026-10")
        payment_report.apply_async((8, "2026-10"), countdown=2)

        reports = 4 if ruby else 2
        wait(lambda: _ran(store, "PaymentReportWorker") >= reports, 60, "the reports")
        if ruby:
            wait(lambda: _ran(store, "ReportReadyNotifier") >= reports, 60, "the notifications")
        _print_log(store)
        if not ruby:
            waiting = store.llen("queue:mailers")
            print(f"\n{waiting} ReportReadyNotifier jobs wait in queue:mailers for a Ruby worker.")
        print(
            "\nSidekiq's keys now in Redis:",
            ", ".join(sorted(k.decode() for k in store.keys("*") if not k.startswith(b"_kombu"))),
        )
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _pings(store: redis.Redis) -> bool:
    try:
        return bool(store.ping())
    except redis.ConnectionError:
        return False


def _ran(store: redis.Redis, klass: str) -> int:
    return sum(1 for item in store.lrange("demo:log", 0, -1) if json.loads(item)["class"] == klass)


def _print_log(store: redis.Redis) -> None:
    print(f"\n{'ran in':<28} {'job class':<22} {'args':<26} jid")
    for item in store.lrange("demo:log", 0, -1):
        entry = json.loads(item)
        args = json.dumps(entry["args"])
        print(f"{entry['ran_in']:<28} {entry['class']:<22} {args:<26} {entry['jid']}")


if __name__ == "__main__":
    main()
