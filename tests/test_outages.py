"""Redis goes away and comes back: workers, the scheduled poller and producers carry on, 0 lost.

Each test runs a private redis-server with ``appendfsync always``, so a restart (SIGTERM or
SIGKILL) keeps every acknowledged write: whatever goes missing was lost by us, not by Redis.
Jobs are counted by distinct id (at least once: a job whose ack died with a connection may run
twice, never zero times). Celery's Redis transport has known hangs here: a worker that stops
consuming after a reconnect (celery#8030) or spins on a dead socket (kombu#2214).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from support.beat import Beat
from support.procs import REPO_ROOT, tail, terminate
from support.redis_server import RedisServer
from support.waiting import wait_for

import celery_sidekiq
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker

#: Every write on disk before Redis replies: a restart loses nothing.
PERSISTENT = ["--appendonly", "yes", "--appendfsync", "always"]

TASK = "bridge.sleep"  # bridge_app: records its run in results:bridge.sleep, then sleeps


@pytest.fixture
def server(redis_server_factory: Any) -> RedisServer:
    return redis_server_factory(extra_args=PERSISTENT)


def url_of(server: RedisServer) -> str:
    return f"sidekiq://127.0.0.1:{server.port}/0"


def client(server: RedisServer) -> redis_lib.Redis:
    """A client that rides out a restart: redis-py reconnects and retries on its own."""
    return server.client(socket_timeout=5)


def crash(server: RedisServer) -> None:
    """kill -9 and start again on the same port: no shutdown, no goodbye to the clients."""
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)
    server.proc = None
    server.start()


def push(server: RedisServer, count: int, seconds: float = 0.05) -> list[str]:
    """Ruby-style jobs for bridge.sleep; returns their jids (the task ids the worker sees)."""
    batch = [jobs.build(TASK, [seconds]) for _ in range(count)]
    with client(server) as conn:
        Client(conn).push_bulk(batch)
    return [str(job["jid"]) for job in batch]


def ran(server: RedisServer) -> set[str]:
    with client(server) as conn:
        return {json.loads(item)["id"] for item in conn.lrange(f"results:{TASK}", 0, -1)}


def wait_ran(server: RedisServer, expected: set[str] | int, timeout: float = 60) -> None:
    count = expected if isinstance(expected, int) else len(expected)

    def enough() -> bool:
        done = ran(server)
        return len(done) >= expected if isinstance(expected, int) else done >= expected

    wait_for(
        enough,
        timeout=timeout,
        interval=0.1,
        message=f"{count} distinct runs of {TASK}",
        ignore=(redis_lib.ConnectionError, redis_lib.TimeoutError),
    )


def kill_connections(server: RedisServer) -> int:
    """CLIENT KILL TYPE normal: every client connection but ours drops, mid-command or not."""
    with client(server) as conn:
        return int(conn.execute_command("CLIENT", "KILL", "TYPE", "normal"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- workers -------------------------------------------------------------------------------


def test_a_worker_carries_on_through_redis_restarts_mid_stream(
    server: RedisServer, celery_worker: Any
) -> None:
    worker = celery_worker(broker_url=url_of(server))
    sent = push(server, 40)
    wait_ran(server, 5)
    server.restart()  # SIGTERM: Redis closes every connection and comes back
    # Scheduled while Redis was away from the worker: its poller has to reconnect too.
    with client(server) as conn:
        later = [jobs.build(TASK, [0]) for _ in range(5)]
        for job in later:
            Client(conn).schedule(job, time.time() + 1)
    sent += [str(job["jid"]) for job in later]
    wait_ran(server, 15)
    crash(server)  # SIGKILL: no goodbye; the AOF has every acknowledged write
    sent += push(server, 10)
    wait_ran(server, set(sent))
    with client(server) as conn:
        assert conn.llen("queue:default") == 0
        assert conn.zcard("schedule") == 0
        assert conn.zcard("dead") == 0
    assert ran(server) == set(sent)
    assert worker.running


def test_a_worker_carries_on_when_its_connections_are_killed(
    server: RedisServer, celery_worker: Any
) -> None:
    worker = celery_worker(broker_url=url_of(server))
    sent = push(server, 60, seconds=0.03)
    for done in (5, 20, 35):
        wait_ran(server, done)
        assert kill_connections(server) >= 1
    sent += push(server, 10)
    wait_ran(server, set(sent))
    with client(server) as conn:
        assert conn.llen("queue:default") == 0
    assert worker.running


def test_an_idle_worker_neither_hangs_nor_spins_after_outages(
    redis_server_factory: Any, celery_worker: Any
) -> None:
    """celery#8030 (stops consuming after a reconnect) and kombu#2214 (100% CPU on a dead
    socket), with a server that also closes idle connections after a second."""
    server = redis_server_factory(extra_args=[*PERSISTENT, "--timeout", "1"])
    worker = celery_worker(broker_url=url_of(server))
    sent = push(server, 1)
    wait_ran(server, set(sent))
    for outage in (server.restart, lambda: kill_connections(server), lambda: crash(server)):
        outage()
        # Measuring windows, not waits for a condition: idle past the server's idle timeout,
        # then count the CPU the worker burns doing nothing (a spinning hub burns ~1 s/s).
        time.sleep(1.5)
        before = cpu_seconds(worker.pid)
        time.sleep(1.5)
        busy = cpu_seconds(worker.pid) - before
        assert busy < 0.75, f"the idle worker burnt {busy:.2f} s of CPU in 1.5 s"
        sent += push(server, 3, seconds=0)
        wait_ran(server, set(sent), timeout=45)
    assert worker.running


# -- the scheduled poller and producers -----------------------------------------------------


@pytest.fixture
def poller(server: RedisServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m celery_sidekiq.scheduled``, the poller that runs without a worker."""
    log = tmp_path / "poller.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery_sidekiq.scheduled", url_of(server), "--interval", "0.2"],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield proc
    terminate(proc, 2, 10)  # SIGINT: the poller's clean stop
    print(tail(log))


def test_the_scheduled_poller_carries_on_through_outages(
    server: RedisServer, poller: subprocess.Popen[bytes]
) -> None:
    def schedule_one() -> str:
        job = jobs.build(TASK, [0])
        with client(server) as conn:
            Client(conn).schedule(job, time.time())  # due now
        return str(job["jid"])

    def queued() -> set[str]:
        with client(server) as conn:
            return {jobs.parse(raw)["jid"] for raw in conn.lrange("queue:default", 0, -1)}

    expected = set()
    for outage in (
        lambda: None,
        server.restart,
        lambda: kill_connections(server),
        lambda: crash(server),
    ):
        outage()
        expected.add(schedule_one())
        wait_for(
            lambda: queued() >= expected,
            timeout=30,
            message="the poller promoted every due job",
            ignore=(redis_lib.ConnectionError,),
        )
        assert poller.poll() is None
    with client(server) as conn:
        assert conn.zcard("schedule") == 0


def test_a_producer_carries_on_through_outages(server: RedisServer) -> None:
    app = Celery("outage-producer", broker=url_of(server))
    celery_sidekiq.setup(app)
    sent: list[str] = []

    def send(count: int, **options: Any) -> None:
        sent.extend(app.send_task(TASK, (0,), **options).id for _ in range(count))

    try:
        send(3)
        server.restart()
        send(3)  # Celery's default publish retry policy is enough once Redis is back
        kill_connections(server)
        send(3)
        crash(server)
        send(3)
        # Redis away while sending: a generous retry policy waits for it to come back.
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait(10)
        server.proc = None
        comeback = threading.Timer(1.0, server.start)
        comeback.start()
        policy = {
            "max_retries": 40,
            "interval_start": 0.1,
            "interval_step": 0.1,
            "interval_max": 0.25,
        }
        try:
            send(3, retry_policy=policy)
        finally:
            comeback.join()
    finally:
        app.close()
    with client(server) as conn:
        queued = [jobs.parse(raw) for raw in conn.lrange("queue:default", 0, -1)]
    assert len(queued) == len(sent) == 15
    assert len({job["jid"] for job in queued}) == 15


def test_an_idle_worker_on_a_demoted_server_reconnects_instead_of_dying(
    server: RedisServer, celery_worker: Any, redis_server_factory: Any
) -> None:
    """A managed-Redis failover without Sentinel (the DNS name moves): the server the idle worker
    waits on is demoted, and Redis answers the blocked fetch with UNBLOCKED, then writes with
    READONLY. The worker must take both as a lost connection and carry on once it is a master."""
    other = redis_server_factory()
    worker = celery_worker(broker_url=url_of(server))
    sent = push(server, 1)
    wait_ran(server, set(sent))
    time.sleep(0.5)  # idle: the worker's fetch is now a blocking wait
    with client(server) as conn:
        conn.execute_command("REPLICAOF", "127.0.0.1", str(other.port))
        wait_for(lambda: conn.info("replication")["role"] == "slave", timeout=10, message="demoted")
        time.sleep(1.5)  # the worker's wait is answered UNBLOCKED; its retries meet READONLY
        conn.execute_command("REPLICAOF", "NO", "ONE")
    assert worker.running, worker.log_tail()
    sent += push(server, 3)
    wait_ran(server, set(sent))
    assert worker.running


def test_beat_carries_on_through_redis_restarts(server: RedisServer, tmp_path: Path) -> None:
    """`celery beat -S sidekiq` reconnects by itself and keeps firing, each fire once."""
    schedule = {"every-second": {"task": "Workers::Tick", "every": 1, "args": ["tick"]}}
    beat = Beat(url_of(server), tmp_path / "beat.log", schedule).start()
    try:
        wait_for(beat.ready, timeout=30, message="beat up")

        def fired() -> int:
            with client(server) as conn:
                return int(conn.llen("queue:default"))

        def fires_again(after: int) -> None:
            wait_for(
                lambda: fired() >= after + 3,
                timeout=40,
                interval=0.2,
                message=f"beat fires again\n{beat.log_tail(30)}",
                ignore=(redis_lib.ConnectionError, redis_lib.TimeoutError),
            )

        fires_again(0)
        server.restart()
        fires_again(fired())
        crash(server)
        fires_again(fired())
        assert beat.running, beat.log_tail(30)
        with client(server) as conn:
            jids = [json.loads(raw)["jid"] for raw in conn.lrange("queue:default", 0, -1)]
        assert len(jids) == len(set(jids))
    finally:
        beat.stop()
