"""Sidekiq's three queue orders: strict, weighted and random (issue 14).

Unit tests check the order itself (``kombu_sidekiq.order``) and the ways to configure it
(``setup(queue_order=, queue_weights=, queues=)``, the worker's ``-q name,weight``); the worker
tests run real ``celery -A order_app worker`` processes on three queues and read, from Redis,
which queue each job came from, in the order they ran:

* strict never serves a later queue while an earlier one has a job, even jobs that arrive
  while the worker runs;
* weighted shares over 10,000 jobs are those of the weights, within 5 percentage points and
  within 6 standard errors (the bound is computed from the number of draws, so the test
  cannot flake: a 6-sigma miss has odds of about 1 in 500 million);
* no job is lost or run twice with any order while a fault proxy cuts every connection and
  loses the reply of a wait that took a job.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis as redis_lib
from celery import Celery
from support.faultproxy import FaultProxy
from support.recorded import inflight
from support.redis_server import RedisServer
from support.waiting import wait_for
from support.worker import CeleryWorker, CeleryWorkerFactory

import celery_sidekiq
from celery_sidekiq.app import config_of
from kombu_sidekiq import job as jobs
from kombu_sidekiq.order import QueueOrder

QUEUES = ("critical", "default", "low")
LOG = "order:log"


# --- the order itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("notation", "mode", "weights"),
    [
        (["critical", "default", "low"], "strict", [("critical", 0), ("default", 0), ("low", 0)]),
        (["critical,0", "low"], "strict", [("critical", 0), ("low", 0)]),
        (
            ["critical,3", "default,2", "low,1"],
            "weighted",
            [("critical", 3), ("default", 2), ("low", 1)],
        ),
        (["a,1", "b,1", "c,1"], "random", [("a", 1), ("b", 1), ("c", 1)]),
        # Sidekiq 7: a queue without a weight counts once in a weighted order
        (["a,3", "b"], "weighted", [("a", 3), ("b", 1)]),
        ([" a , 2 ", "b,1"], "weighted", [("a", 2), ("b", 1)]),
    ],
)
def test_sidekiq_notation_reads_as_sidekiq_7_reads_it(
    notation: list[str], mode: str, weights: list[tuple[str, int]]
) -> None:
    order = QueueOrder.from_sidekiq(notation)
    assert (order.mode, list(order.weights)) == (mode, weights)


@pytest.mark.parametrize(
    ("notation", "says"),
    [
        ("critical,3", "give a list"),
        (["critical,high"], "whole number >= 0"),
        (["critical,-1"], "whole number >= 0"),
        (["critical,1,2"], "'name' or 'name,weight'"),
        ([",3"], "'name' or 'name,weight'"),
        (["a", "a,2"], "listed twice"),
        ([], "at least one"),
    ],
)
def test_bad_notation_fails_saying_what_to_write(notation: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        QueueOrder.from_sidekiq(notation)


def test_strict_takes_the_configured_order_and_unlisted_queues_last() -> None:
    order = QueueOrder.from_sidekiq(["critical", "default", "low"])
    ranked = order.ranked(["low", "extra", "default", "critical"])
    assert ranked == ["critical", "default", "low", "extra"]
    rng = random.Random(1)
    assert all(order.fetch_order(ranked, rng) == ranked for _ in range(100))
    # no configured list: the order the worker consumes them in (-Q's)
    assert QueueOrder().ranked(["b", "a", "c"]) == ["b", "a", "c"]


def first_shares(order: QueueOrder, draws: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    firsts = Counter(order.fetch_order(list(QUEUES), rng)[0] for _ in range(draws))
    return {queue: firsts[queue] / draws for queue in QUEUES}


def within(share: float, expected: float, draws: int, sigmas: float = 6.0) -> bool:
    """``share`` of ``draws`` independent draws is within ``sigmas`` standard errors of
    ``expected``, and within 5 percentage points."""
    error = math.sqrt(expected * (1 - expected) / draws)
    return abs(share - expected) <= min(sigmas * error, 0.05)


def test_weighted_and_random_orders_put_a_queue_first_weight_over_total_of_the_time() -> None:
    weighted = QueueOrder.from_sidekiq(["critical,3", "default,2", "low,1"])
    draws = 60_000
    shares = first_shares(weighted, draws, seed=14)
    for queue, expected in zip(QUEUES, (3 / 6, 2 / 6, 1 / 6), strict=True):
        assert within(shares[queue], expected, draws), (queue, shares)
    shares = first_shares(QueueOrder("random"), draws, seed=15)
    assert all(within(share, 1 / 3, draws) for share in shares.values()), shares
    # every queue is in every fetch's order, once
    rng = random.Random(3)
    assert all(sorted(weighted.fetch_order(list(QUEUES), rng)) == sorted(QUEUES) for _ in range(50))


def test_reported_weights_say_what_the_order_does() -> None:
    assert QueueOrder().reported(["a", "b"]) == {"a": 0, "b": 0}
    assert QueueOrder.from_sidekiq(["a,3", "b"]).reported(["b", "a", "c"]) == {
        "a": 3,
        "b": 1,
        "c": 1,
    }
    assert QueueOrder("random").reported(["a", "b"]) == {"a": 1, "b": 1}


# --- configuring it -----------------------------------------------------------------------


def make_app(**options: Any) -> Celery:
    app = Celery("order_test", broker="sidekiq://127.0.0.1:1/0")
    return celery_sidekiq.setup(app, **options)


@pytest.mark.parametrize(
    ("options", "mode", "weights"),
    [
        ({}, "strict", []),
        ({"queue_order": "random"}, "random", []),
        ({"queue_weights": {"critical": 3, "low": 1}}, "weighted", [["critical", 3], ["low", 1]]),
        (
            {"queue_order": "weighted", "queue_weights": {"a": 2, "b": 1}},
            "weighted",
            [["a", 2], ["b", 1]],
        ),
        ({"queues": ["critical", "low"]}, "strict", [["critical", 0], ["low", 0]]),
        ({"queues": ("a,1", "b,1")}, "random", [["a", 1], ["b", 1]]),
    ],
)
def test_setup_options_reach_the_transport(
    options: dict[str, Any], mode: str, weights: list[Any]
) -> None:
    app = make_app(**options)
    transport = app.conf.broker_transport_options
    assert (transport["queue_order"], transport["queue_weights"]) == (mode, weights)
    assert config_of(app).order.mode == mode


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"queue_order": "fifo"}, r"use 'strict' \(the order of -Q"),
        ({"queue_order": "weighted"}, r"needs queue_weights=\{queue: weight"),
        ({"queue_order": "strict", "queue_weights": {"a": 2}}, "takes no weights"),
        ({"queue_order": "random", "queue_weights": {"a": 2}}, "takes no weights"),
        ({"queue_weights": {"a": 0}}, "whole number >= 1"),
        ({"queue_weights": {"a": "3"}}, "whole number >= 1"),
        ({"queue_weights": {"a": True}}, "whole number >= 1"),
        ({"queue_weights": ["a", "b"]}, "give a dict"),
        ({"queues": "critical,3"}, "give a list"),
        ({"queues": ["critical,x"]}, "whole number"),
        ({"queues": ["a,1"], "queue_order": "random"}, "already says the order"),
        ({"queues": ["a,1"], "queue_weights": {"a": 1}}, "already says the order"),
    ],
)
def test_bad_order_options_fail_at_setup_saying_what_to_change(
    options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        make_app(**options)


def test_the_transport_refuses_bad_order_options_and_kombus_own_strategy(
    broker_url: str,
) -> None:
    bad = [
        ({"queue_order": "fifo"}, "queue_order/queue_weights: queue order 'fifo'"),
        ({"queue_order_strategy": "priority"}, "does not take queue_order_strategy"),
    ]
    for options, says in bad:
        with (
            kombu.Connection(broker_url, transport_options=options) as conn,
            pytest.raises(ValueError, match=says),
        ):
            conn.default_channel  # noqa: B018


# --- the transport, without a worker ------------------------------------------------------


def push(client: redis_lib.Redis, queue: str, count: int, task: str = "order.noop") -> None:
    payloads = [jobs.dumps(jobs.build(task, [queue, n], queue=queue)) for n in range(count)]
    client.sadd("queues", queue)
    client.lpush(f"queue:{queue}", *payloads)


def consume(broker_url: str, count: int, **options: Any) -> list[str]:
    """The queues of the first ``count`` jobs a kombu consumer with prefetch 1 takes."""
    got: list[str] = []

    def on_message(body: Any, message: Any) -> None:
        got.append(message.delivery_info["routing_key"])
        message.ack()

    queues = [kombu.Queue(q) for q in QUEUES]
    with (
        kombu.Connection(broker_url, transport_options=options) as conn,
        conn.Consumer(queues, callbacks=[on_message]) as consumer,
    ):
        consumer.qos(prefetch_count=1)
        deadline = time.monotonic() + 30
        while len(got) < count and time.monotonic() < deadline:
            conn.drain_events(timeout=1)
    return got


def test_strict_order_in_the_transport_empties_each_queue_before_the_next(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    for queue in reversed(QUEUES):
        push(redis, queue, 5)
    assert consume(broker_url, 15) == ["critical"] * 5 + ["default"] * 5 + ["low"] * 5


def test_strict_order_in_the_transport_follows_the_configured_ranks(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    for queue in QUEUES:
        push(redis, queue, 3)
    weights = [["low", 0], ["critical", 0]]  # default: not listed, so last
    got = consume(broker_url, 9, queue_order="strict", queue_weights=weights)
    assert got == ["low"] * 3 + ["critical"] * 3 + ["default"] * 3


def test_a_queue_of_kombus_own_beside_the_task_queues_is_still_read(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    """An auto-deleted queue (kombu's replies) consumed with two task queues: its messages
    are kombu envelopes under kombu's key, read by the fetch whatever the order."""
    got: list[Any] = []
    queues = [kombu.Queue("critical"), kombu.Queue("low"), kombu.Queue("replies", auto_delete=True)]
    with (
        kombu.Connection(broker_url) as conn,
        conn.Consumer(queues, callbacks=[lambda body, message: got.append(body)]),
    ):
        conn.Producer().publish({"reply": 42}, routing_key="replies", serializer="json")
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError, socket.timeout):
                conn.drain_events(timeout=1)
    assert got == [{"reply": 42}]


# --- real workers ---------------------------------------------------------------------------


class SidekiqCommandLine(CeleryWorker):
    """A worker started with Sidekiq's ``-q name,weight`` options instead of ``-Q``."""

    @property
    def argv(self) -> list[str]:
        argv = super().argv
        at = argv.index("-Q")
        return argv[:at] + argv[at + 2 :]


def log(redis: redis_lib.Redis, count: int, timeout: float = 60) -> list[str]:
    wait_for(lambda: redis.llen(LOG) >= count, timeout=timeout, message=f"{count} jobs ran")
    return [queue.decode() for queue in redis.lrange(LOG, 0, count - 1)]


def order_worker(
    celery_worker: CeleryWorkerFactory, setup: dict[str, Any] | None = None, **kw: Any
) -> CeleryWorker:
    env = {"SIDEKIQ_SETUP": json.dumps({"poll_interval": 1, "heartbeat": False, **(setup or {})})}
    kw.setdefault("queues", ",".join(QUEUES))
    return celery_worker(app_module="order_app", env=env, **kw)


@pytest.mark.worker
def test_strict_never_serves_a_later_queue_while_an_earlier_one_has_a_job(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis
) -> None:
    """Each ``low`` job pushes one job to ``critical`` and one to ``default`` as it runs: with
    one job taken at a time, the next two jobs must be those, critical first, before the next
    ``low`` job; and the ``default`` backlog goes before any ``low`` job."""
    spawners = [jobs.build("order.spawn", ["critical", "default"], queue="low") for _ in range(10)]
    redis.lpush("queue:low", *map(jobs.dumps, spawners))
    push(redis, "default", 10)
    order_worker(celery_worker, extra_args=["--prefetch-multiplier", "1"])
    ran = log(redis, 40)
    assert ran == ["default"] * 10 + ["low", "critical", "default"] * 10
    assert redis.llen("queue:low") == redis.llen("queue:critical") == 0


@pytest.mark.worker
@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_strict_drains_a_backlog_queue_by_queue_with_prefetch(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis, pool: str
) -> None:
    """With the default prefetch (batches of jobs per fetch), each fetch still takes the
    queues in order: every ``critical`` job runs before any ``default`` one, and so on."""
    for queue in reversed(QUEUES):
        push(redis, queue, 200)
    order_worker(celery_worker, pool=pool, concurrency=1)
    ran = log(redis, 600)
    assert ran == ["critical"] * 200 + ["default"] * 200 + ["low"] * 200


@pytest.mark.worker
def test_weighted_shares_over_10000_jobs_follow_the_weights(
    celery_worker: CeleryWorkerFactory, broker_url: str, redis: redis_lib.Redis, tmp_path: Path
) -> None:
    """``celery worker -q critical,3 -q default,2 -q low,1``, Sidekiq's own command line, one
    job per fetch (so each job is one independent draw of the order): every queue has a
    backlog the whole time, and the share of each is its weight over the total."""
    for queue in QUEUES:
        push(redis, queue, 10_000)
    worker = SidekiqCommandLine(
        broker_url,
        tmp_path / "weighted.log",
        app_module="order_app",
        env={"SIDEKIQ_SETUP": json.dumps({"poll_interval": 1, "heartbeat": False})},
        extra_args=["-q", "critical,3", "-q", "default,2", "-q", "low,1",
                    "--prefetch-multiplier", "1"],
    )  # fmt: skip
    worker.start(timeout=60)
    try:
        ran = log(redis, 10_000, timeout=240)
    finally:
        worker.stop()
    shares = {queue: n / len(ran) for queue, n in Counter(ran).items()}
    for queue, expected in zip(QUEUES, (3 / 6, 2 / 6, 1 / 6), strict=True):
        assert within(shares[queue], expected, len(ran)), shares
    assert all(redis.llen(f"queue:{queue}") > 0 for queue in QUEUES)  # never ran dry


@pytest.mark.worker
def test_random_order_shares_the_queues_evenly(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis
) -> None:
    for queue in QUEUES:
        push(redis, queue, 3_000)
    order_worker(
        celery_worker,
        {"queue_order": "random"},
        extra_args=["--prefetch-multiplier", "1"],
    )
    ran = log(redis, 3_000, timeout=120)
    counts = Counter(ran)
    assert all(within(counts[queue] / len(ran), 1 / 3, len(ran)) for queue in QUEUES), counts


@pytest.mark.worker
def test_setup_queues_are_what_a_worker_consumes_unless_q_says_otherwise(
    celery_worker: CeleryWorkerFactory, broker_url: str, redis: redis_lib.Redis, tmp_path: Path
) -> None:
    """``setup(queues=["low", "critical"])``: a worker started without ``-Q`` consumes those,
    in that strict order; ``-Q default`` overrides the list."""
    for queue in QUEUES:
        push(redis, queue, 3)
    env = {"SIDEKIQ_SETUP": json.dumps({"queues": ["low", "critical"], "heartbeat": False})}
    worker = SidekiqCommandLine(broker_url, tmp_path / "setup.log", app_module="order_app", env=env)
    worker.start()
    try:
        assert log(redis, 6) == ["low"] * 3 + ["critical"] * 3
        time.sleep(0.5)
        assert redis.llen(LOG) == 6 and redis.llen("queue:default") == 3
    finally:
        worker.stop()
    redis.delete(LOG)
    celery_worker(app_module="order_app", queues="default", env=env)
    assert log(redis, 3) == ["default"] * 3


@pytest.mark.worker
def test_q_and_capital_q_together_stop_the_worker_saying_why(
    broker_url: str, redis: redis_lib.Redis, tmp_path: Path
) -> None:
    worker = CeleryWorker(
        broker_url,
        tmp_path / "both.log",
        app_module="order_app",
        queues="default",
        extra_args=["-q", "critical,3"],
    )
    with pytest.raises((AssertionError, RuntimeError)):
        worker.start(timeout=20)
    assert worker.proc is not None and worker.proc.wait(10) == 78
    assert "-Q and -q critical,3 both name the queues: use one" in worker.log_text()


# --- nothing lost or run twice, with faults ---------------------------------------------------

#: kombu's checks made short, as in test_faults.py: an overdue wait is given up on after 2 s.
FAULT_TRANSPORT = {"polling_interval": 1, "health_check_interval": 1, "socket_timeout": 10}

ORDERS = {
    "strict": {},
    "weighted": {"queue_weights": {"critical": 3, "default": 2, "low": 1}},
    "random": {"queue_order": "random"},
}


@pytest.fixture
def fault_server(redis_server_factory: Any) -> RedisServer:
    return redis_server_factory(  # type: ignore[no-any-return]
        extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    )


@pytest.fixture
def proxy(fault_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy(fault_server.port) as proxy:
        yield proxy


def landed_a_job(reply: bytes) -> bool:
    """A wait's reply that moved a job (a bulk string; nil is ``$-1`` or RESP3's ``_``)."""
    return reply.startswith(b"$") and not reply.startswith(b"$-1")


@pytest.mark.worker
@pytest.mark.parametrize("name", list(ORDERS))
def test_no_job_is_lost_or_run_twice_with_each_order_through_faults(
    celery_worker: CeleryWorkerFactory,
    fault_server: RedisServer,
    proxy: FaultProxy,
    name: str,
) -> None:
    """Jobs arrive one by one in random queues of an idle worker while the proxy cuts every
    connection (the worker's, its wake-up thread's) twice and loses the reply of a wait that
    moved a job into the landing list: every job runs exactly once, nothing stays behind."""
    direct = fault_server.client(socket_timeout=15)
    env = {
        "RECORD_URL": fault_server.url,
        "TRANSPORT_OPTIONS": json.dumps(FAULT_TRANSPORT),
        "SIDEKIQ_SETUP": json.dumps({"poll_interval": 0.5, "fetch_lease": 10, **ORDERS[name]}),
    }
    worker = celery_worker(
        app_module="chaos_app", broker_url=proxy.url("sidekiq"), queues=",".join(QUEUES), env=env
    )
    rng = random.Random(name)
    sent = []
    lost = proxy.drop_reply(r"BRPOPLPUSH queue:critical\b", reply=landed_a_job, count=1)
    for n in range(45):
        queue = "critical" if n == 30 else rng.choice(QUEUES)  # n == 30: a wait lands it
        job = jobs.build("Chaos::Work", ["order", n, 0.0], queue=queue)
        direct.sadd("queues", queue)
        direct.lpush(f"queue:{queue}", jobs.dumps(job))
        sent.append(str(job["jid"]))
        if n in (10, 20):
            proxy.cut()
        time.sleep(rng.uniform(0.05, 0.15))

    def ran() -> Counter[str]:
        return Counter(json.loads(value)["id"] for value in direct.hvals("chaos:runs"))

    def done() -> bool:
        queued = sum(direct.llen(f"queue:{q}") for q in QUEUES)
        return set(ran()) >= set(sent) and not queued and inflight(direct) == 0

    wait_for(done, timeout=60, interval=0.2, message=f"every job ran; proxy {proxy.counters}")
    time.sleep(1)  # a late second run would show now
    assert set(ran()) == set(sent) and all(n == 1 for n in ran().values()), ran()
    assert direct.zcard("dead") == direct.zcard("retry") == 0
    assert worker.running, worker.log_tail(40)
    assert lost.hits == 1, f"no wait reply was lost; proxy: {proxy.counters}"
    direct.close()
