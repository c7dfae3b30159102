"""Pick-up designs compared at the Redis level, before one went into the transport (issue 14).

    .venv/bin/python bench/candidates.py                 # every candidate, 400 jobs each
    .venv/bin/python bench/candidates.py --jobs 100 --only tracking,rotate

Each candidate is a consumer on three queues (``critical``, ``default``, ``low``) in a process of
its own, built from the real pieces (``ReliableFetch``, ``fetch.lua``, landing lists), without
Celery: what it measures is what the wake-up design adds, not what Celery adds on top. A
producer in this process pushes one Sidekiq job at a time (``SADD`` + ``LPUSH``) to a random
queue at random intervals; the consumer writes, for each job, the time between its push and the
moment it was in the consumer's in-flight hash. Then the consumer idles for a few seconds and
``INFO commandstats`` gives the commands per second it spends doing nothing.

Candidates:

``rotate``     the design before issue 14: ``BRPOPLPUSH`` on one queue at a time, for
               ``timeout / n`` each, round-robin.
``blmove``     one blocking connection per queue (``BLMOVE queue:<q> landing:<q>``), the
               consumer waiting on all their sockets at once.
``tracking``   ``BRPOPLPUSH`` on the first queue; the other queues are watched by client-side
               tracking in BCAST mode (no server configuration), and a thread that sees an
               invalidation sends ``CLIENT UNBLOCK`` to the waiting connection.
``keyspace``   the same wake-up from keyspace notifications (``notify-keyspace-events Kl``, a
               server setting this bench turns on for the run and back off).
``self``       ``BRPOPLPUSH`` on the first queue, tracking on that same connection in RESP3:
               the invalidation arrives as a push message on the waiting connection itself,
               and the consumer (no thread) sends ``CLIENT UNBLOCK`` from another one.
``poll``       no blocking command at all: the consumer waits on the tracking invalidations
               (every queue watched) and runs the fetch script after each one, or after 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis

from bench.harness import RedisSample, RedisServer, tempdir
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.fetch import ReliableFetch

QUEUES = ("critical", "default", "low")
CANDIDATES = ("rotate", "blmove", "tracking", "keyspace", "self", "poll")
TIMEOUT = 1.0  # the consumer's wait, as kombu's brpop_timeout


# --- the consumers (run in a child process) ---------------------------------------------------


class Consumer:
    def __init__(self, port: int, out: Path) -> None:
        self.port = port
        # RESP2 as redis-py < 8 speaks it; only ``self`` needs RESP3 (its own connection).
        self.redis = redis.Redis(port=port, protocol=2, socket_timeout=None)
        self.fetch = ReliableFetch(Client(self.redis), consumer_id=f"cand:{os.getpid()}")
        for queue in QUEUES:
            self.fetch.watch(queue)
        self.out = open(out, "a")  # noqa: SIM115
        self.stopped = False

    def take(self) -> int:
        items = self.fetch.fetch(QUEUES, 10, idle=False)
        now = time.time()
        for item in items:
            pushed = json.loads(item.payload)["args"][0]
            self.out.write(f"{now - pushed}\n")
            self.fetch.ack(item.queue, item.tag, item.payload)
        self.out.flush()
        return len(items)

    def connection(self) -> Any:
        conn = self.redis.connection_pool.make_connection()
        conn.connect()
        return conn

    def run(self) -> None:
        raise NotImplementedError


class Rotate(Consumer):
    def run(self) -> None:
        conn, turn = self.connection(), 0
        while not self.stopped:
            if self.take():
                continue
            queue = QUEUES[turn % len(QUEUES)]
            turn += 1
            conn.send_command(*self.fetch.block_command(queue, TIMEOUT / len(QUEUES)))
            if conn.read_response():
                self.fetch.landed()


class Blmove(Consumer):
    def run(self) -> None:
        selector = selectors.DefaultSelector()
        conns = {}
        for queue in QUEUES:
            conn = self.connection()
            conns[queue] = conn
            selector.register(conn._sock, selectors.EVENT_READ, queue)
        waiting: set[str] = set()
        while not self.stopped:
            if self.take():
                continue
            for queue, conn in conns.items():
                if queue not in waiting:
                    conn.send_command(
                        "BLMOVE", self.fetch.keys.queue(queue), self.fetch.landing(queue),
                        "RIGHT", "LEFT", TIMEOUT,
                    )  # fmt: skip
                    waiting.add(queue)
            for key, _ in selector.select(TIMEOUT + 1):
                queue = key.data
                waiting.discard(queue)
                if conns[queue].read_response():
                    self.fetch.landed()


class Wake(Consumer):
    """A BRPOPLPUSH on the first queue, woken by a thread that watches the others."""

    def subscribe(self) -> Any:
        raise NotImplementedError

    def run(self) -> None:
        poll = self.connection()
        poll.send_command("CLIENT", "ID")
        self.poll_id = poll.read_response()
        self.blocked = 0
        self.pending = False
        sub = self.subscribe()
        unblocker = self.connection()
        threading.Thread(target=self.wake, args=(sub, unblocker), daemon=True).start()
        self.arm(poll)
        wait = 0
        while not self.stopped:
            self.pending = False
            if self.take():
                continue
            wait += 1
            self.blocked = wait
            if self.pending:
                self.blocked = 0
                continue
            poll.send_command(*self.fetch.block_command(QUEUES[0], TIMEOUT))
            landed = poll.read_response()
            self.blocked = 0
            if landed:
                self.fetch.landed()

    def arm(self, poll: Any) -> None:
        pass

    def wake(self, sub: Any, unblocker: Any) -> None:
        while True:
            sub.read_response()
            self.pending = True
            wait, delay = self.blocked, 0.0005
            while wait and wait == self.blocked:
                unblocker.send_command("CLIENT", "UNBLOCK", self.poll_id)
                if unblocker.read_response():
                    break
                time.sleep(delay)
                delay = min(delay * 2, 0.02)


class Tracking(Wake):
    def subscribe(self) -> Any:
        sub = self.connection()
        sub.send_command("CLIENT", "ID")
        self.sub_id = sub.read_response()
        sub.send_command("SUBSCRIBE", "__redis__:invalidate")
        sub.read_response()
        return sub

    def arm(self, poll: Any) -> None:
        prefixes = [arg for q in QUEUES[1:] for arg in ("PREFIX", self.fetch.keys.queue(q))]
        poll.send_command(
            "CLIENT", "TRACKING", "ON", "REDIRECT", self.sub_id, "BCAST", *prefixes, "NOLOOP"
        )
        poll.read_response()


class Keyspace(Wake):
    def subscribe(self) -> Any:
        sub = self.connection()
        channels = [f"__keyspace@0__:{self.fetch.keys.queue(q)}" for q in QUEUES[1:]]
        sub.send_command("SUBSCRIBE", *channels)
        for _ in channels:
            sub.read_response()
        return sub


class SelfWake(Consumer):
    """RESP3: the waiting connection receives its own invalidations as push messages, and
    fetches on that connection too, so a push read before a fetch's reply is older than the
    fetch (which saw the write) and a push read after it is news."""

    def take_on(self, poll: Any) -> int:
        poll.send_command(*self.fetch.fetch_command(QUEUES, 10))
        reply = poll.read_response(push_request=True)
        while _is_push(reply):
            reply = poll.read_response(push_request=True)
        items = self.fetch.parse_fetch(QUEUES, reply)
        now = time.time()
        for item in items:
            self.out.write(f"{now - json.loads(item.payload)['args'][0]}\n")
            self.fetch.ack(item.queue, item.tag, item.payload)
        self.out.flush()
        return len(items)

    def run(self) -> None:
        poll = redis.Redis(port=self.port, protocol=3, socket_timeout=None).connection_pool
        poll = poll.make_connection()
        poll.connect()
        # redis-py hands an invalidation push to this handler (None without one).
        poll._parser.set_invalidation_push_handler(lambda push: [b"invalidate"])
        poll.send_command("CLIENT", "ID")
        poll_id = poll.read_response()
        prefixes = [arg for q in QUEUES[1:] for arg in ("PREFIX", self.fetch.keys.queue(q))]
        poll.send_command("CLIENT", "TRACKING", "ON", "BCAST", *prefixes, "NOLOOP")
        poll.read_response()
        self.fetch.load_scripts()
        unblocker = self.connection()
        while not self.stopped:
            if self.take_on(poll):
                continue
            poll.send_command(*self.fetch.block_command(QUEUES[0], TIMEOUT))
            reply = poll.read_response(push_request=True)
            if _is_push(reply):
                # woken: end the wait (it may not have started yet: try until it did)
                while True:
                    unblocker.send_command("CLIENT", "UNBLOCK", poll_id)
                    if unblocker.read_response() or poll.can_read(0):
                        break
                    time.sleep(0.0002)
                reply = poll.read_response(push_request=True)
                while _is_push(reply):
                    reply = poll.read_response(push_request=True)
            if reply:
                self.fetch.landed()


def _is_push(reply: Any) -> bool:
    return isinstance(reply, list) and bool(reply) and reply[0] == b"invalidate"


class Poll(Consumer):
    """No blocking command: wait on the invalidations themselves, then fetch."""

    def run(self) -> None:
        sub = self.connection()
        sub.send_command("CLIENT", "ID")
        sub_id = sub.read_response()
        sub.send_command("SUBSCRIBE", "__redis__:invalidate")
        sub.read_response()
        poll = self.connection()
        prefixes = [arg for q in QUEUES for arg in ("PREFIX", self.fetch.keys.queue(q))]
        poll.send_command("CLIENT", "TRACKING", "ON", "REDIRECT", sub_id, "BCAST", *prefixes)
        poll.read_response()
        selector = selectors.DefaultSelector()
        selector.register(sub._sock, selectors.EVENT_READ)
        while not self.stopped:
            if self.take():
                continue
            if selector.select(TIMEOUT):
                sub.read_response()
                while sub.can_read():  # several invalidations: one fetch
                    sub.read_response()


def consume(candidate: str, port: int, out: Path) -> None:
    kinds = {
        "rotate": Rotate,
        "blmove": Blmove,
        "tracking": Tracking,
        "keyspace": Keyspace,
        "self": SelfWake,
        "poll": Poll,
    }
    kinds[candidate](port, out).run()


# --- the producer and the measurement (this process) -----------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def measure(candidate: str, port: int, count: int, work: Path, idle_s: float) -> dict[str, Any]:
    client = redis.Redis(port=port)
    client.flushall()
    if candidate == "keyspace":
        client.config_set("notify-keyspace-events", "Kl")
    out = work / f"{candidate}.txt"
    out.write_text("")
    clients_before = int(client.info("clients")["connected_clients"])
    proc = subprocess.Popen(
        [sys.executable, __file__, "--consume", candidate, "--port", str(port), "--out", str(out)]
    )
    try:
        time.sleep(1.0)  # connected and waiting
        connections = int(client.info("clients")["connected_clients"]) - clients_before
        rng = random.Random(14)
        for _ in range(count):
            time.sleep(rng.uniform(0.02, 0.08))
            job = jobs.build("Pickup", [0.0], queue=rng.choice(QUEUES))
            with client.pipeline(transaction=False) as pipe:
                job["args"] = [time.time()]
                pipe.sadd("queues", job["queue"])
                pipe.lpush(f"queue:{job['queue']}", jobs.dumps(job))
                pipe.execute()
        deadline = time.monotonic() + 10
        while len(out.read_text().split()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        before = RedisSample.take(client)
        time.sleep(idle_s)
        idle = RedisSample.take(client).minus(before)
    finally:
        proc.kill()
        proc.wait()
        if candidate == "keyspace":
            client.config_set("notify-keyspace-events", "")
    late = [float(x) * 1000 for x in out.read_text().split()]
    if len(late) != count:
        raise SystemExit(f"{candidate}: {len(late)} jobs picked up of {count}")
    return {
        "candidate": candidate,
        "jobs": count,
        "p50_ms": statistics.median(late),
        "p99_ms": percentile(late, 99),
        "max_ms": max(late),
        "idle_commands_per_s": idle.total / idle_s,
        "idle_commands": idle.calls,
        "connections": connections,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=400)
    parser.add_argument("--only", default=",".join(CANDIDATES))
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle measured")
    parser.add_argument("--consume", choices=CANDIDATES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        consume(args.consume, args.port, args.out)
        return 0
    work = tempdir("celery-sidekiq-candidates-")
    rows = []
    with RedisServer() as server:
        for candidate in args.only.split(","):
            row = measure(candidate, server.port, args.jobs, work, args.idle)
            rows.append(row)
            print(
                f"{candidate:9} p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  "
                f"max {row['max_ms']:7.2f} ms  idle {row['idle_commands_per_s']:5.1f} cmd/s  "
                f"{row['connections']} connections",
                file=sys.stderr,
            )
    print("| candidate | pick-up p50 ms | p99 ms | max ms | idle commands/s | connections |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['candidate']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{row['max_ms']:.2f} | {row['idle_commands_per_s']:.1f} | {row['connections']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
