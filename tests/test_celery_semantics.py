"""Failure semantics follow what the job asked for (issue 13), in real workers.

A Celery task message from a Celery producer, for a task that asked for no Sidekiq retries,
fails Celery's way: FAILURE stored, ``.get()`` raises, errbacks and ``link_error`` run, chains
and chords see the error, ``autoretry_for`` / ``self.retry`` / ``Reject(requeue=True)`` are
Celery's; the job ends in ``dead`` with Sidekiq's failure fields. A job from a Sidekiq producer,
or for a task that asks for Sidekiq retries, keeps Sidekiq's retry set, as before.

The worker and the producer run ``tests/apps/semantics_app.py`` (the producer imports its own
copy, so both see the same task options).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery, chain, chord, group
from celery.exceptions import ChordError, TimeLimitExceeded
from support.recorded import inflight, items, runs
from support.waiting import wait_for
from support.worker import APPS_DIR

import celery_sidekiq
from celery_sidekiq.bulk import push_bulk
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker

TIMEOUT = 20
_copies = itertools.count()


@pytest.fixture
def result_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/1"


def load_app(broker_url: str, result_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of semantics_app (its own Celery app), on this test's Redis."""
    monkeypatch.setenv("BROKER_URL", broker_url)
    monkeypatch.setenv("RESULT_BACKEND", result_url)
    spec = importlib.util.spec_from_file_location(
        f"semantics_app_{next(_copies)}", APPS_DIR / "semantics_app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sem(broker_url: str, result_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    module = load_app(broker_url, result_url, monkeypatch)
    yield module
    module.app.close()


@pytest.fixture
def worker(celery_worker: Any, result_url: str) -> Any:
    return celery_worker(
        app_module="semantics_app",
        pool="prefork",
        concurrency=2,
        env={"RESULT_BACKEND": result_url},
    )


def zset(redis: redis_lib.Redis, key: str) -> dict[str, dict[str, Any]]:
    return {json.loads(m)["jid"]: json.loads(m) for m in redis.zrange(key, 0, -1)}


def in_dead(redis: redis_lib.Redis, task_id: str) -> dict[str, Any]:
    jid = jobs.jid_for_task_id(task_id)
    return wait_for(lambda: zset(redis, "dead").get(jid), timeout=TIMEOUT, message=f"{jid} dead")


def test_the_issues_example_a_plain_task_that_raises_is_a_failure(
    sem: ModuleType, worker: Any, redis: redis_lib.Redis
) -> None:
    res = sem.fail.apply_async(link_error=sem.on_err.s())
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=TIMEOUT)
    assert res.state == "FAILURE"
    (errback,) = items(redis, "errbacks")
    assert errback == {"id": res.id, "exc": "ValueError('boom')"}
    # Sidekiq's view: the job is dead (its retry: 0 says so to Ruby too), never in retry.
    dead = in_dead(redis, res.id)
    assert (dead["error_class"], dead["error_message"], dead["retry_count"]) == (
        "ValueError",
        "boom",
        0,
    )
    assert dead["retry"] == 0 and dead["celery"]["failures"] == "celery"
    assert redis.zcard("retry") == 0
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")
    assert len(runs(redis, "sem.fail")) == 1


def test_chains_groups_and_chords_see_the_error(
    sem: ModuleType, worker: Any, redis: redis_lib.Redis
) -> None:
    failing_chain = chain(sem.add.s(1, 2), sem.fail.si("in a chain"), sem.add.si(3, 4))
    res = failing_chain.apply_async(link_error=sem.on_err.s())
    with pytest.raises(ValueError, match="in a chain"):
        res.get(timeout=TIMEOUT)
    assert res.parent.state == "FAILURE" and res.parent.parent.get(timeout=TIMEOUT) == 3
    assert len(runs(redis, "sem.add")) == 1  # 3 + 4 never ran

    header_fails = chord([sem.add.s(1, 1), sem.fail.si("in a header")], sem.add.s(10))
    chord_result = header_fails.apply_async()
    with pytest.raises(ValueError, match="in a header"):  # the header's error, first
        chord_result.get(timeout=TIMEOUT)
    wait_for(lambda: chord_result.state == "FAILURE", timeout=TIMEOUT, message="chord failed")
    assert isinstance(chord_result.result, ChordError)  # the callback never ran

    grouped = group(sem.add.s(2, 2), sem.fail.si("in a group")).apply_async()
    with pytest.raises(ValueError, match="in a group"):
        grouped.get(timeout=TIMEOUT)
    assert grouped.results[0].get(timeout=TIMEOUT) == 4
    ids = {e["id"] for e in items(redis, "errbacks")}
    assert res.parent.id in ids
    assert redis.zcard("retry") == 0


def test_celerys_own_retries_and_reject_requeue(
    sem: ModuleType, worker: Any, redis: redis_lib.Redis
) -> None:
    auto = sem.autoretry.delay()
    once = sem.retry_once.delay()
    rejected = sem.reject_once.delay()
    with pytest.raises(ConnectionError):
        auto.get(timeout=TIMEOUT)
    assert [run["retries"] for run in runs(redis, "sem.autoretry", 3)] == [0, 1, 2]
    assert once.get(timeout=TIMEOUT) == 1
    assert rejected.get(timeout=TIMEOUT) == "second-pass"
    assert len(runs(redis, "sem.reject_once", 2)) == 2
    # Celery's retries are new messages (schedule), never Sidekiq's retry set; over
    # max_retries the failure is final and the job dead.
    assert redis.zcard("retry") == 0
    assert in_dead(redis, auto.id)["error_class"] == "ConnectionError"
    assert jobs.jid_for_task_id(once.id) not in zset(redis, "dead")


def test_a_hard_time_limit_is_a_failure_and_dead_false_keeps_it_out_of_dead(
    sem: ModuleType, worker: Any, redis: redis_lib.Redis
) -> None:
    over = sem.overrun.delay()
    with pytest.raises(TimeLimitExceeded):
        over.get(timeout=TIMEOUT)
    assert in_dead(redis, over.id)["error_class"] == "billiard.exceptions.TimeLimitExceeded"
    not_kept = sem.not_kept.delay()
    with pytest.raises(ValueError, match="not kept"):
        not_kept.get(timeout=TIMEOUT)
    wait_for(lambda: inflight(redis) == 0, timeout=10, message="nothing left in flight")
    assert jobs.jid_for_task_id(not_kept.id) not in zset(redis, "dead")
    assert redis.zcard("retry") == 0


def test_sidekiq_producers_and_tasks_that_ask_keep_sidekiqs_retries(
    sem: ModuleType, worker: Any, redis: redis_lib.Redis
) -> None:
    ruby_like = jobs.build("sem.fail", ["from ruby"])  # no celery key: a Sidekiq producer's job
    Client(redis).push(ruby_like)
    asked = sem.sidekiq_retries.delay()
    asked_too = sem.sidekiq_retry.delay()
    per_call = sem.fail.apply_async(("per call",), sidekiq_retry=2)
    expected = {
        ruby_like["jid"]: True,
        jobs.jid_for_task_id(asked.id): 3,
        jobs.jid_for_task_id(asked_too.id): True,
        jobs.jid_for_task_id(per_call.id): 2,
    }
    retrying = wait_for(
        lambda: (found := zset(redis, "retry")).keys() == expected.keys() and found,
        timeout=TIMEOUT,
        message="four jobs in retry",
    )
    for jid, retry in expected.items():
        assert (retrying[jid]["retry"], retrying[jid]["retry_count"]) == (retry, 0)
        assert "failures" not in retrying[jid].get("celery", {})
    assert asked.state == "RETRY" and per_call.state == "RETRY"  # not done: Sidekiq retries it
    assert redis.zcard("dead") == 0


def test_what_producers_write(
    sem: ModuleType, redis: redis_lib.Redis, broker_url: str, result_url: str
) -> None:
    sem.fail.delay()
    sem.sidekiq_retries.delay()
    sem.app.send_task("RubyOnly::Job", args=[1])  # no Python task here: a job for Ruby
    push_bulk(sem.fail, [["bulk"]])
    written = [json.loads(raw) for raw in reversed(redis.lrange("queue:default", 0, -1))]
    assert [
        (job["class"], job["retry"], job.get("celery", {}).get("failures")) for job in written
    ] == [
        ("sem.fail", 0, "celery"),
        ("sem.sidekiq_options", 3, None),
        ("RubyOnly::Job", True, None),
        ("sem.fail", True, None),  # push_bulk is Sidekiq's
    ]


def test_setup_failures_switches_the_whole_app(
    celery_worker: Any,
    broker_url: str,
    result_url: str,
    redis: redis_lib.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match=r"setup\(failures='often'\): use 'auto'"):
        celery_sidekiq.setup(Celery("bad", broker=broker_url), failures="often")

    # "sidekiq": a Celery producer writes Sidekiq jobs (retry: true, no marker).
    monkeypatch.setenv("SIDEKIQ_SETUP", json.dumps({"poll_interval": 0.3, "failures": "sidekiq"}))
    sidekiq_way = load_app(broker_url, result_url, monkeypatch)
    res = sidekiq_way.fail.delay("sidekiq way")
    (queued,) = (json.loads(raw) for raw in redis.lrange("queue:default", 0, -1))
    assert queued["retry"] is True and "failures" not in queued.get("celery", {})
    celery_worker(
        app_module="semantics_app",
        env={"RESULT_BACKEND": result_url, "SIDEKIQ_SETUP": json.dumps({"failures": "celery"})},
    )
    # "celery" in the worker: even a Sidekiq producer's job fails Celery's way.
    ruby_like = jobs.build("sem.fail", ["from ruby, celery way"])
    Client(redis).push(ruby_like)
    wait_for(lambda: ruby_like["jid"] in zset(redis, "dead"), timeout=TIMEOUT, message="dead")
    with pytest.raises(ValueError, match="sidekiq way"):
        res.get(timeout=TIMEOUT)  # the worker's "celery" applies to this one too
    assert redis.zcard("retry") == 0
    sidekiq_way.app.close()


def test_an_unknown_class_sent_the_celery_way_is_a_failure_too(
    sem: ModuleType, celery_worker: Any, result_url: str, redis: redis_lib.Redis
) -> None:
    # The worker runs bridge_app, which has no sem.* task: Celery's consumer stores the
    # FAILURE (NotRegistered) and rejects the message, which puts the job in dead.
    celery_worker(env={"RESULT_BACKEND": result_url})
    res = sem.fail.delay()
    with pytest.raises(Exception, match=r"sem\.fail") as raised:
        res.get(timeout=TIMEOUT)
    assert type(raised.value).__name__ == "NotRegistered"
    in_dead(redis, res.id)
    assert redis.zcard("retry") == 0


def test_message_properties_priority_and_redelivered_survive_the_job(
    sem: ModuleType, worker: Any, redis: redis_lib.Redis
) -> None:
    plain = sem.properties.apply_async(app_id="1234", message_id="m-1", priority=7)
    assert plain.get(timeout=TIMEOUT) == {
        "app_id": "1234",
        "message_id": "m-1",
        "priority": 7,
        "retries": 0,
    }
    # Celery's retry republishes with the request's priority, as on its own transports.
    retried = sem.properties.apply_async((True,), priority=3)
    assert retried.get(timeout=TIMEOUT)["priority"] == 3
    assert retried.get(timeout=TIMEOUT)["retries"] == 1
    assert sem.properties.delay().get(timeout=TIMEOUT)["priority"] == 0  # none given
    # What the job holds for it, in its celery key (Ruby ignores it).
    sem.properties.apply_async(priority=9, app_id="x", countdown=3600)
    (member,) = redis.zrange("schedule", 0, -1)
    job = json.loads(member)
    assert (job["celery"]["priority"], job["celery"]["properties"]) == (9, {"app_id": "x"})
    assert sem.redelivered.delay().get(timeout=TIMEOUT) == "second-pass"


def test_a_countdown_runs_on_time_not_at_the_next_poll(
    sem: ModuleType, celery_worker: Any, result_url: str, redis: redis_lib.Redis
) -> None:
    # Polls every 1.5 to 4.5 s: the poll before the job is due sees it coming and wakes for it.
    celery_worker(
        app_module="semantics_app",
        env={"RESULT_BACKEND": result_url, "SIDEKIQ_SETUP": json.dumps({"poll_interval": 3})},
    )
    sent = time.monotonic()
    res = sem.add.apply_async((1, 2), countdown=10)
    assert res.get(timeout=TIMEOUT) == 3
    assert 9.5 <= time.monotonic() - sent <= 11.0
