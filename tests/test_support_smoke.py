"""Smoke tests of the test infrastructure itself (not of kombu_sidekiq / celery_sidekiq)."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from pathlib import Path
from typing import cast

import pytest
import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.env import missing_or_fail
from support.redis_server import RedisServer, RedisServerFactory
from support.ruby import SidekiqProcessFactory, ruby_eval, ruby_push
from support.waiting import wait_for
from support.worker import CeleryWorkerFactory

# --- waiting / env -------------------------------------------------------------------------


def test_wait_for_returns_value_and_reports_timeout() -> None:
    calls = iter([0, 0, 7])
    assert wait_for(lambda: next(calls), timeout=2) == 7
    with pytest.raises(AssertionError, match=r"never true .*last value: \[\]"):
        wait_for(list, timeout=0.2, message="never true")


def test_wait_for_propagates_unless_ignored() -> None:
    def boom() -> bool:
        raise KeyError("x")

    with pytest.raises(KeyError):
        wait_for(boom, timeout=5)
    with pytest.raises(AssertionError, match="KeyError"):
        wait_for(boom, timeout=0.2, ignore=(KeyError,))


def test_missing_program_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        missing_or_fail("thing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        missing_or_fail("thing")


# --- redis-server --------------------------------------------------------------------------


def test_session_redis_is_flushed_and_urls(
    redis: redis_lib.Redis, redis_server: RedisServer, redis_url: str, broker_url: str
) -> None:
    assert redis.dbsize() == 0
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert broker_url == f"sidekiq://127.0.0.1:{redis_server.port}/0"
    redis.set("leftover", "1")  # the next test's `redis` fixture must flush this


def test_redis_server_restart_keeps_port_and_drops_data(
    redis_server_factory: RedisServerFactory,
) -> None:
    server = redis_server_factory()
    client = server.client(decode_responses=True)
    client.set("k", "v")
    config = client.config_get("save") | client.config_get("appendonly")
    assert config == {"save": "", "appendonly": "no"}
    port = server.port

    server.restart()
    assert server.port == port
    # the same client object reconnects to the restarted server
    assert wait_for(client.ping, timeout=5, ignore=(redis_lib.ConnectionError,))
    assert client.get("k") is None  # persistence is off


def test_redis_server_password(redis_server_factory: RedisServerFactory) -> None:
    server = redis_server_factory(password="s3cret")
    assert ":s3cret@" in server.url
    assert redis_lib.Redis.from_url(server.url).ping()
    with pytest.raises(redis_lib.AuthenticationError):
        server.client(password=None, retry=Retry(NoBackoff(), 0)).ping()


# --- ruby / sidekiq.rb ---------------------------------------------------------------------


@pytest.mark.interop
def test_ruby_push_writes_sidekiq_job(
    require_ruby: None, redis: redis_lib.Redis, redis_url: str
) -> None:
    args = [1, "two", {"three": [3.5, None]}, "quote\"'`$x"]
    jid = ruby_push(redis_url, "RubyRecorder", args)
    assert len(jid) == 24

    raw = redis.lrange("queue:default", 0, -1)
    assert len(raw) == 1
    job = json.loads(raw[0])
    assert job["class"] == "RubyRecorder"
    assert job["args"] == args
    assert job["jid"] == jid
    assert job["retry"] is True
    assert job["queue"] == "default"
    assert isinstance(job["created_at"], float)
    assert isinstance(job["enqueued_at"], float)
    assert redis.smembers("queues") == {b"default"}

    # scheduled job: goes to the "schedule" zset scored by its run time
    at = time.time() + 3600
    jid2 = ruby_push(redis_url, "RubyRecorder", [], queue="low", at=at)
    scheduled = cast(list[tuple[bytes, float]], redis.zrange("schedule", 0, -1, withscores=True))
    [(member, score)] = scheduled
    assert json.loads(member)["jid"] == jid2
    assert score == pytest.approx(at, abs=0.01)
    assert ruby_eval(redis_url, "puts Sidekiq::ScheduledSet.new.size") == "1"


@pytest.mark.interop
def test_ruby_eval_reports_errors(require_ruby: None, redis_url: str) -> None:
    with pytest.raises(RuntimeError, match="nope from ruby"):
        ruby_eval(redis_url, 'raise "nope from ruby"')


@pytest.mark.interop
def test_sidekiq_process_runs_ruby_jobs(
    sidekiq_process: SidekiqProcessFactory, redis: redis_lib.Redis, redis_url: str
) -> None:
    proc = sidekiq_process(queues=["default", "other"])
    jid = ruby_push(redis_url, "RubyRecorder", [1, "a"])
    nested_jid = ruby_push(redis_url, "Workers::RubyNested", [{"k": "v"}], queue="other")
    failer_jid = ruby_push(redis_url, "RubyFailer", [])
    # "at" job: moved from the schedule zset to its queue by Sidekiq's poller (jobs.rb
    # sets a 1 s poll interval)
    scheduled_jid = ruby_push(redis_url, "RubyRecorder", ["later"], at=time.time() + 0.5)

    def both_results() -> list[bytes]:
        docs = cast(list[bytes], redis.lrange("results:RubyRecorder", 0, -1))
        return docs if len(docs) == 2 else []

    raw = wait_for(
        both_results,
        timeout=20,
        message="2 RubyRecorder results (one immediate, one scheduled)",
    )
    by_jid = {doc["jid"]: doc for doc in map(json.loads, raw)}
    assert by_jid[jid] == {"jid": jid, "args": [1, "a"], "class": "RubyRecorder"}
    assert by_jid[scheduled_jid]["args"] == ["later"]
    nested = wait_for(lambda: cast(bytes, redis.lpop("results:Workers::RubyNested")), timeout=20)
    assert json.loads(nested)["jid"] == nested_jid

    # the failing job is rescheduled into the "retry" zset with its error
    retry = wait_for(
        lambda: cast(list[bytes], redis.zrange("retry", 0, -1)), timeout=20, message="retry entry"
    )
    failed = json.loads(retry[0])
    assert (failed["jid"], failed["error_class"]) == (failer_jid, "RuntimeError")
    assert failed["error_message"] == "boom from ruby"

    assert proc.stop() == 0  # TERM: clean shutdown
    wait_for(lambda: redis.scard("processes") == 0, timeout=10, message="sidekiq deregistered")


# --- celery worker -------------------------------------------------------------------------

# A plain kombu-redis Celery app (no project code): checks only the CeleryWorker plumbing.
SMOKE_APP = textwrap.dedent(
    """
    import os

    import redis
    from celery import Celery

    app = Celery("smoke_app", broker=os.environ["BROKER_URL"])


    @app.task(name="smoke.record")
    def record(value):
        redis.Redis.from_url(os.environ["BROKER_URL"]).rpush("smoke:results", value)
    """
)


@pytest.mark.worker
def test_celery_worker_runs_task_and_stops(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis, redis_url: str, tmp_path: Path
) -> None:
    from celery import Celery

    (tmp_path / "smoke_app.py").write_text(SMOKE_APP)
    worker = celery_worker(
        app_module="smoke_app", queues="smoke", app_dir=tmp_path, broker_url=redis_url
    )
    assert "worker1@" in worker.log_text()

    sender = Celery("sender", broker=redis_url)
    sender.send_task("smoke.record", args=["hello"], queue="smoke")
    assert wait_for(lambda: redis.lpop("smoke:results"), timeout=20) == b"hello"

    assert worker.stop(signal.SIGTERM) == 0
    assert not worker.running


@pytest.mark.worker
def test_celery_worker_startup_failure_shows_log(
    celery_worker: CeleryWorkerFactory, redis_url: str, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match=r"exited with .* during startup"):
        celery_worker(app_module="no_such_module", app_dir=tmp_path, broker_url=redis_url)


@pytest.mark.worker
def test_celery_worker_kill9(
    celery_worker: CeleryWorkerFactory, redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "smoke_app.py").write_text(SMOKE_APP)
    worker = celery_worker(
        app_module="smoke_app", pool="prefork", concurrency=2, app_dir=tmp_path,
        broker_url=redis_url,
    )  # fmt: skip
    worker.kill9()
    assert worker.proc is not None and worker.proc.returncode == -signal.SIGKILL
