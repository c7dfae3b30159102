"""celery_sidekiq.api against a real Redis: what it reads from every writer, what it writes.

The comparisons with Ruby's own ``Sidekiq::API`` on the same data are in test_api_ruby.py; these
cover the formats sidekiq.rb 6.4.1 cannot produce here (8.x milliseconds, rusty-sidekiq's
nulls and process hash, 8.1's ``concurrency`` field, 6.4.2+'s ``:work``), namespaces, and the
behaviour of each action under concurrent change.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import hostile

import celery_sidekiq
from celery_sidekiq import api
from kombu_sidekiq import backtrace
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import DEAD_TIMEOUT, Client
from kombu_sidekiq.job import InvalidJob
from kombu_sidekiq.keys import Keys

# A client that never connects: JobRecord parsing needs one, but touches no Redis.
OFFLINE = Client(redis_lib.Redis(port=1))


@pytest.fixture
def client(redis: redis_lib.Redis) -> Client:
    return Client(redis)


def record(item: dict[str, Any] | str, queue: str | None = None) -> api.JobRecord:
    raw = item if isinstance(item, str) else json.dumps(item)
    return api.JobRecord(OFFLINE, raw, queue)


def job(klass: str = "HardJob", args: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return jobs.build(klass, [1, "x"] if args is None else args, extra=extra or None)


# -- reading jobs --------------------------------------------------------------------------


@given(st.floats(min_value=1e9, max_value=4e9))
def test_float_seconds_and_integer_milliseconds_read_as_the_same_time(seconds: float) -> None:
    as_float = record({"class": "A", "args": [], "created_at": seconds, "enqueued_at": seconds})
    millis = round(seconds * 1000)
    as_ms = record({"class": "A", "args": [], "created_at": millis, "enqueued_at": millis})
    # rusty-sidekiq re-serializes 8.x milliseconds as floats: still milliseconds.
    as_ms_float = record({"class": "A", "args": [], "created_at": float(millis)})
    for other in (as_ms.created_at, as_ms.enqueued_at, as_ms_float.created_at):
        assert abs((other - as_float.created_at).total_seconds()) <= 0.001
    assert as_float.created_at.tzinfo is timezone.utc


def test_latency_of_each_timestamp_form() -> None:
    now = time.time()
    assert 9 < record({"class": "A", "args": [], "enqueued_at": now - 10}).latency < 12
    ms = int((now - 10) * 1000)
    assert 9 < record({"class": "A", "args": [], "enqueued_at": ms}).latency < 12
    # No enqueued_at (a scheduled job): created_at; neither: 0.0, as Ruby's JobRecord#latency.
    assert 9 < record({"class": "A", "args": [], "created_at": now - 10}).latency < 12
    assert record({"class": "A", "args": []}).latency == 0.0


def test_rusty_sidekiq_nulls_read_as_absent() -> None:
    rusty = (
        '{"queue":"default","args":null,"retry":true,"class":"HelloWorker",'
        '"jid":"0123456789abcdef01234567","created_at":1700000000.0,"enqueued_at":null,'
        '"failed_at":null,"error_message":null,"error_class":null,"retry_count":null,'
        '"retried_at":null,"retry_queue":null}'
    )
    entry = record(rusty)
    assert entry.args == [] and entry.enqueued_at is None and entry.failed_at is None
    assert entry.retry_count is None and entry.error_class is None
    assert entry.created_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert entry.display_class == "HelloWorker"


def test_a_payload_that_is_not_a_job_object_is_shown_as_its_only_arg() -> None:
    for raw in ("{not json", "[1, 2]", '"text"'):
        entry = record(raw, queue="default")
        assert entry.invalid and entry.args == [raw] and entry.klass is None
        assert entry.item == {} and entry.queue == "default"
        assert entry.created_at == datetime.fromtimestamp(0, timezone.utc)


# The verified Sidekiq 6.4.1 + Rails 6.1 envelope of sidekiq-rb.md §3 (abridged there too).
ACTIVE_JOB_ARGUMENTS = [
    1,
    "two",
    {
        "a": 1,
        "b": [{"_aj_serialized": "ActiveJob::Serializers::SymbolSerializer", "value": "sym"}],
        "_aj_symbol_keys": ["a"],
    },
    {"_aj_globalid": "gid://myapp/User/42"},
    {"key": "kw", "_aj_ruby2_keywords": ["key"]},
]


def active_job(
    wrapper: str, job_class: str, arguments: list[Any], wrapped: bool = True
) -> dict[str, Any]:
    payload = {
        "job_class": job_class,
        "job_id": "3f1c",
        "queue_name": "mailers",
        "arguments": arguments,
        "executions": 0,
        "locale": "en",
        "enqueued_at": "2026-11-27T23:45:05Z",
    }
    item = {"class": wrapper, "queue": "mailers", "args": [payload], "retry": True, "jid": "c" * 24}
    if wrapped:
        item["wrapped"] = job_class
    return item


@pytest.mark.parametrize("wrapper", sorted(api.ACTIVE_JOB_WRAPPERS))
def test_active_job_envelopes_show_the_wrapped_job_as_the_web_ui_does(wrapper: str) -> None:
    entry = record(active_job(wrapper, "MyAjJob", ACTIVE_JOB_ARGUMENTS))
    assert entry.klass == wrapper
    assert entry.display_class == "MyAjJob"
    assert entry.display_args == [
        1,
        "two",
        {"a": 1, "b": [{"value": "sym"}]},
        "gid://myapp/User/42",
        {"key": "kw"},
    ]
    # Envelopes without "wrapped" (sidekiq-cron's hand-built ones): the class from the payload.
    assert record(active_job(wrapper, "MyAjJob", [1], wrapped=False)).display_class == "MyAjJob"


def test_mailer_jobs_show_mailer_method_and_the_mail_arguments() -> None:
    mail = [
        "UserMailer",
        "welcome",
        "deliver_now",
        {
            "params": {"locale": "de", "_aj_symbol_keys": ["locale"]},
            "args": [{"_aj_globalid": "gid://app/User/1"}],
            "_aj_ruby2_keywords": ["params", "args"],
        },
    ]
    wrapper = "Sidekiq::ActiveJob::Wrapper"
    entry = record(active_job(wrapper, "ActionMailer::MailDeliveryJob", mail))
    assert entry.display_class == "UserMailer#welcome"
    assert entry.display_args == [{"locale": "de"}, ["gid://app/User/1"]]
    old = record(
        active_job(
            wrapper, "ActionMailer::DeliveryJob", ["UserMailer", "welcome", "deliver_now", 7]
        )
    )
    assert (old.display_class, old.display_args) == ("UserMailer#welcome", [7])


def test_display_overrides_and_encrypted_args() -> None:
    assert record({"class": "A", "args": [], "display_class": "Shown"}).display_class == "Shown"
    secret = record({"class": "A", "args": [1, "c2VjcmV0"], "encrypt": True})
    assert secret.display_args == [1, "[encrypted data]"] and secret.args == [1, "c2VjcmV0"]


def test_error_backtrace_in_each_stored_form() -> None:
    lines = ["app/jobs/hard_job.rb:3:in `perform'", "sidekiq/processor.rb:196:in `execute_job'"]
    strict = backtrace.compress(lines)
    mime = "\n".join(strict[i : i + 60] for i in range(0, len(strict), 60)) + "\n"
    for stored in (strict, mime, lines):
        assert (
            record({"class": "A", "args": [], "error_backtrace": stored}).error_backtrace == lines
        )
    # Marshal data of Sidekiq < 7 is never loaded; absent reads as None.
    assert (
        record(
            {"class": "A", "args": [], "error_backtrace": "BAhbBkkiBmEGOgZFVA=="}
        ).error_backtrace
        is None
    )
    assert record({"class": "A", "args": []}).error_backtrace is None


def test_a_manual_retry_keeps_every_key_and_the_timestamp_unit() -> None:
    stored = job(retry_count=3, error_class="E", error_message="m", bid="b-1", tags=["x"], at=1.5)
    stored["created_at"] = 1700000000123  # Sidekiq 8 milliseconds
    stored["enqueued_at"] = 1700000000123
    pushed = api.requeued(jobs.dumps(stored), retry=True)
    assert pushed["retry_count"] == 2
    assert isinstance(pushed["enqueued_at"], int) and pushed["enqueued_at"] > 1700000000123
    assert "at" not in pushed
    assert {k: v for k, v in pushed.items() if k not in ("retry_count", "enqueued_at")} == {
        k: v for k, v in stored.items() if k not in ("retry_count", "enqueued_at", "at")
    }
    assert api.requeued(jobs.dumps(job(retry_count=0)), retry=True)["retry_count"] == -1  # as Ruby
    assert api.requeued(jobs.dumps(job(retry_count=3)), retry=False)["retry_count"] == 3
    assert api.requeued('{"class":"A","args":[]}', retry=True)["queue"] == "default"
    with pytest.raises(InvalidJob, match="args"):
        api.requeued('{"class":"A","args":"nope"}', retry=True)


# -- queues --------------------------------------------------------------------------------


def test_queue_iterates_newest_first_and_survives_deletes_while_iterating(client: Client) -> None:
    pushed = client.push_bulk([job(args=[n]) for n in range(120)])
    queue = api.Queue(client, "default")
    assert queue.size() == 120 and len(queue) == 120
    seen = []
    for entry in queue:
        seen.append(entry.jid)
        if entry.args[0] % 2:
            assert entry.delete()
    assert seen == pushed[::-1]
    assert queue.size() == 60
    target = pushed[10]
    found = queue.find_job(target)
    assert found is not None and found.args == [10] and found.queue == "default"
    assert queue.find_job("f" * 24) is None
    assert queue.delete(target) and not queue.delete(target)


def test_queue_latency_reads_seconds_and_milliseconds(client: Client) -> None:
    old = job()
    old["enqueued_at"] = int((time.time() - 30) * 1000)
    client.push(old)
    client.push(job())
    assert 29 < api.Queue(client).latency() < 32  # the oldest job: the list's tail
    assert api.Queue(client, "empty").latency() == 0.0


def test_queue_all_and_clear(client: Client) -> None:
    for name in ("low", "critical", "default"):
        client.push(job(queue=name))
    assert [q.name for q in api.Queue.all(client)] == ["critical", "default", "low"]
    assert api.Queue(client, "low").clear() == 1
    assert [q.name for q in api.Queue.all(client)] == ["critical", "default"]
    assert not client.redis.exists("queue:low")


# -- sorted sets -----------------------------------------------------------------------------


def failed(n: int = 0, **extra: Any) -> dict[str, Any]:
    fields = {
        "retry_count": 0,
        "error_class": "RuntimeError",
        "error_message": "boom",
        "failed_at": time.time(),
    }
    return job(args=[n], **(fields | extra))


def test_retry_pushes_the_job_back_and_leaves_nothing_behind(
    client: Client, redis: redis_lib.Redis
) -> None:
    retries = api.RetrySet(client)
    stored = failed(retry_count=4, custom={"kept": True})
    retries.schedule(time.time() + 60, stored)
    entry = retries.find_job(stored["jid"])
    assert entry is not None and entry.error and entry.retry_count == 4
    assert entry.retry()
    assert retries.size() == 0
    (pushed,) = [json.loads(raw) for raw in redis.lrange("queue:default", 0, -1)]
    assert (
        pushed["retry_count"] == 3
        and pushed["custom"] == {"kept": True}
        and pushed["jid"] == stored["jid"]
    )
    assert redis.smembers("queues") == {b"default"}
    # The member is gone now: a second action on the stale entry does nothing.
    assert not entry.retry() and not entry.kill() and not entry.delete()
    assert redis.llen("queue:default") == 1 and redis.zcard("dead") == 0


def test_kill_moves_to_dead_and_trims_by_age(client: Client, redis: redis_lib.Redis) -> None:
    ancient = failed(99)
    api.DeadSet(client).schedule(time.time() - DEAD_TIMEOUT - 60, ancient)
    scheduled = api.ScheduledSet(client)
    stored = job(args=["later"])
    scheduled.schedule(time.time() + 3600, stored)
    assert scheduled.kill(stored["jid"])
    dead = api.DeadSet(client)
    (entry,) = list(dead)
    assert entry.jid == stored["jid"] and abs(entry.score - time.time()) < 5
    assert entry.item == stored  # the member moves as it was
    assert scheduled.size() == 0
    assert not scheduled.kill(stored["jid"])


def test_single_actions_on_an_invalid_member_raise_and_keep_it(
    client: Client, redis: redis_lib.Redis
) -> None:
    redis.zadd("retry", {'{"class":"A","args":"x","jid":"' + "e" * 24 + '"}': time.time()})
    entry = api.RetrySet(client).find_job("e" * 24)
    assert entry is not None
    with pytest.raises(InvalidJob):
        entry.retry()
    assert redis.zcard("retry") == 1
    assert entry.kill() and redis.zcard("dead") == 1  # killing needs no parsing


def test_retry_all_moves_the_jobs_present_at_the_start_and_leaves_invalid_members(
    client: Client, redis: redis_lib.Redis
) -> None:
    dead = api.DeadSet(client)
    now = time.time()
    for n in range(250):
        dead.schedule(now - n, failed(n, queue=f"q{n % 3}"))
    redis.zadd("dead", {"not a job": now - 1000})  # lowest score: first in every batch
    reported: list[int] = []
    assert dead.retry_all(reported.append) == 250
    assert sum(reported) == 251
    assert redis.zrange("dead", 0, -1) == [b"not a job"]
    assert sum(redis.llen(f"queue:q{n}") for n in range(3)) == 250
    assert redis.smembers("queues") == {b"q0", b"q1", b"q2"}


def test_kill_all_and_add_all_to_queue(client: Client, redis: redis_lib.Redis) -> None:
    retries, scheduled = api.RetrySet(client), api.ScheduledSet(client)
    for n in range(5):
        retries.schedule(time.time() + n, failed(n))
        scheduled.schedule(time.time() + n, job(args=[n], retry_count=2))
    assert retries.kill_all() == 5 and redis.zcard("dead") == 5 and retries.size() == 0
    assert scheduled.add_all_to_queue() == 5
    assert all(json.loads(raw)["retry_count"] == 2 for raw in redis.lrange("queue:default", 0, -1))


def test_set_iteration_is_latest_first_and_survives_removals(client: Client) -> None:
    retries = api.RetrySet(client)
    for n in range(120):
        retries.schedule(1_800_000_000 + n, failed(n))
    order = []
    for entry in retries:
        order.append(entry.args[0])
        if entry.args[0] % 3 == 0:
            assert entry.delete()
    assert order == list(range(119, -1, -1))
    assert retries.size() == 80
    assert [e.args[0] for e in retries.page(0, 3)] == [1, 2, 4]
    assert [e.args[0] for e in retries.page(0, 2, reverse=True)] == [119, 118]
    assert [e.args[0] for e in retries.fetch(1_800_000_001)] == [1]
    assert [e.args[0] for e in retries.fetch((1_800_000_001, 1_800_000_005))] == [1, 2, 4, 5]


def test_reschedule_moves_only_a_member_still_there(client: Client, redis: redis_lib.Redis) -> None:
    scheduled = api.ScheduledSet(client)
    stored = job()
    scheduled.schedule(time.time() + 60, stored)
    (entry,) = list(scheduled)
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    assert entry.reschedule(later)
    assert abs(entry.score - later.timestamp()) < 0.01
    assert abs(redis.zscore("schedule", entry.value) - later.timestamp()) < 0.01
    redis.delete("schedule")
    assert not entry.reschedule(time.time()) and redis.zcard("schedule") == 0


def test_clear_a_set(client: Client) -> None:
    dead = api.DeadSet(client)
    for n in range(3):
        dead.add(failed(n))
    assert dead.clear() == 3 and dead.size() == 0


# -- stats, processes, work ------------------------------------------------------------------


@pytest.fixture
def namespaced(redis: redis_lib.Redis) -> Client:
    return Client(redis, Keys("ns"))


def put_process(
    redis: redis_lib.Redis, key: str, fields: dict[str, Any], processes: str = "processes"
) -> None:
    redis.sadd(processes, key.split(":", 1)[1] if key.startswith("ns:") else key)
    redis.hset(key, mapping=fields)
    redis.expire(key, 60)


def ruby_64_process(identity: str, busy: int = 0, quiet: str = "false") -> dict[str, Any]:
    info = {
        "hostname": "web1",
        "started_at": 1700000000.5,
        "pid": 4242,
        "tag": "app",
        "concurrency": 10,
        "queues": ["default", "low"],
        "labels": ["blue"],
        "identity": identity,
    }
    return {
        "info": json.dumps(info),
        "busy": busy,
        "beat": "1700000100.25",
        "quiet": quiet,
        "rss": 123456,
        "rtt_us": 250,
    }


def test_stats_under_a_namespace(namespaced: Client, redis: redis_lib.Redis) -> None:
    namespaced.push_bulk([job(queue="default") for _ in range(3)] + [job(queue="low")] * 2)
    redis.set("queue:default", "not ours")  # an un-namespaced key of another app: ignored
    api.ScheduledSet(namespaced).schedule(time.time() + 60, job())
    api.RetrySet(namespaced).schedule(time.time() + 60, failed())
    api.DeadSet(namespaced).add(failed())
    put_process(redis, "ns:web1:1:aaa", ruby_64_process("web1:1:aaa", busy=3))
    put_process(redis, "ns:web2:2:bbb", ruby_64_process("web2:2:bbb", busy=2))
    redis.sadd("ns:processes", "web1:1:aaa", "web2:2:bbb")
    redis.srem("processes", "web1:1:aaa", "web2:2:bbb")
    today = datetime.now(timezone.utc).date()
    redis.mset(
        {
            "ns:stat:processed": 1000,
            "ns:stat:failed": 7,
            f"ns:stat:processed:{today:%Y-%m-%d}": 40,
            f"ns:stat:failed:{(today - timedelta(days=1)):%Y-%m-%d}": 2,
        }
    )
    stats = api.Stats(namespaced)
    assert stats.to_dict() | {"default_queue_latency": 0} == {
        "processed": 1000,
        "failed": 7,
        "enqueued": 5,
        "scheduled_size": 1,
        "retry_size": 1,
        "dead_size": 1,
        "processes_size": 2,
        "workers_size": 5,
        "default_queue_latency": 0,
        "queues": {"default": 3, "low": 2},
    }
    assert 0 <= stats.default_queue_latency < 5
    assert list(stats.queues) == ["default", "low"]  # largest first
    history = stats.history(3)
    days = [f"{today - timedelta(days=n):%Y-%m-%d}" for n in range(3)]
    assert history.processed == dict(zip(days, [40, 0, 0], strict=True))
    assert history.failed == dict(zip(days, [0, 2, 0], strict=True))
    with pytest.raises(ValueError, match="days"):
        stats.history(0)
    stats.reset("failed")
    assert api.Stats(namespaced).failed == 0 and api.Stats(namespaced).processed == 1000


def test_processes_as_each_writer_writes_them(client: Client, redis: redis_lib.Redis) -> None:
    put_process(redis, "web1:4242:0a1b2c3d4e5f", ruby_64_process("web1:4242:0a1b2c3d4e5f", busy=2))
    rusty_info = {
        "hostname": "h",
        "identity": "h:42:" + "ab" * 12,
        "started_at": 1700000000.0,
        "pid": 42,
        "tag": None,
        "concurrency": 8,
        "queues": ["default"],
        "labels": [],
    }
    put_process(
        redis,
        "h:42:" + "ab" * 12,
        {
            "rss": 0,
            "rtt_us": 0,
            "busy": 1,
            "quiet": 0,
            "beat": 1700000200,
            "info": json.dumps(rusty_info),
        },
    )
    # Sidekiq 8.1.2+: concurrency in its own field; 8.0.9+: capsules (queues kept till 9.0).
    new_info = {
        "hostname": "n",
        "identity": "n:7:ffffffffffff",
        "pid": 7,
        "started_at": 1700000000.0,
        "version": "8.1.2",
        "embedded": True,
        "capsules": {
            "default": {
                "concurrency": 5,
                "mode": "strict",
                "weights": {"critical": 0, "default": 0},
            }
        },
    }
    put_process(
        redis,
        "n:7:ffffffffffff",
        {
            "info": json.dumps(new_info),
            "busy": 0,
            "beat": "1700000300.5",
            "quiet": "true",
            "concurrency": 12,
        },
    )
    redis.sadd("processes", "gone:1:000000000000")  # died without cleanup: no hash
    processes = api.ProcessSet(client)
    assert processes.size() == 3  # the dead one was pruned
    by_host = {p.hostname: p for p in processes}
    ruby, rusty, new = by_host["web1"], by_host["h"], by_host["n"]
    assert (ruby.pid, ruby.tag, ruby.labels, ruby.queues, ruby.busy, ruby.concurrency) == (
        4242,
        "app",
        ["blue"],
        ["default", "low"],
        2,
        10,
    )
    assert ruby.beat == datetime.fromtimestamp(1700000100.25, timezone.utc) and not ruby.stopping
    assert (ruby.rss_kb, ruby.rtt_us) == (123456, 250)
    assert (rusty.tag, rusty.concurrency, rusty.stopping, rusty.busy) == (None, 8, False, 1)
    assert rusty.beat == datetime.fromtimestamp(1700000200, timezone.utc)
    assert (new.concurrency, new.queues, new.stopping, new.version) == (
        12,
        ["critical", "default"],
        True,
        "8.1.2",
    )
    assert processes.total_concurrency() == 30 and processes.leader() == ""
    assert processes.get("web1:4242:0a1b2c3d4e5f") is not None and processes.get("nobody") is None


def test_signals_reach_the_process_key_and_expire(
    namespaced: Client, redis: redis_lib.Redis
) -> None:
    put_process(redis, "ns:web1:1:aaa", ruby_64_process("web1:1:aaa"))
    redis.sadd("ns:processes", "web1:1:aaa")
    redis.srem("processes", "web1:1:aaa")
    (process,) = api.ProcessSet(namespaced)
    process.quiet()
    process.stop()
    process.dump_threads()
    assert redis.lrange("ns:web1:1:aaa-signals", 0, -1) == [b"TTIN", b"TERM", b"TSTP"]
    assert 0 < redis.ttl("ns:web1:1:aaa-signals") <= 60
    embedded = api.Process(
        namespaced, {"identity": "e:1:x", "embedded": True}, {"identity": "e:1:x"}
    )
    with pytest.raises(ValueError, match="embedded"):
        embedded.quiet()


def test_workers_read_both_work_hash_names(client: Client, redis: redis_lib.Redis) -> None:
    payload = jobs.dumps(job("Slow", [5]))
    put_process(redis, "a:1:x", ruby_64_process("a:1:x", busy=1))
    redis.hset(
        "a:1:x:work",
        "t1",
        json.dumps({"queue": "default", "payload": payload, "run_at": 1700000010}),
    )
    put_process(
        redis, "b:2:y", ruby_64_process("b:2:y", busy=1)
    )  # Sidekiq 6.4.1: ":workers", an object
    redis.hset(
        "b:2:y:workers",
        "t9",
        json.dumps({"queue": "low", "payload": job("Old", [1]), "run_at": 1700000000}),
    )
    redis.sadd("processes", "c:3:z")  # gone: its leftover work is not shown
    redis.hset("c:3:z:work", "t0", json.dumps({"queue": "x", "payload": payload, "run_at": 1}))
    works = list(api.Workers(client))
    assert [(w.process_id, w.thread_id, w.queue, w.job.klass) for w in works] == [
        ("b:2:y", "t9", "low", "Old"),
        ("a:1:x", "t1", "default", "Slow"),
    ]
    assert works[1].payload == payload and works[1].job.args == [5]
    assert works[0].run_at == datetime.fromtimestamp(1700000000, timezone.utc)
    assert api.Workers(client).size() == 2
    assert api.WorkSet(client).find_work(json.loads(payload)["jid"]) is not None


def test_a_client_that_decodes_replies_to_str_works_the_same(
    redis_server: Any, redis: redis_lib.Redis
) -> None:
    text_client = Client(redis_server.client(decode_responses=True))
    pushed = text_client.push(job(args=["ü"]))
    api.RetrySet(text_client).schedule(time.time(), failed(1))
    put_process(redis, "a:1:x", ruby_64_process("a:1:x", busy=1))
    stats = api.Stats(text_client)
    assert (stats.enqueued, stats.retry_size, stats.workers_size) == (1, 1, 1)
    found = api.Queue(text_client).find_job(pushed)
    assert found is not None and found.args == ["ü"] and found.delete()
    assert api.RetrySet(text_client).retry_all() == 1 and api.Queue(text_client).size() == 1
    assert [p.identity for p in api.ProcessSet(text_client)] == ["a:1:x"]


# -- sources ---------------------------------------------------------------------------------


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    app = Celery("api_test", broker=broker_url)
    celery_sidekiq.setup(app, namespace="yolo_app", sidekiq_version=8)
    yield app
    app.close()


def test_a_celery_app_brings_its_broker_namespace_and_version(
    app: Celery, redis: redis_lib.Redis
) -> None:
    client = api.client_of(app)
    assert client.keys == Keys("yolo_app") and client.version == 8
    assert api.client_of(app) is client  # one per app
    Client(redis, Keys("yolo_app")).push(job())
    assert api.Stats(app).enqueued == 1 and api.Queue(app).size() == 1
    (retried,) = [api.requeued(jobs.dumps(job()), retry=True, version=client.version)]
    assert isinstance(retried["enqueued_at"], float)  # the job's own unit wins over the version


def test_sources_that_cannot_work_fail_with_what_to_change(redis_url: str) -> None:
    plain = Celery("plain", broker=redis_url)
    with pytest.raises(ValueError, match="sidekiq://"):
        api.Stats(plain)
    with pytest.raises(TypeError, match=r"Celery app, a redis\.Redis"):
        api.Stats("redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="namespace"):
        api.client_of(Celery("x", broker="sidekiq://localhost"), Keys("ns"))


# -- hostile members -------------------------------------------------------------------------


def refusal(raw: bytes) -> str | None:
    """job.parse's reason for refusing ``raw``, or None if it is a job."""
    try:
        jobs.parse(raw)
    except InvalidJob as exc:
        return exc.reason
    return None


RECORD_PROPERTIES = (
    "klass",
    "args",
    "jid",
    "bid",
    "created_at",
    "enqueued_at",
    "failed_at",
    "retried_at",
    "retry_count",
    "error_class",
    "error_message",
    "error_backtrace",
    "tags",
    "latency",
    "display_class",
    "display_args",
)


def assert_reads_whole(record: api.JobRecord, raw: bytes) -> dict[str, Any]:
    """A record of any member reads without raising: invalid, with parse's own reason, exactly
    when parse refuses it, and all it shows is JSON (no NaN) that UTF-8 can carry."""
    reason = refusal(raw)
    assert record.invalid == (reason is not None)
    assert record.reason == reason
    for name in RECORD_PROPERTIES:
        getattr(record, name)
    data = record.to_dict()
    assert data["reason"] == reason
    json.dumps(data, ensure_ascii=False, allow_nan=False, default=str).encode("utf-8")
    if record.invalid:
        assert data["value"] is not None and record.args == [data["value"]]
    return data


@settings(max_examples=300, deadline=None)
@given(hostile.hostile_members())
def test_a_record_of_any_hostile_member_reads_whole(raw: bytes) -> None:
    assert_reads_whole(api.JobRecord(OFFLINE, raw, "default"), raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert_reads_whole(api.JobRecord(OFFLINE, text, "default"), raw)  # as a decoding client reads


@pytest.mark.parametrize("name", sorted(hostile.EXAMPLES))
def test_each_kind_of_hostile_member_reads_and_acts_in_every_set(
    client: Client, redis: redis_lib.Redis, name: str
) -> None:
    raw = hostile.EXAMPLES[name]
    now = time.time()
    for key in ("schedule", "retry", "dead"):
        redis.zadd(key, {raw: now - 10})
    redis.lpush("queue:default", raw)
    sets = [api.ScheduledSet(client), api.RetrySet(client), api.DeadSet(client)]
    for jobset in sets:
        (entry,) = list(jobset)
        assert_reads_whole(entry, raw)
        assert [e.value for e in jobset.page(0, 10, reverse=True)] == [raw]
        assert [e.value for e in jobset.fetch((now - 20, now))] == [raw]
        assert [e.value for e in jobset.scan("HostileJob")] == (
            [raw] if b"HostileJob" in raw else []
        )
        if entry.jid is not None:
            found = jobset.find_job(entry.jid)
            assert found is not None and found.value == raw
    (queued,) = list(api.Queue(client))
    assert_reads_whole(queued, raw)
    found = api.Queue(client).find_job("ab" * 12)  # base_job's jid, if the member still shows it
    assert (found and found.value) == (raw if queued.jid == "ab" * 12 else None)
    api.Queue(client).latency()
    api.Stats(client).to_dict()
    scheduled, retries, dead = sets
    (entry,) = list(retries)
    if refusal(raw) is None:  # a job with odd keys is still a job: it can be retried
        assert entry.retry() and redis.zcard("retry") == 0
    else:
        with pytest.raises(InvalidJob):
            entry.retry()
        assert redis.zrange("retry", 0, -1) == [raw]
        assert entry.kill()  # killing needs no parsing
        assert redis.zcard("retry") == 0
    (entry,) = list(scheduled)
    assert entry.delete() and scheduled.size() == 0
    assert queued.delete() and not queued.delete()
    assert len(dead) >= 1


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    members=st.lists(hostile.hostile_members(), min_size=1, max_size=5, unique=True),
    good_count=st.integers(0, 3),
    decoding=st.booleans(),
)
def test_listings_and_bulk_actions_never_raise_past_hostile_members(
    redis_server: Any,
    redis: redis_lib.Redis,
    members: list[bytes],
    good_count: int,
    decoding: bool,
) -> None:
    redis.flushall()
    source = Client(redis_server.client(decode_responses=True)) if decoding else Client(redis)
    now = time.time()
    good = [failed(n) for n in range(good_count)]
    for n, raw in enumerate(members):
        redis.zadd("retry", {raw: now - 100 + n})
        redis.zadd("schedule", {raw: now + 100 + n})
        redis.lpush("queue:default", raw)
    for n, item in enumerate(good):
        redis.zadd("retry", {jobs.dumps(item): now + n})
    refused = {raw for raw in members if refusal(raw) is not None}
    retries, scheduled = api.RetrySet(source), api.ScheduledSet(source)
    listed = [entry.to_dict() for entry in retries] + [entry.to_dict() for entry in scheduled]
    assert sum(entry["invalid"] for entry in listed) == 2 * len(refused)
    for entry in [*retries.page(0, 100), *api.Queue(source)]:
        raw = entry.value if isinstance(entry.value, bytes) else entry.value.encode()
        assert_reads_whole(entry, raw)
    api.Stats(source)
    # Bulk actions go through every member; what is no job stays where it is.
    assert retries.retry_all() == len(good) + len(members) - len(refused)
    assert set(redis.zrange("retry", 0, -1)) == refused
    assert scheduled.kill_all() == len(members)
    assert scheduled.size() == 0 and redis.zcard("dead") == len(members)
    assert api.DeadSet(source).retry_all() == len(members) - len(refused)
    assert set(redis.zrange("dead", 0, -1)) == refused


def test_a_queue_key_of_another_type_leaves_its_job_in_the_set(
    client: Client, redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis.set("queue:stray", "a string where a list belongs")
    retries = api.RetrySet(client)
    stuck = failed(0, queue="stray")
    retries.schedule(time.time() - 50, stuck)
    for n in range(1, 4):
        retries.schedule(time.time() + n, failed(n))
    with caplog.at_level(logging.WARNING, "celery_sidekiq.api"):
        assert retries.retry_all() == 3
    assert "queue:stray: WRONGTYPE" in caplog.text
    (left,) = list(retries)
    assert left.jid == stuck["jid"]
    with pytest.raises(redis_lib.ResponseError, match="queue:stray: WRONGTYPE"):
        left.retry()
    assert retries.size() == 1 and redis.get("queue:stray") == b"a string where a list belongs"
    redis.delete("queue:stray")
    assert left.retry() and redis.llen("queue:stray") == 1 and retries.size() == 0


def test_a_dead_set_of_another_type_refuses_kills_and_loses_nothing(
    client: Client, redis: redis_lib.Redis
) -> None:
    scheduled = api.ScheduledSet(client)
    for n in range(3):
        scheduled.schedule(time.time() + n, job(args=[n]))
    redis.set("dead", "a string where the dead set belongs")
    assert scheduled.kill_all() == 0 and scheduled.size() == 3
    entry = next(iter(scheduled))
    with pytest.raises(redis_lib.ResponseError, match="dead: WRONGTYPE"):
        entry.kill()
    assert scheduled.size() == 3
    redis.delete("dead")
    assert entry.kill() and scheduled.kill_all() == 2 and redis.zcard("dead") == 3


def test_absurd_figures_and_queue_heads_read_as_zero(
    client: Client, redis: redis_lib.Redis
) -> None:
    redis.mset({"stat:processed": "1e400", "stat:failed": "9" * 5000})
    redis.sadd("queues", "default")
    redis.rpush("queue:default", hostile.EXAMPLES["nested_100000"])
    stats = api.Stats(client)
    assert (stats.processed, stats.failed, stats.default_queue_latency) == (0, 0, 0.0)
    assert stats.enqueued == 1 and api.Queue(client).latency() == 0.0
