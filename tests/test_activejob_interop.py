"""Rails ActiveJob and Celery with real processes, both directions.

Ruby side: Debian's ruby-activejob (Rails 6.1) with its Sidekiq adapter on sidekiq.rb 6.4.1,
loading tests/ruby/activejob_jobs.rb. Python side: celery workers running
tests/apps/activejob_app.py, whose tasks record the Python values they received. In CI these
run, never skip: the fixtures fail there when Ruby or ActiveJob is missing.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis as redis_lib
from celery import Celery
from kombu.utils import json as kombu_json
from support.env import missing_or_fail
from support.ruby import ruby_env, ruby_eval, sidekiq_rb
from support.values import typed
from support.waiting import wait_for

import celery_sidekiq
from celery_sidekiq import activejob
from kombu_sidekiq import activejob as aj
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = [pytest.mark.interop, pytest.mark.worker]

AJ_RB = Path(__file__).resolve().parent / "ruby" / "activejob_jobs.rb"
UTC = timezone.utc


@functools.cache
def _activejob_available(version: str) -> bool:
    probe = subprocess.run(
        ["ruby", "-e", 'require "sidekiq"; require "active_job"; require "global_id"'],
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, **ruby_env(version)},
    )
    return probe.returncode == 0


@pytest.fixture
def require_activejob(require_ruby: None) -> None:
    """Skip (locally) or fail (CI=true) unless ruby can load ActiveJob and GlobalID."""
    if not _activejob_available(sidekiq_rb()):
        missing_or_fail("Rails ActiveJob for ruby (Debian package ruby-activejob)")


pytestmark.append(pytest.mark.usefixtures("sidekiq_rb", "require_activejob"))


def producer_app(broker_url: str, **options: Any) -> Celery:
    app = Celery("aj-producer", broker=broker_url)
    celery_sidekiq.setup(app, **options)
    return app


@pytest.fixture
def producer(broker_url: str) -> Iterator[Celery]:
    app = producer_app(broker_url)
    yield app
    app.close()


def runs(redis: redis_lib.Redis, key: str, count: int = 1, timeout: float = 30) -> list[Any]:
    wait_for(lambda: redis.llen(key) >= count, timeout=timeout, message=f"{count} entries in {key}")
    return [kombu_json.loads(item) for item in redis.lrange(key, 0, -1)]


def enqueue_in_ruby(redis_url: str, script: str) -> Any:
    """Run ``script`` in Ruby with the ActiveJob classes loaded; its last line of output is
    JSON (Sidekiq 6.4's client logs a warning about ``wrapped`` to stdout before it)."""
    return json.loads(ruby_eval(redis_url, f'require "{AJ_RB}"\n{script}').splitlines()[-1])


# -- Ruby -> Python --------------------------------------------------------------------------


def test_rails_perform_later_runs_in_a_celery_worker_value_by_value(
    celery_worker: Any, redis: redis_lib.Redis, redis_url: str
) -> None:
    celery_worker(app_module="activejob_app")
    ids = enqueue_in_ruby(
        redis_url,
        """
        Time.zone = "America/New_York"
        job = PyAjJob.perform_later(1, 2.5, "two", nil, true, :sym, [1, [:x]], {a: 1, "b" => [:c]},
          ActiveSupport::HashWithIndifferentAccess.new(k: 1),
          Time.utc(2024, 1, 2, 3, 4, 5.123456789r), Time.zone.local(2024, 6, 1, 12),
          Date.new(2024, 2, 29),
          DateTime.new(2024, 1, 2, 3, 4, 5, "+02:00"), 5.minutes, 1.month, 2.5.hours,
          BigDecimal("1.23"), User.new(42), String, key: "kw", at: Date.new(2024, 1, 1))
        mapped = PyMappedJob.perform_later(User.new(7), note: :urgent)
        puts JSON.generate([job, mapped].map { |j| [j.job_id, j.provider_job_id] })
        """,
    )
    (run,) = runs(redis, "results:PyAjJob")
    assert typed(run["args"]) == typed(
        [
            1, 2.5, "two", None, True, "sym", [1, ["x"]], {"a": 1, "b": ["c"]}, {"k": 1},
            datetime(2024, 1, 2, 3, 4, 5, 123456, UTC),
            datetime(2024, 6, 1, 12, tzinfo=timezone(timedelta(hours=-4))),
            date(2024, 2, 29),
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
            aj.Duration(300, {"minutes": 5}),
            aj.Duration(2629746, {"months": 1}),
            aj.Duration(9000, {"hours": 2.5}),
            "1.23",  # what Rails 6.1 makes of a BigDecimal
            aj.GlobalID("gid://celery-sidekiq-test/User/42"),
            "String",
        ]
    )  # fmt: skip
    assert typed(run["kwargs"]) == typed({"key": "kw", "at": date(2024, 1, 1)})
    job_id, jid = ids[0]
    assert run["id"] == jid
    meta = run["metadata"]
    assert (meta["job_class"], meta["job_id"], meta["provider_job_id"]) == ("PyAjJob", job_id, jid)
    assert (meta["executions"], meta["locale"], meta["timezone"]) == (0, "en", "America/New_York")
    assert abs(meta["enqueued_at"] - datetime.now(UTC)) < timedelta(seconds=60)
    # a task declaring sidekiq_class runs its ActiveJob class; a symbol kwarg arrives as str
    (mapped,) = runs(redis, "results:aj.mapped")
    assert (mapped["task"], mapped["id"], mapped["kwargs"]) == (
        "aj.mapped",
        ids[1][1],
        {"note": "urgent"},
    )
    assert typed(mapped["args"]) == typed([aj.GlobalID("gid://celery-sidekiq-test/User/7")])


def test_a_scheduled_rails_job_is_promoted_by_the_celery_workers_poller(
    celery_worker: Any, redis: redis_lib.Redis, redis_url: str
) -> None:
    celery_worker(app_module="activejob_app")
    enqueued = time.time()
    job_id = enqueue_in_ruby(
        redis_url, 'puts PyAjJob.set(wait: 1).perform_later("later").job_id.to_json'
    )
    assert redis.zcard("schedule") == 1
    (run,) = runs(redis, "results:PyAjJob")
    assert (run["args"], run["metadata"]["job_id"]) == (["later"], job_id)
    assert time.time() - enqueued >= 1


def test_an_unknown_serializer_fails_the_job_which_is_retried_then_dead(
    celery_worker: Any, redis: redis_lib.Redis, redis_url: str
) -> None:
    celery_worker(app_module="activejob_app")
    jid = enqueue_in_ruby(
        redis_url, 'puts PyAjJob.perform_later(1, Money.new(995, "EUR")).provider_job_id.to_json'
    )
    (failure,) = runs(redis, "failures")
    assert failure["task"] == aj.RAILS_WRAPPER  # the job ran as its wrapper, as in Ruby
    assert failure["type"] == "ActiveJobDecodeError"
    assert "unknown ActiveJob serializer 'MoneySerializer'" in failure["message"]
    assert "PyAjJob" in failure["message"]
    # Sidekiq's retry semantics apply as to any failing job: into `retry` with the error...
    wait_for(lambda: redis.zcard("retry") == 1, timeout=10, message="the job in retry")
    retried = json.loads(redis.zrange("retry", 0, 0)[0])
    assert (retried["jid"], retried["class"], retried["retry_count"]) == (jid, aj.RAILS_WRAPPER, 0)
    assert retried["error_class"].endswith("ActiveJobDecodeError")
    assert "MoneySerializer" in retried["error_message"]
    assert retried["args"][0]["arguments"][1]["_aj_serialized"] == "MoneySerializer"  # intact
    assert not redis.llen("results:PyAjJob")
    # ...and with no retries left, into `dead`.
    retried.update(retry=0, jid=jobs.new_jid())
    for key in ("retry_count", "error_class", "error_message", "failed_at"):
        retried.pop(key)
    Client(redis).push(retried)
    wait_for(lambda: redis.zcard("dead") == 1, timeout=10, message="the job in dead")
    assert json.loads(redis.zrange("dead", 0, 0)[0])["jid"] == retried["jid"]


# -- Python -> Ruby --------------------------------------------------------------------------


def test_python_perform_later_runs_in_rails_value_by_value(
    sidekiq_process: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    sidekiq_process(require=AJ_RB)
    sent = activejob.perform_later(
        producer,
        "AjRecorder",
        1, 2.5, "two", None, True, [1, [2]],
        {"plain": 1, aj.Symbol("sym"): aj.Symbol("v")},
        aj.Symbol("paid"),
        datetime(2024, 1, 2, 3, 4, 5, 123456, UTC),
        datetime(2024, 6, 1, 12, tzinfo=ZoneInfo("America/New_York")),
        date(2024, 2, 29),
        timedelta(minutes=5),
        aj.Duration(2629746, {"months": 1}),
        aj.GlobalID.create("celery-sidekiq-test", "User", 42),
        note="kw",
        when=date(2024, 1, 1),
    )  # fmt: skip
    (run,) = [json.loads(item) for item in runs_raw(redis, "results:AjRecorder")]
    assert run["args"] == [
        "Array",
        [
            ["Integer", 1], ["Float", 2.5], ["String", "two"], ["NilClass", None],
            ["TrueClass", True], ["Array", [["Integer", 1], ["Array", [["Integer", 2]]]]],
            ["Hash", [[["String", "plain"], ["Integer", 1]], [["Symbol", "sym"], ["Symbol", "v"]]]],
            ["Symbol", "paid"],
            ["Time", "2024-01-02T03:04:05.123456Z"],
            # Rails 6.1 puts a TimeWithZone in the app's zone (UTC here); 7.1 keeps its own
            ["ActiveSupport::TimeWithZone", "2024-06-01T16:00:00.000000Z", "Etc/UTC"],
            ["Date", "2024-02-29"],
            ["Duration", 300, [["seconds", 300]]],
            ["Duration", 2629746, [["months", 1]]],
            ["User", 42],
        ],
    ]  # fmt: skip
    assert run["kwargs"] == [
        "Hash",
        [[["Symbol", "note"], ["String", "kw"]], [["Symbol", "when"], ["Date", "2024-01-01"]]],
    ]
    assert (run["job_id"], run["provider_job_id"]) == (sent.job_id, sent.jid)
    assert (run["queue_name"], run["priority"], run["executions"]) == ("default", None, 1)
    assert (run["locale"], run["timezone"]) == ("en", "UTC")  # null timezone: the app's zone


def runs_raw(redis: redis_lib.Redis, key: str, count: int = 1, timeout: float = 30) -> list[bytes]:
    wait_for(lambda: redis.llen(key) >= count, timeout=timeout, message=f"{count} entries in {key}")
    return list(redis.lrange(key, 0, -1))


def test_python_wait_goes_through_the_schedule_and_rubys_poller_runs_it(
    sidekiq_process: Any, redis: redis_lib.Redis, producer: Celery
) -> None:
    sidekiq_process(require=AJ_RB)
    sent_at = time.time()
    sent = activejob.Job(
        producer, "AjRecorder", wait=timedelta(seconds=1), priority=3
    ).perform_later("x")
    ((member, score),) = redis.zrange("schedule", 0, -1, withscores=True)
    assert score == pytest.approx(sent_at + 1, abs=1)
    assert "enqueued_at" not in json.loads(member)
    (run,) = [json.loads(item) for item in runs_raw(redis, "results:AjRecorder")]
    assert (run["job_id"], run["priority"], run["args"]) == (
        sent.job_id,
        3,
        ["Array", [["String", "x"]]],
    )
    assert time.time() - sent_at >= 1


# -- Python -> Python: Sidekiq 8's format, through a prefork pool --------------------------------


def test_python_to_python_with_sidekiq_8s_wrapper_through_a_prefork_pool(
    celery_worker: Any, redis: redis_lib.Redis, broker_url: str
) -> None:
    producer = producer_app(broker_url, sidekiq_version=8)
    berlin = datetime(2026, 3, 29, 3, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    values = [aj.GlobalID.create("shop", "Invoice", 7), Decimal("9.99"), range(1, 5),
              aj.Range(date(2026, 1, 1), None), timedelta(days=2, hours=1), berlin]  # fmt: skip
    sent = activejob.Job(producer, "PyAjJob", rails_version="7.1", priority=5).perform_later(
        *values, note=aj.Symbol("x")
    )
    producer.close()
    (raw,) = redis.lrange("queue:default", 0, -1)
    job = json.loads(raw)
    assert (job["class"], job["wrapped"], job["jid"]) == (aj.SIDEKIQ8_WRAPPER, "PyAjJob", sent.jid)
    assert isinstance(job["created_at"], int) and isinstance(job["enqueued_at"], int)  # ms
    celery_worker(
        app_module="activejob_app",
        pool="prefork",
        env={"SIDEKIQ_SETUP": json.dumps({"poll_interval": 0.5, "sidekiq_version": 8})},
    )
    (run,) = runs(redis, "results:PyAjJob")
    expected = [values[0], values[1], aj.Range(1, 5, exclude_end=True), values[3],
                aj.Duration(timedelta(days=2, hours=1).total_seconds()),
                berlin.astimezone(timezone(timedelta(hours=2)))]  # fmt: skip
    assert typed(run["args"]) == typed(expected)
    assert run["kwargs"] == {"note": "x"}
    meta = run["metadata"]
    assert (meta["job_id"], meta["provider_job_id"], meta["priority"]) == (sent.job_id, sent.jid, 5)
    assert meta["scheduled_at"] is None and meta["enqueued_at"].tzinfo is not None


def test_an_activejob_class_no_task_runs_is_handled_as_an_unknown_class(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    """setup(unknown_class="retry"): failed and retried as sidekiq.rb fails a missing class,
    judged by the ActiveJob class inside the wrapper, never dropped."""
    celery_worker(app_module="activejob_app")
    job = aj.wrap("NoSuchJob", [1])
    Client(redis).push(job)
    wait_for(lambda: redis.zcard("retry") + redis.zcard("dead"), timeout=10, message="stored")
    assert redis.zcard("retry") == 1
    retried = json.loads(redis.zrange("retry", 0, 0)[0])
    assert (retried["jid"], retried["class"]) == (job["jid"], aj.RAILS_WRAPPER)
    assert "NoSuchJob" in retried["error_message"]


def test_self_retry_keeps_the_activejob_envelope(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    celery_worker(app_module="activejob_app")
    job = aj.wrap("PyRetryJob", [aj.GlobalID.create("shop", "User", 1), date(2024, 1, 1)], {"k": 1})
    Client(redis).push(job)
    runs(redis, "results:PyRetryJob")
    wait_for(lambda: redis.zcard("retry"), timeout=10, message="the job in retry")
    retried = json.loads(redis.zrange("retry", 0, 0)[0])
    assert (retried["class"], retried["args"]) == (job["class"], job["args"])
