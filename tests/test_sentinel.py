"""``sidekiq-sentinel://``: a real celery worker follows the master through a Sentinel failover.

Each test runs its own master, replica and sentinels (Debian's redis-sentinel,
``support.sentinel``). The worker runs a small app module written to the test's temp dir: it
records every run in the session Redis, which no failover touches.
"""

from __future__ import annotations

import inspect
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from kombu import Connection
from kombu.exceptions import OperationalError
from support.env import missing_or_fail
from support.redis_server import free_port
from support.sentinel import MASTER_NAME, SentinelGroup, sentinel_available
from support.waiting import wait_for

import celery_sidekiq
from kombu_sidekiq import job as jobs
from kombu_sidekiq import transport
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker

APP = textwrap.dedent(
    '''
    """The sentinel tests' worker app: ``Sentinel::Record`` appends its task id to RUNS_KEY."""
    import os
    import time

    import redis
    from celery import Celery

    import celery_sidekiq

    app = Celery("sentinel_app", broker=os.environ["BROKER_URL"])
    app.conf.broker_transport_options = {"master_name": os.environ["MASTER_NAME"]}
    app.conf.worker_hijack_root_logger = False
    celery_sidekiq.setup(app, poll_interval=0.5)
    runs = redis.Redis.from_url(os.environ["RUNS_URL"])


    @app.task(bind=True, name="Sentinel::Record")
    def record(self, n, pause=0.0):
        time.sleep(pause)
        runs.rpush(os.environ["RUNS_KEY"], self.request.id)
    '''
)

RUNS_KEY = "sentinel:runs"


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    if not sentinel_available():
        missing_or_fail("redis-sentinel (Debian package redis-sentinel)")
    with SentinelGroup(sentinels=2) as started:
        yield started


@pytest.fixture
def producer(group: SentinelGroup) -> Iterator[Celery]:
    app = Celery("sentinel-producer", broker=group.url())
    app.conf.broker_transport_options = {"master_name": MASTER_NAME}
    celery_sidekiq.setup(app)
    yield app
    app.close()


def start_worker(celery_worker: Any, tmp_path: Path, url: str, redis_url: str) -> Any:
    app_dir = tmp_path / "sentinel_app"
    app_dir.mkdir(exist_ok=True)
    (app_dir / "sentinel_app.py").write_text(APP)
    env = {"MASTER_NAME": MASTER_NAME, "RUNS_URL": redis_url, "RUNS_KEY": RUNS_KEY}
    return celery_worker(app_module="sentinel_app", app_dir=app_dir, broker_url=url, env=env)


def run_ids(redis: redis_lib.Redis) -> set[str]:
    return {item.decode() for item in redis.lrange(RUNS_KEY, 0, -1)}


def wait_ran(redis: redis_lib.Redis, sent: list[str], timeout: float, message: str) -> None:
    expected = set(sent)
    wait_for(lambda: run_ids(redis) >= expected, timeout=timeout, message=message)


def send(producer: Celery, numbers: range, pause: float = 0.0) -> list[str]:
    # Generous publish retries: a producer sending while the master is away waits for the
    # sentinels to name the new one instead of failing.
    policy = {"max_retries": 50, "interval_start": 0.1, "interval_step": 0.1, "interval_max": 0.2}
    return [
        producer.send_task("Sentinel::Record", (n, pause), retry_policy=policy).id for n in numbers
    ]


# -- the scheme and the classes --------------------------------------------------------------


def test_the_scheme_selects_our_sentinel_transport() -> None:
    connection = Connection(
        "sidekiq-sentinel://127.0.0.1:26379;sidekiq-sentinel://127.0.0.1:26380/0"
    )
    assert connection.transport_cls == "sidekiq-sentinel"
    assert connection.transport.Channel is transport.SentinelChannel
    assert connection.transport.default_port == 26379
    assert len(connection.alt) == 2


def test_our_channel_overrides_win_and_the_sentinel_pool_too() -> None:
    channel = transport.SentinelChannel
    for name in ("_put", "_brpop_start", "_get", "_envelope", "QoS", "_size"):
        assert getattr(channel, name) is getattr(transport.Channel, name), name
    mro = channel.__mro__
    assert mro.index(transport.Channel) < mro.index(transport.kombu_redis.SentinelChannel)
    # the kombu internals our pool override stands on
    kombu_pool = inspect.getsource(transport.kombu_redis.SentinelChannel._get_pool)
    assert "self._sentinel_managed_pool(asynchronous)" in kombu_pool
    closing = inspect.getsource(transport.kombu_redis.Channel._disconnect_pools)
    assert "self._sentinel_manager" in closing and "self._async_sentinel_manager" in closing
    assert channel._get_pool is transport.kombu_redis.SentinelChannel._get_pool
    assert channel.connection_class is transport.kombu_redis.sentinel.SentinelManagedConnection
    options = set(channel.from_transport_options)
    assert {"master_name", "sentinel_kwargs", "namespace", "sidekiq_version"} <= options
    assert len(channel.from_transport_options) == len(options)


def test_a_missing_master_name_fails_saying_what_to_set() -> None:
    url = "sidekiq-sentinel://127.0.0.1:26379/0"
    with Connection(url) as connection, pytest.raises(ValueError, match="master_name"):
        connection.connect()


def test_every_listed_sentinel_is_asked_and_the_db_holds_for_all(group: SentinelGroup) -> None:
    """The first address is dead (kombu's own pool would have asked only that one) and only
    the last one carries the db (kombu would use db 0 until a reconnect switched addresses)."""
    url = f"sidekiq-sentinel://127.0.0.1:{free_port()};" + group.url(db=3)
    started = time.monotonic()
    with Connection(url, transport_options={"master_name": MASTER_NAME}) as connection:
        connection.default_channel.sidekiq.push(jobs.build("Sentinel::Record", [1]))
    # No retries with backoff on the dead one (redis-py's default policy spends ~3.5 s there):
    # the next sentinel is the retry.
    assert time.monotonic() - started < 2
    with group.master.client(db=3) as master:
        assert master.llen("queue:default") == 1


def test_the_masters_password_is_sent_and_a_refused_one_is_explained() -> None:
    if not sentinel_available():
        missing_or_fail("redis-sentinel (Debian package redis-sentinel)")
    options = {"master_name": MASTER_NAME}
    with SentinelGroup(password="master-pass") as group:
        good = group.url().replace("sentinel://", "sentinel://:master-pass@")
        with Connection(good, transport_options=options) as connection:
            connection.default_channel.sidekiq.push(jobs.build("Sentinel::Record", [1]))
        with group.master.client() as master:
            assert master.llen("queue:default") == 1
        bad = group.url().replace("sentinel://", "sentinel://:wrong-pass@")
        refusing = Connection(bad, transport_options=options)
        with pytest.raises(OperationalError) as refused:
            refusing.ensure_connection(max_retries=0)
        refusing.release()
    message = str(refused.value)
    assert message.startswith("authentication failed for user 'default' at the master named by")
    assert "check the user name and password in the broker URL" in message
    assert "wrong-pass" not in message


def test_addresses_naming_different_dbs_are_refused() -> None:
    url = "sidekiq-sentinel://127.0.0.1:26379/1;sidekiq-sentinel://127.0.0.1:26380/2"
    connection = Connection(url, transport_options={"master_name": MASTER_NAME})
    with pytest.raises(ValueError, match="different dbs"):
        connection.connect()
    connection.release()


# -- failover ------------------------------------------------------------------------------


@pytest.mark.parametrize("kill", [True, False], ids=["master-killed", "sentinel-failover"])
def test_the_worker_follows_the_master_through_a_failover(
    kill: bool,
    group: SentinelGroup,
    producer: Celery,
    celery_worker: Any,
    redis: redis_lib.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    worker = start_worker(celery_worker, tmp_path, group.url(), redis_url)
    sent = send(producer, range(30), pause=0.05)
    wait_for(lambda: len(run_ids(redis)) >= 5, timeout=20, message="the worker started consuming")

    new_master = group.failover(kill=kill)  # mid-stream: jobs are still queued

    sent += send(producer, range(30, 60))
    # Ruby (or anybody) writing to the new master directly is consumed too.
    with new_master.client() as master:
        ruby_job = jobs.build("Sentinel::Record", [60])
        Client(master).push(ruby_job)
    sent.append(ruby_job["jid"])

    wait_ran(redis, sent, 60, "every job sent before and after the failover ran")
    with new_master.client() as master:
        assert master.llen("queue:default") == 0
    assert worker.running, worker.log_tail()
    assert run_ids(redis) == set(sent)  # and nothing ran that was not sent


def test_an_idle_worker_blocked_on_the_demoted_master_reconnects(
    group: SentinelGroup,
    producer: Celery,
    celery_worker: Any,
    redis: redis_lib.Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Demoting a master answers its blocked clients with an UNBLOCKED error, not a dropped
    connection; the worker must take it as one, not die of it."""
    worker = start_worker(celery_worker, tmp_path, group.url(), redis_url)
    sent = send(producer, range(1))
    wait_ran(redis, sent, 20, "the first job ran")
    for _ in range(2):  # there and back: each time the worker waits on the master demoted
        group.failover()
        sent += send(producer, range(1))
        wait_ran(redis, sent, 30, "a job after the failover")
    assert worker.running, worker.log_tail()
