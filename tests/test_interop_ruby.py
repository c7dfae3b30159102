"""Real sidekiq.rb (6.4.1 and 7.x, see ``support.ruby``) and real Celery workers, both directions.

In CI these run, never skip: the ``require_ruby`` fixture fails there when Ruby is missing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from support.recorded import runs
from support.ruby import ruby_eval, ruby_push

import celery_sidekiq

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("sidekiq_rb", "require_ruby")]

ARGS = [1, -2.5, "three", None, True, [1, [2]], {"k": "v", "n": {"m": [1]}}, "ünïcode ✓"]


@pytest.fixture
def producer(broker_url: str) -> Iterator[Celery]:
    app = Celery("producer", broker=broker_url)
    celery_sidekiq.setup(app)
    yield app
    app.close()


def test_ruby_perform_async_runs_in_a_celery_worker(
    celery_worker: Any, redis: redis_lib.Redis, redis_url: str
) -> None:
    celery_worker()
    jid = ruby_push(redis_url, "Workers::PyWorker", ARGS)
    script = 'class PaymentReportWorker; include Sidekiq::Worker; end; puts PaymentReportWorker.perform_async(7, "2026-11")'
    report_jid = ruby_eval(redis_url, script)
    (run,) = runs(redis, "Workers::PyWorker")
    assert run["args"] == ARGS
    assert run["id"] == jid
    (report,) = runs(redis, "bridge.report")
    assert (report["args"], report["kwargs"], report["id"]) == (
        [7],
        {"month": "2026-11"},
        report_jid,
    )


def test_ruby_perform_in_is_promoted_by_the_celery_workers_poller(
    celery_worker: Any, redis: redis_lib.Redis, redis_url: str
) -> None:
    celery_worker()
    jid = ruby_push(redis_url, "Workers::PyWorker", ["later"], at=time.time() + 1)
    assert redis.zcard("schedule") == 1
    (run,) = runs(redis, "Workers::PyWorker")
    assert (run["args"], run["id"]) == (["later"], jid)


def test_celery_send_task_writes_a_job_sidekiq_rb_runs(
    sidekiq_process: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    sidekiq_process()
    result = producer.send_task("RubyRecorder", args=ARGS, queue="default")
    producer.send_task("Workers::RubyNested", args=[1])
    (run,) = runs(redis, "RubyRecorder")
    assert run["args"] == ARGS
    assert run["jid"] == result.id.replace("-", "")[:24]
    assert runs(redis, "Workers::RubyNested")[0]["args"] == [1]


def test_ruby_reads_the_job_python_wrote_as_its_own(
    redis: redis_lib.Redis, redis_url: str, producer: Celery
) -> None:
    producer.send_task("RubyRecorder", args=[1, "x"], queue="critical")
    script = """
    job = Sidekiq::Queue.new("critical").first
    puts JSON.generate("klass" => job.klass, "args" => job.args, "jid" => job.jid, "queue" => job.queue,
      "retry" => job.item["retry"], "enqueued_at" => job.enqueued_at.to_f, "created_at" => job.created_at.to_f,
      "latency" => Sidekiq::Queue.new("critical").latency, "queues" => Sidekiq::Queue.all.map(&:name))
    """
    seen = json.loads(ruby_eval(redis_url, script))
    assert (seen["klass"], seen["args"], seen["queue"], seen["retry"]) == (
        "RubyRecorder",
        [1, "x"],
        "critical",
        True,
    )
    assert len(seen["jid"]) == 24
    assert abs(seen["enqueued_at"] - time.time()) < 30
    assert 0 <= seen["latency"] < 30
    assert seen["queues"] == ["critical"]


def test_a_celery_countdown_is_promoted_by_rubys_poller(
    sidekiq_process: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    sidekiq_process()
    sent = time.time()
    producer.send_task("RubyRecorder", args=["scheduled"], countdown=1)
    assert redis.zcard("schedule") == 1
    (run,) = runs(redis, "RubyRecorder")
    assert run["args"] == ["scheduled"]
    assert time.time() - sent >= 1


def test_python_and_ruby_consume_their_own_queues_side_by_side(
    sidekiq_process: Any,
    celery_worker: Any,
    redis: redis_lib.Redis,
    redis_url: str,
    producer: Celery,
) -> None:
    sidekiq_process(queues="ruby")
    celery_worker(queues="python")
    for n in range(5):
        ruby_push(redis_url, "Workers::PyWorker", [n], queue="python")
        producer.send_task("RubyRecorder", args=[n], queue="ruby")
    assert sorted(r["args"][0] for r in runs(redis, "Workers::PyWorker", 5)) == list(range(5))
    assert sorted(r["args"][0] for r in runs(redis, "RubyRecorder", 5)) == list(range(5))
    assert redis.smembers("queues") == {b"python", b"ruby"}
