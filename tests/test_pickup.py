"""Instant pick-up on every queue of an idle worker (issue 14; ``kombu_sidekiq/wake.py``).

An idle worker waits with ``BRPOPLPUSH`` on its first queue and is woken (client-side tracking
and ``CLIENT UNBLOCK``) for a job in any other. The worker tests run with ``polling_interval``
5 s: a worker that waited on its queues in turn (the design before) would start a job in the
second or third queue up to 3.3 s late, so a bound of 1 s on every pick-up proves the wake-up
(the figure itself, a few milliseconds, is the bench's: ``bench/pickup.py``).

They also check what waking costs (a few commands a second when idle, nothing while busy:
tracking is off), what happens where Redis refuses ``CLIENT`` (the old way, said once in the
log) and after Redis restarts (the wake-up thread subscribes again).
"""

from __future__ import annotations

import inspect
import json
import random
import time
from collections import Counter
from typing import Any

import pytest
import redis as redis_lib
from kombu.transport import redis as kombu_redis
from support.redis_server import RedisServer
from support.waiting import wait_for
from support.worker import CeleryWorker, CeleryWorkerFactory

from kombu_sidekiq import job as jobs

pytestmark = pytest.mark.worker

QUEUES = ("critical", "default", "low")
STAMPS = "order:stamps"  # order_app's order.stamp: [pushed, started, queue]


def start(
    celery_worker: CeleryWorkerFactory,
    polling_interval: float = 5.0,
    setup: dict[str, Any] | None = None,
    **kw: Any,
) -> CeleryWorker:
    env = {
        "SIDEKIQ_SETUP": json.dumps({"poll_interval": 1, "heartbeat": False, **(setup or {})}),
        "TRANSPORT_OPTIONS": json.dumps({"polling_interval": polling_interval}),
    }
    kw.setdefault("queues", ",".join(QUEUES))
    return celery_worker(app_module="order_app", env=env, **kw)


def push_stamp(client: redis_lib.Redis, queue: str) -> None:
    job = jobs.build("order.stamp", [0.0], queue=queue)
    job["args"] = [time.time()]
    with client.pipeline(transaction=False) as pipe:
        pipe.sadd("queues", queue)
        pipe.lpush(f"queue:{queue}", jobs.dumps(job))
        pipe.execute()


def pickups(client: redis_lib.Redis, count: int, timeout: float = 30) -> list[tuple[float, str]]:
    """(seconds from push to start, queue) of the first ``count`` stamp jobs."""
    wait_for(lambda: client.llen(STAMPS) >= count, timeout=timeout, message=f"{count} stamps")
    stamps = [json.loads(raw) for raw in client.lrange(STAMPS, 0, count - 1)]
    return [(started - pushed, queue) for pushed, started, queue in stamps]


def trickle(client: redis_lib.Redis, count: int, seed: int) -> list[tuple[float, str]]:
    """``count`` jobs to random queues at random intervals; the pick-up of each."""
    rng = random.Random(seed)
    for _ in range(count):
        time.sleep(rng.uniform(0.05, 0.2))
        push_stamp(client, rng.choice(QUEUES))
    return pickups(client, count)


def idle_until_waiting(client: redis_lib.Redis) -> None:
    """The worker is idle: its wait is in, tracking on (the ``t`` flag of CLIENT LIST)."""
    wait_for(lambda: tracking_clients(client), timeout=15, message="a client with tracking on")


def tracking_clients(client: redis_lib.Redis) -> list[dict[str, Any]]:
    return [c for c in client.client_list() if "t" in c.get("flags", "")]


@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("prefork", 2), ("threads", 4)])
def test_a_job_pushed_to_any_queue_of_an_idle_worker_starts_promptly(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis, pool: str, concurrency: int
) -> None:
    start(celery_worker, pool=pool, concurrency=concurrency)
    idle_until_waiting(redis)
    got = trickle(redis, 30, seed=hash(pool) & 0xFFFF)
    late = sorted(seconds for seconds, _ in got)
    assert late[-1] < 1.0, f"pick-up times (s): {late}"
    assert set(Counter(queue for _, queue in got)) == set(QUEUES)


def test_strict_order_wakes_for_later_queues_too(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis
) -> None:
    """The wait is on ``critical`` (first in strict order): ``default`` and ``low`` jobs are
    the ones only a wake-up can start early."""
    start(celery_worker, setup={"queues": ["critical", "default", "low"]})
    idle_until_waiting(redis)
    waiting = [c for c in redis.client_list() if c.get("cmd") == "brpoplpush"]
    assert len(waiting) == 1
    for queue in ("low", "default", "low", "default"):
        push_stamp(redis, queue)
        time.sleep(0.3)
    assert all(seconds < 1.0 for seconds, _ in pickups(redis, 4))


def test_a_warm_stop_of_an_idle_worker_does_not_wait_for_its_wait_to_end(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis
) -> None:
    """The wait lasts ``polling_interval`` (60 s here) and kombu reads its reply before the
    channel closes: the channel ends it with ``CLIENT UNBLOCK`` first."""
    worker = start(celery_worker, polling_interval=60.0)
    idle_until_waiting(redis)
    time.sleep(0.5)
    started = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - started < 4.0


def test_the_kombu_internals_waking_relies_on_are_still_there() -> None:
    base = kombu_redis.Channel
    assert list(inspect.signature(base._after_fork).parameters) == ["self"]
    assert base.queue_order_strategy == "round_robin"  # the one value the transport takes
    assert isinstance(base.active_queues, property)
    assert "self._brpop_read()" in inspect.getsource(base.close)  # the wait's reply is read


def test_an_idle_worker_waits_once_a_second_and_tracking_is_off_while_busy(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis
) -> None:
    """Idle, with ``polling_interval`` 1: one wait a second (not one per queue), each followed
    by one fetch. Busy (a backlog of 3,000 jobs in ``low``): tracking goes off after three
    fetches that took jobs, so a busy worker pays nothing for waking; idle again, it is back on."""
    start(celery_worker, polling_interval=1.0)
    idle_until_waiting(redis)
    before = redis.info("commandstats")
    time.sleep(4)
    after = redis.info("commandstats")

    def calls(name: str) -> int:
        key = f"cmdstat_{name}"
        return int(after.get(key, {}).get("calls", 0)) - int(before.get(key, {}).get("calls", 0))

    assert 3 <= calls("brpoplpush") <= 5, after
    assert calls("evalsha") <= calls("brpoplpush") + 2

    payloads = [jobs.dumps(jobs.build("order.noop", [], queue="low")) for _ in range(3_000)]
    redis.lpush("queue:low", *payloads)
    seen_off = False
    deadline = time.monotonic() + 60
    while redis.llen("order:log") < 3_000 and time.monotonic() < deadline:
        if redis.llen("order:log") > 100 and not tracking_clients(redis):
            seen_off = True
        time.sleep(0.02)
    assert redis.llen("order:log") == 3_000
    assert seen_off, "tracking stayed on while the worker drained 3,000 jobs"
    idle_until_waiting(redis)


@pytest.mark.parametrize("refused", ["-client", "-client|tracking"])
def test_where_redis_refuses_client_commands_the_worker_waits_in_turn_and_says_so_once(
    redis_server_factory: Any, celery_worker: CeleryWorkerFactory, refused: str
) -> None:
    """An ACL without ``CLIENT`` (or without ``CLIENT TRACKING``): no waking; the worker waits
    on its queues in turn (``polling_interval`` / 3 each), as before, and logs why once."""
    server: RedisServer = redis_server_factory(
        extra_args=[
            *("--user", "default", "on", "nopass", "~*", "&*", "+@all", refused),
            *("--user", "admin", "on", ">admin", "~*", "&*", "+@all"),  # the test's own
        ]
    )
    client = server.client(username="admin", password="admin")
    url = f"sidekiq://127.0.0.1:{server.port}/0"
    worker = start(celery_worker, polling_interval=1.0, broker_url=url)
    time.sleep(1.5)
    got = trickle(client, 12, seed=7)
    assert all(seconds < 1.5 for seconds, _ in got), got
    assert not tracking_clients(client)
    text = worker.log_text()
    assert text.count("instant pick-up on every queue is off") == 1, worker.log_tail(30)
    assert "no permissions" in text
    client.close()


def test_waking_comes_back_after_redis_restarts(
    redis_server_factory: Any, celery_worker: CeleryWorkerFactory
) -> None:
    server: RedisServer = redis_server_factory(extra_args=["--appendonly", "yes"])
    client = server.client(socket_timeout=5)
    url = f"sidekiq://127.0.0.1:{server.port}/0"
    start(celery_worker, broker_url=url)
    idle_until_waiting(client)
    assert all(seconds < 1.0 for seconds, _ in trickle(client, 6, seed=1))
    server.restart()
    client = server.client(socket_timeout=5)
    wait_for(
        lambda: tracking_clients(client),
        timeout=30,
        ignore=(redis_lib.ConnectionError,),
        message="tracking on again after the restart",
    )
    client.delete(STAMPS)
    got = trickle(client, 6, seed=2)
    assert all(seconds < 1.0 for seconds, _ in got), got
    client.close()
