"""A real ``celery worker`` on the sidekiq:// transport: jobs in, tasks out, Celery's own traffic.

The worker runs ``tests/apps/bridge_app.py``; its tasks record what they received in
``results:<task name>``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery, chain, chord, group
from support.recorded import runs
from support.waiting import wait_for

import celery_sidekiq
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker

APPS = Path(__file__).parent / "apps"


@pytest.fixture
def result_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/1"


def _stub(name: str) -> Any:
    def stub(*args: Any, **kwargs: Any) -> None:
        """Runs in the worker, never here."""

    stub.__qualname__ = f"stub[{name}]"
    return stub


#: One callable per task name for every producer app (Celery warns when a name changes callable).
STUBS = {
    name: _stub(name) for name in ("Workers::PyWorker", "bridge.add", "bridge.tsum", "bridge.sleep")
}
_report_stub = _stub("bridge.report")


@pytest.fixture
def producer(broker_url: str, result_url: str) -> Iterator[Celery]:
    """The test's own Celery app: the same task names as bridge_app, sending only."""
    app = Celery("producer", broker=broker_url, backend=result_url)
    celery_sidekiq.setup(app)
    for name, stub in STUBS.items():
        app.task(name=name, shared=False)(stub)
    app.task(name="bridge.report", sidekiq_class="PaymentReportWorker", shared=False)(_report_stub)
    yield app
    app.close()


def test_a_sidekiq_job_runs_as_the_task_named_like_its_class(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker()
    job = jobs.build("Workers::PyWorker", [1, "two", {"three": [3]}], extra={"bid": "b-9"})
    Client(redis).push(job)
    (run,) = runs(redis, "Workers::PyWorker")
    assert run["args"] == [1, "two", {"three": [3]}]
    assert run["kwargs"] == {}
    assert run["id"] == job["jid"]
    assert run["delivery_info"]["routing_key"] == "default"
    assert json.loads(run["job"]) == job  # the task can read the whole job
    wait_for(lambda: redis.hlen("celery-sidekiq:unacked") == 0, timeout=10, message="ack")


def test_a_task_may_keep_a_pythonic_name_and_declare_its_sidekiq_class(
    celery_worker: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    celery_worker()
    Client(redis).push(jobs.build("PaymentReportWorker", [42]))
    producer.tasks["bridge.report"].delay(43, month="2026-11")
    reports = runs(redis, "bridge.report", 2)
    assert [(r["args"], r["kwargs"]) for r in reports] == [
        ([42], {"month": None}),
        ([43], {"month": "2026-11"}),
    ]


def test_python_to_python_keeps_kwargs_and_ids(
    celery_worker: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    celery_worker()
    result = producer.tasks["Workers::PyWorker"].apply_async(
        (1,), {"k": {"nested": [1, 2]}}, queue="default"
    )
    (run,) = runs(redis, "Workers::PyWorker")
    assert (run["args"], run["kwargs"], run["id"]) == ([1], {"k": {"nested": [1, 2]}}, result.id)


def test_countdown_waits_in_the_schedule_zset_not_in_the_worker(
    celery_worker: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    worker = celery_worker()
    sent = time.time()
    producer.tasks["bridge.add"].apply_async((2, 3), countdown=2)
    assert redis.zcard("schedule") == 1
    (run,) = runs(redis, "bridge.add")
    assert time.time() - sent >= 2
    assert run["args"] == [2, 3]
    assert redis.zcard("schedule") == 0
    assert "received" in worker.log_text()


def test_chain_group_and_chord_work_between_python_workers(
    celery_worker: Any, redis: redis_lib.Redis, producer: Celery, result_url: str
) -> None:
    celery_worker(pool="prefork", concurrency=2, env={"RESULT_BACKEND": result_url})
    add = producer.signature
    assert (
        chain(add("bridge.add", (1, 2)), add("bridge.add", (10,)), add("bridge.add", (100,)))().get(
            timeout=30
        )
        == 113
    )
    assert group(add("bridge.add", (n, n)) for n in range(5))().get(timeout=30) == [0, 2, 4, 6, 8]
    header = [add("bridge.add", (n, 1)) for n in range(4)]
    assert chord(header)(add("bridge.tsum", ())).get(timeout=30) == 10
    # the chain's second step carried the first's id as its parent
    adds = runs(redis, "bridge.add", 1 + 2 + 5 + 4)
    parents = {r["parent_id"] for r in adds if r["args"] in ([3, 10], [13, 100])}
    assert None not in parents


def test_celerys_own_traffic_works_and_stays_out_of_sidekiqs_sight(
    celery_worker: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    celery_worker(extra_args=["-E"])
    replies = producer.control.ping(timeout=5)
    assert replies and all(reply[next(iter(reply))] == {"ok": "pong"} for reply in replies)
    assert producer.control.inspect(timeout=5).active_queues()
    (stats,) = producer.control.inspect(timeout=5).stats().values()  # carries our transport options
    assert stats["broker"]["transport"] == "sidekiq"
    producer.control.rate_limit("bridge.add", "100/s", reply=True, timeout=5)
    assert redis.smembers("queues") == set()
    assert redis.keys("queue:*") == []


def test_rpc_results_come_back(celery_worker: Any, redis: redis_lib.Redis, broker_url: str) -> None:
    celery_worker(env={"RESULT_BACKEND": "rpc://"})
    app = Celery("rpc-producer", broker=broker_url, backend="rpc://")
    celery_sidekiq.setup(app)
    assert app.send_task("bridge.add", (20, 22)).get(timeout=20) == 42
    assert redis.smembers("queues") == {b"default"}
    app.close()


def test_namespace_keeps_every_key_under_its_prefix(
    celery_worker: Any, redis: redis_lib.Redis, broker_url: str
) -> None:
    setup = {"namespace": "tenant", "poll_interval": 0.5}
    celery_worker(env={"SIDEKIQ_SETUP": json.dumps(setup)})
    from kombu_sidekiq.keys import Keys

    Client(redis, Keys("tenant")).push(jobs.build("Workers::PyWorker", ["ns"]))
    (run,) = runs(redis, "Workers::PyWorker")
    assert run["args"] == ["ns"]
    own = [
        k
        for k in redis.keys("*")
        if not k.startswith((b"tenant:", b"results:", b"_kombu.binding.celery"))
    ]
    assert own == []


def test_celery_purge_names_the_queue_and_only_then_empties_it(
    redis: redis_lib.Redis, broker_url: str
) -> None:
    Client(redis).push_bulk([jobs.build("RubyOnly", [n]) for n in range(3)])
    env = {"BROKER_URL": broker_url, "PYTHONPATH": f"{APPS}:{APPS.parent.parent}"}
    command = [sys.executable, "-m", "celery", "-A", "bridge_app", "purge", "-f", "-Q", "default"]
    out = subprocess.run(
        command, cwd=APPS, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert "Purged 3 messages" in out.stdout
    assert redis.llen("queue:default") == 0


def test_setup_refuses_unsafe_serializers_and_bad_options() -> None:
    app = Celery("x", broker="sidekiq://")
    app.conf.accept_content = ["json", "pickle"]
    with pytest.raises(ValueError, match="pickle"):
        celery_sidekiq.setup(app)
    with pytest.raises(TypeError, match="unknown options"):
        celery_sidekiq.setup(Celery("y"), sidekiq_versoin=8)
    with pytest.raises(ValueError, match="sidekiq_version"):
        celery_sidekiq.setup(Celery("z"), sidekiq_version=5)
