"""Nothing lost, nothing wedged, nothing run twice: a real worker drains jobs through a fault
proxy (tests/support/faultproxy.py) that loses a fetch's reply, stalls or delays replies, or
cuts connections mid-command, and through a Redis that pauses its writes or sleeps.

Each test starts a private ``redis-server`` (``appendfsync always``), a proxy in front of it and
a ``celery -A chaos_app worker`` whose broker URL points at the proxy; the jobs record their
runs straight into Redis (not through the proxy). kombu's BRPOP health check is made short
(``polling_interval`` 1 s, ``health_check_interval`` 1 s): a fetch whose reply is 2 s overdue
is dropped and the worker reconnects, as it would after 26 s with kombu's defaults.

At the end every job ran, none twice (no worker died, so no redelivery is excused), the queue is
empty and nothing is left in flight.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from support.faultproxy import FaultProxy
from support.recorded import inflight
from support.redis_server import RedisServer
from support.waiting import wait_for
from support.worker import CeleryWorker

from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.fetch import FETCH

pytestmark = pytest.mark.worker

PERSISTENT = ["--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "local"]

#: The fetch script's EVALSHA, as the worker sends it.
FETCH_CALL = rf"EVALSHA {FETCH.sha}\b"

#: kombu's checks made short: a fetch whose reply is overdue by 2 s is given up on.
TRANSPORT = {"polling_interval": 1, "health_check_interval": 1, "socket_timeout": 10}

#: A lease long enough that no fault here lets it lapse while the worker lives.
SETUP = {"poll_interval": 0.5, "fetch_lease": 10}

RUNS = "chaos:runs"  # chaos_app records each run there


def carries_jobs(reply: bytes) -> bool:
    """A fetch reply that took something: a non-empty array (not NOSCRIPT, not nothing)."""
    return reply.startswith(b"*") and not reply.startswith((b"*0\r\n", b"*-1\r\n"))


@pytest.fixture
def server(redis_server_factory: Any) -> RedisServer:
    return redis_server_factory(extra_args=PERSISTENT)  # type: ignore[no-any-return]


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(server.port) as proxy:
        yield proxy


@pytest.fixture
def direct(server: RedisServer) -> Iterator[redis_lib.Redis]:
    """The test's own connection to Redis, around the proxy."""
    with server.client(socket_timeout=15) as conn:
        yield conn


def start_worker(
    celery_worker: Any, proxy: FaultProxy, server: RedisServer, pool: str = "solo", **kw: Any
) -> CeleryWorker:
    env = {
        "RECORD_URL": server.url,
        "TRANSPORT_OPTIONS": json.dumps(TRANSPORT),
        "SIDEKIQ_SETUP": json.dumps(SETUP),
        "CHAOS_WORKER": pool,
    }
    worker: CeleryWorker = celery_worker(
        app_module="chaos_app", broker_url=proxy.url("sidekiq"), pool=pool, env=env, **kw
    )
    return worker


def push(direct: redis_lib.Redis, count: int, sleep: float = 0.05) -> list[str]:
    batch = [jobs.build("Chaos::Work", ["fault", n, sleep]) for n in range(count)]
    Client(direct).push_bulk(batch)
    return [str(job["jid"]) for job in batch]


def runs(direct: redis_lib.Redis) -> Counter[str]:
    """How many times each job id ran."""
    return Counter(json.loads(value)["id"] for value in direct.hvals(RUNS))


def wait_runs(direct: redis_lib.Redis, count: int, timeout: float = 30) -> None:
    wait_for(
        lambda: len(runs(direct)) >= count,
        timeout=timeout,
        interval=0.05,
        message=f"{count} jobs ran",
    )


def held_jobs(direct: redis_lib.Redis) -> dict[str, list[str]]:
    """What is in flight: in-flight hash or landing list -> the jids (or raw bytes) held."""
    held: dict[str, list[str]] = {}
    for pattern in ("celery-sidekiq:inflight:*", "celery-sidekiq:landing:*"):
        for key in direct.keys(pattern):
            raws = direct.hvals(key) if direct.type(key) == b"hash" else direct.lrange(key, 0, -1)
            if raws:
                held[key.decode()] = [_jid(raw) for raw in raws]
    return held


def _jid(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["jid"])
    except (ValueError, KeyError, TypeError):
        return repr(raw[:60])


def assert_all_ran_once(
    direct: redis_lib.Redis,
    sent: list[str],
    worker: CeleryWorker,
    proxy: FaultProxy,
    timeout: float = 45,
) -> None:
    """Every job ran, the queue drained, nothing stays in flight; then none ran twice."""

    def done() -> bool:
        return (
            set(runs(direct)) >= set(sent)
            and direct.llen("queue:default") == 0
            and inflight(direct) == 0
        )

    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.2)
    ran = runs(direct)
    missing = [jid for jid in sent if jid not in ran]
    twice = {jid: n for jid, n in ran.items() if n > 1}
    report = (
        f"{len(missing)} of {len(sent)} jobs never ran {missing}; "
        f"{direct.llen('queue:default')} still queued; in flight: {held_jobs(direct)}; "
        f"ran twice or more: {twice}; dead: {direct.zcard('dead')}, retry: {direct.zcard('retry')}; "
        f"proxy: {proxy.counters}"
    )
    assert not missing and done(), report
    assert worker.running, f"the worker exited: {worker.log_tail(40)}"
    time.sleep(1)  # a late second run (a recovery, a redelivery) would show up now
    ran = runs(direct)
    twice = {jid: n for jid, n in ran.items() if n > 1}
    assert all(n == 1 for n in ran.values()), f"jobs ran twice: {report}"
    assert set(ran) == set(sent)
    assert direct.zcard("dead") == direct.zcard("retry") == 0


# -- a fetch whose reply never comes -----------------------------------------------------------


@pytest.mark.parametrize(
    "skip",
    [
        pytest.param(0, id="new-fields"),  # the first batch: the fetch hands out new numbers
        pytest.param(1, id="acked-fields"),  # the next: its jobs take over the acked fields
    ],
)
def test_a_lost_fetch_reply_loses_no_job(
    server: RedisServer,
    proxy: FaultProxy,
    direct: redis_lib.Redis,
    celery_worker: Any,
    skip: int,
) -> None:
    """A fetch that takes jobs runs in Redis, but its reply is lost: the worker gives up on
    the connection after the health check and fetches again. The jobs that lost fetch took
    must run, and nothing may stay in flight: not those under new field numbers (which the
    next fetch must not hand out again), nor those that took over the fields of the acks it
    carried (which the worker must not forget)."""
    rule = proxy.drop_reply(FETCH_CALL, reply=carries_jobs, skip=skip)
    sent = push(direct, 12)
    worker = start_worker(celery_worker, proxy, server, pool="solo")
    assert rule.wait(30), f"no fetch reply was dropped; proxy: {proxy.counters}"
    assert_all_ran_once(direct, sent, worker, proxy)


def test_every_reply_stalled_for_4s_loses_no_job(
    server: RedisServer, proxy: FaultProxy, direct: redis_lib.Redis, celery_worker: Any
) -> None:
    """Every reply is held for 4 s (a frozen network) while the worker drains: its fetch
    runs in Redis meanwhile, and so do its other commands, whose replies all come late."""
    sent = push(direct, 24)
    worker = start_worker(celery_worker, proxy, server, pool="solo")
    wait_runs(direct, 3)
    fetches = proxy.counters.by_command.get("EVALSHA", 0)
    with proxy.stalled():
        time.sleep(4)
    assert proxy.counters.held >= 1
    assert proxy.counters.by_command.get("EVALSHA", 0) > fetches
    assert_all_ran_once(direct, sent, worker, proxy)


def test_a_fetch_reply_late_past_the_health_check_loses_no_job(
    server: RedisServer, proxy: FaultProxy, direct: redis_lib.Redis, celery_worker: Any
) -> None:
    """One fetch's reply (one that took jobs) comes 4 s late: kombu's health check has given
    up on the connection by then, and the worker fetched again on a new one."""
    sent = push(direct, 24)
    worker = start_worker(celery_worker, proxy, server, pool="solo")
    wait_runs(direct, 3)
    rule = proxy.delay(4000, FETCH_CALL, reply=carries_jobs, count=1)
    assert rule.wait(30), f"no fetch reply was delayed; proxy: {proxy.counters}"
    assert_all_ran_once(direct, sent, worker, proxy)


def test_replies_delayed_two_seconds_for_a_while_lose_nothing(
    server: RedisServer, proxy: FaultProxy, direct: redis_lib.Redis, celery_worker: Any
) -> None:
    """Every reply, on every connection, arrives 2 s late for 8 s (a congested link)."""
    sent = push(direct, 30)
    worker = start_worker(celery_worker, proxy, server, pool="prefork", concurrency=2)
    wait_runs(direct, 3)
    with proxy.delaying(2000):
        time.sleep(8)
    assert proxy.counters.delayed >= 3
    assert_all_ran_once(direct, sent, worker, proxy)


@pytest.mark.parametrize("when", ["before", "partial", "after", "all"])
def test_connections_cut_mid_command_repeatedly_lose_nothing(
    server: RedisServer,
    proxy: FaultProxy,
    direct: redis_lib.Redis,
    celery_worker: Any,
    when: str,
) -> None:
    """Four times while the worker drains: the fetch's connection is cut ``before`` its
    command reaches Redis, halfway through it (``partial``), or ``after`` Redis ran it (its
    reply lost with the connection); or ``all`` connections are cut at once while jobs run.
    Each time the worker reconnects and carries on."""
    sent = push(direct, 80, sleep=0.03)
    worker = start_worker(celery_worker, proxy, server, pool="threads", concurrency=4)
    for round_ in range(4):
        wait_runs(direct, 5 + 8 * round_, timeout=45)
        if when == "all":
            # A reconnect may be under way: cut once some connection is open again.
            wait_for(lambda: proxy.cut() >= 1, timeout=30, message="a connection to cut")
            continue
        reply = carries_jobs if when == "after" else None
        rule = proxy.cut_on(FETCH_CALL, when=when, reply=reply)  # type: ignore[arg-type]
        assert rule.wait(30), f"no fetch was cut {when}; proxy: {proxy.counters}"
    assert_all_ran_once(direct, sent, worker, proxy)


# -- Redis itself stalls ---------------------------------------------------------------------


def test_client_pause_write_loses_nothing(
    server: RedisServer, proxy: FaultProxy, direct: redis_lib.Redis, celery_worker: Any
) -> None:
    """``CLIENT PAUSE 3000 WRITE``: every write (each fetch is one) waits 3 s, past the
    health check, twice while the worker drains."""
    sent = push(direct, 30)
    worker = start_worker(celery_worker, proxy, server, pool="solo")
    for done in (3, 12):
        wait_runs(direct, done)
        assert direct.execute_command("CLIENT", "PAUSE", "3000", "WRITE")
        time.sleep(3.5)
    assert_all_ran_once(direct, sent, worker, proxy)


def test_debug_sleep_loses_nothing(
    server: RedisServer, proxy: FaultProxy, direct: redis_lib.Redis, celery_worker: Any
) -> None:
    """``DEBUG SLEEP 3``: Redis answers nobody for 3 s, twice while the worker drains; the
    fetch sent meanwhile runs when it wakes, after the worker gave up on it."""
    sent = push(direct, 30)
    worker = start_worker(celery_worker, proxy, server, pool="solo")
    for done in (3, 12):
        wait_runs(direct, done)
        assert direct.execute_command("DEBUG", "SLEEP", "3")
    assert_all_ran_once(direct, sent, worker, proxy)
