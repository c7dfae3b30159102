"""Python failures as sidekiq.rb sees them, and the Web UI's "Retry now" on them (real Ruby).

Ruby reads the retry and dead entries a Celery worker wrote through ``Sidekiq::RetrySet`` and
``Sidekiq::DeadSet`` (what the Web UI uses), including the compressed backtrace, and retries
them; the Celery worker runs the job again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis as redis_lib
from support.recorded import runs
from support.ruby import ruby_eval, ruby_push
from support.waiting import wait_for

pytestmark = [pytest.mark.interop, pytest.mark.worker, pytest.mark.usefixtures("sidekiq_rb")]

# Read the first entry the way the Web UI's Retries/Dead pages do, then press "Retry now".
READ_AND_RETRY = """
set = ENV.fetch("SET") == "dead" ? Sidekiq::DeadSet.new : Sidekiq::RetrySet.new
entry = set.first
puts JSON.generate(
  "klass" => entry.klass, "jid" => entry.jid, "queue" => entry.queue, "args" => entry.args,
  "error_class" => entry["error_class"], "error_message" => entry["error_message"],
  "retry_count" => entry["retry_count"], "failed_at" => entry["failed_at"],
  "error_backtrace" => entry.error_backtrace, "at" => entry.at.to_f, "size" => set.size
)
entry.retry
"""


def test_ruby_reads_python_failures_and_retry_now_reruns_them(
    require_ruby: None, celery_worker: Any, redis_url: str, redis: redis_lib.Redis
) -> None:
    celery_worker()
    jid = ruby_push(redis_url, "bridge.fail", ["from ruby"], backtrace=True)
    wait_for(lambda: redis.zcard("retry") == 1, timeout=20, message="the failure in retry")

    seen = json.loads(ruby_eval(redis_url, READ_AND_RETRY, env={"SET": "retry"}))
    assert (seen["klass"], seen["jid"], seen["queue"], seen["args"]) == (
        "bridge.fail",
        jid,
        "default",
        ["from ruby"],
    )
    assert (seen["error_class"], seen["error_message"], seen["retry_count"]) == (
        "ValueError",
        "from ruby",
        0,
    )
    assert abs(seen["failed_at"] - time.time()) < 60
    assert 15 <= seen["at"] - seen["failed_at"] <= 26
    backtrace = seen["error_backtrace"]
    assert backtrace and "bridge_app.py" in backtrace[0] and "in `fail'" in backtrace[0]

    # "Retry now" pushed it back (retry_count - 1); the worker runs it and it fails again.
    again = runs(redis, "bridge.fail", 2)[1]
    assert json.loads(again["job"])["retry_count"] == -1
    wait_for(lambda: redis.zcard("retry") == 1, timeout=20, message="failed again")
    entry = json.loads(redis.zrange("retry", 0, -1)[0])
    assert (entry["retry_count"], entry["failed_at"]) == (0, seen["failed_at"])
    assert entry["retried_at"] > entry["failed_at"]


def test_retrying_a_dead_python_job_from_ruby_runs_it_again(
    require_ruby: None, celery_worker: Any, redis_url: str, redis: redis_lib.Redis
) -> None:
    celery_worker()
    jid = ruby_push(redis_url, "bridge.fail", ["dies at once"], retry=0)
    wait_for(lambda: redis.zcard("dead") == 1, timeout=20, message="the failure in dead")

    seen = json.loads(ruby_eval(redis_url, READ_AND_RETRY, env={"SET": "dead"}))
    assert (seen["jid"], seen["error_class"], seen["retry_count"], seen["size"]) == (
        jid,
        "ValueError",
        0,
        1,
    )
    assert seen["error_backtrace"] is None  # the job did not ask for one

    runs(redis, "bridge.fail", 2)
    wait_for(lambda: redis.zcard("dead") == 1, timeout=20, message="dead again")
    assert json.loads(redis.zrange("dead", 0, -1)[0])["jid"] == jid
