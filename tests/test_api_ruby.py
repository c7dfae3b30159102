"""celery_sidekiq.api beside Ruby's ``Sidekiq::API`` (sidekiq.rb 6.4.1) on the same Redis.

Data comes from both sides; every figure and record is read by both and compared, and every
action is done once by each side on twin jobs, comparing what it leaves in Redis. In CI these
run, never skip: ``require_ruby`` fails there when Ruby is missing.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from support.ruby import JOBS, ruby_eval, ruby_push
from support.waiting import wait_for

from celery_sidekiq import api
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("sidekiq_rb", "require_ruby")]


def ruby_json(redis_url: str, script: str, **env: str) -> Any:
    return json.loads(ruby_eval(redis_url, script, env=env or None))


def close(a: float, b: float, tolerance: float) -> bool:
    return abs(a - b) <= tolerance


@pytest.fixture
def client(redis: redis_lib.Redis) -> Client:
    return Client(redis)


def failed_job(jid: str, **extra: Any) -> dict[str, Any]:
    now = time.time() - 100
    item = {
        "class": "Workers::Flaky",
        "args": [1, {"k": "v"}],
        "queue": "default",
        "jid": jid,
        "retry": 5,
        "created_at": now,
        "error_message": "boom",
        "error_class": "RuntimeError",
        "failed_at": now,
        "retry_count": 0,
        "tags": ["billing"],
        "custom": {"kept": [1, 2]},
    }
    return item | extra


# Sidekiq 6.4.1's own backtrace compression (JobRetry#compress_backtrace): MIME Base64.
RUBY_BACKTRACE = (
    'Base64.encode64(Zlib::Deflate.deflate(JSON.generate(["a.rb:1:in `x\'", "b.rb:2:in `y\'"])))'
)


def test_stats_and_history_match_ruby(
    client: Client, redis: redis_lib.Redis, redis_url: str
) -> None:
    ruby_eval(
        redis_url,
        """
        3.times { |n| Sidekiq::Client.push("class" => "HardJob", "args" => [n]) }
        Sidekiq::Client.push("class" => "HardJob", "args" => [9], "queue" => "low")
        Sidekiq::Client.push("class" => "Later", "args" => [], "at" => Time.now.to_f + 600)
        item = {"class" => "F", "args" => [], "queue" => "default", "jid" => "1" * 24,
          "retry" => true}
        Sidekiq::RetrySet.new.schedule(Time.now.to_f + 60, item)
        Sidekiq::DeadSet.new.kill(JSON.generate(item), notify_failure: false)
    """,
    )
    oldest = jobs.build("HardJob", ["oldest"])
    oldest["enqueued_at"] = oldest["created_at"] = time.time() - 30
    client.redis.rpush("queue:default", jobs.dumps(oldest))  # the tail: next to run
    client.push_bulk([jobs.build("PyJob", [n], queue="critical") for n in range(5)])
    api.ScheduledSet(client).schedule(time.time() + 60, jobs.build("PyLater", [], scheduled=True))
    api.RetrySet(client).schedule(time.time() + 60, failed_job("2" * 24))
    api.DeadSet(client).add(failed_job("3" * 24))
    for identity, busy in (("web1:1:aaaaaaaaaaaa", 2), ("py:2:bbbbbbbbbbbb", 3)):
        redis.sadd("processes", identity)
        redis.hset(
            identity,
            mapping={"info": json.dumps({"identity": identity}), "busy": busy, "beat": time.time()},
        )
    today = datetime.now(timezone.utc).date()
    redis.mset(
        {
            "stat:processed": 1234,
            "stat:failed": 56,
            f"stat:processed:{today:%Y-%m-%d}": 30,
            f"stat:failed:{today - timedelta(days=1):%Y-%m-%d}": 4,
        }
    )

    python = api.Stats(client)
    history = python.history(3)
    ruby = ruby_json(
        redis_url,
        """
        s = Sidekiq::Stats.new
        h = Sidekiq::Stats::History.new(3)
        puts JSON.generate(processed: s.processed, failed: s.failed, enqueued: s.enqueued,
          scheduled_size: s.scheduled_size, retry_size: s.retry_size, dead_size: s.dead_size,
          processes_size: s.processes_size, workers_size: s.workers_size,
          default_queue_latency: s.default_queue_latency, queues: s.queues.to_a,
          processed_by_day: h.processed, failed_by_day: h.failed)
    """,
    )
    mine = python.to_dict()
    assert close(mine.pop("default_queue_latency"), ruby.pop("default_queue_latency"), 2.0)
    assert 29 < python.default_queue_latency < 35
    assert [size for _, size in ruby["queues"]] == list(python.queues.values())  # largest first
    assert mine.pop("queues") == dict(ruby.pop("queues"))
    assert (history.processed, history.failed) == (
        ruby.pop("processed_by_day"),
        ruby.pop("failed_by_day"),
    )
    assert mine == ruby
    assert mine == {
        "processed": 1234,
        "failed": 56,
        "enqueued": 10,
        "scheduled_size": 2,
        "retry_size": 2,
        "dead_size": 2,
        "processes_size": 2,
        "workers_size": 5,
    }


RECORD_FIELDS = """
# Copies first: 6.4.1's display_args overwrites the last arg of an "encrypt" job in place.
def record(job)
  args, item = JSON.parse(JSON.generate([job.args, job.item]))
  {"jid" => job.jid, "klass" => job.klass, "args" => args, "queue" => job.queue,
   "enqueued_at" => job.enqueued_at&.to_f, "created_at" => job.created_at.to_f,
   "display_class" => job.display_class, "display_args" => job.display_args,
   "latency" => job.latency, "tags" => job.tags, "item" => item,
   "error_backtrace" => job.error_backtrace}
end
def entry(job)
  record(job).merge("score" => job.score, "at" => job.at.to_f, "error" => job.error?)
end
"""


def python_record(job: api.JobRecord) -> dict[str, Any]:
    return {
        "jid": job.jid,
        "klass": job.klass,
        "args": job.args,
        "queue": job.queue,
        "enqueued_at": job.enqueued_at.timestamp() if job.enqueued_at else None,
        "created_at": job.created_at.timestamp(),
        "display_class": job.display_class or None,
        "display_args": job.display_args,
        "latency": job.latency,
        "tags": job.tags,
        "item": job.item,
        "error_backtrace": job.error_backtrace,
    }


def python_entry(entry: api.SortedEntry) -> dict[str, Any]:
    return python_record(entry) | {
        "score": entry.score,
        "at": entry.at.timestamp(),
        "error": entry.error,
    }


def assert_same_records(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert len(mine) == len(theirs)
    for python, ruby in zip(mine, theirs, strict=True):
        for key in ("enqueued_at", "created_at", "score", "at"):
            if ruby.get(key) is not None or python.get(key) is not None:
                assert close(python.pop(key), ruby.pop(key), 1e-3), key
        assert close(python.pop("latency"), ruby.pop("latency"), 2.0)
        assert python == ruby


def test_queues_and_their_jobs_read_as_ruby_reads_them(
    client: Client, redis: redis_lib.Redis, redis_url: str
) -> None:
    ruby_push(redis_url, "HardJob", [1, "two", None, {"k": [1.5]}], tags=["a"], backtrace=3)
    ruby_push(redis_url, "Mailer", ["x"], queue="mailers")
    client.push(jobs.build("Workers::PyJob", [{"nested": ["ü", 2]}], extra={"bid": "b-1"}))
    aj = {
        "class": "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper",
        "wrapped": "SendReport",
        "args": [{"job_class": "SendReport", "arguments": [42, "monthly"], "job_id": "ab"}],
    }
    client.push(jobs.build(aj["class"], aj["args"], extra={"wrapped": "SendReport"}))
    client.push(jobs.build("Secret", [1, "ciphertext"], queue="mailers", extra={"encrypt": True}))
    redis.lpush("queue:default", "{this is not json")
    ruby = ruby_json(
        redis_url,
        RECORD_FIELDS
        + """
        out = Sidekiq::Queue.all.map { |q|
          {"name" => q.name, "size" => q.size, "latency" => q.latency,
           "jobs" => q.map { |j| record(j) }}
        }
        puts JSON.generate(out)
    """,
    )
    queues = api.Queue.all(client)
    assert [q.name for q in queues] == [r["name"] for r in ruby] == ["default", "mailers"]
    for queue, theirs in zip(queues, ruby, strict=True):
        assert queue.size() == theirs["size"]
        assert close(queue.latency(), theirs["latency"], 2.0)
        assert_same_records([python_record(job) for job in queue], theirs["jobs"])


def test_sorted_sets_read_as_ruby_reads_them(client: Client, redis_url: str) -> None:
    ruby_eval(
        redis_url,
        f"""
        item = {{"class" => "Workers::Flaky", "args" => [1], "queue" => "low", "jid" => "a" * 24,
          "retry" => true, "created_at" => Time.now.to_f - 50, "error_class" => "NameError",
          "error_message" => "uninitialized constant", "failed_at" => Time.now.to_f,
          "retry_count" => 2,
          "error_backtrace" => {RUBY_BACKTRACE}}}
        Sidekiq::RetrySet.new.schedule(Time.now.to_f + 30, item)
        Sidekiq::DeadSet.new.kill(JSON.generate(item.merge("jid" => "b" * 24)),
          notify_failure: false)
        Sidekiq::Client.push("class" => "Later", "args" => [2], "at" => Time.now.to_f + 90)
    """,
    )
    api.RetrySet(client).schedule(time.time() + 10, failed_job("c" * 24))
    api.ScheduledSet(client).schedule(time.time() + 5, jobs.build("PyLater", [3], scheduled=True))
    ruby = ruby_json(
        redis_url,
        RECORD_FIELDS
        + """
        sets = [Sidekiq::ScheduledSet.new, Sidekiq::RetrySet.new, Sidekiq::DeadSet.new]
        out = sets.map { |s| {"name" => s.name, "size" => s.size,
          "entries" => s.map { |e| entry(e) },
          "found" => entry(s.first).then { |e| s.find_job(e["jid"]) && e["jid"] }} }
        puts JSON.generate(out)
    """,
    )
    for jobset, theirs in zip(
        (api.ScheduledSet(client), api.RetrySet(client), api.DeadSet(client)), ruby, strict=True
    ):
        assert (jobset.name, jobset.size()) == (theirs["name"], theirs["size"])
        assert_same_records([python_entry(entry) for entry in jobset], theirs["entries"])
        found = jobset.find_job(theirs["found"])
        assert found is not None and found.jid == theirs["found"]
    assert api.RetrySet(client).find_job("a" * 24).error_backtrace == [
        "a.rb:1:in `x'",
        "b.rb:2:in `y'",
    ]  # type: ignore[union-attr]


# -- actions: each side does it once, on twin jobs -------------------------------------------

TWINS = {"ruby": "7" * 24, "python": "8" * 24}


def queue_items(redis: redis_lib.Redis, queue: str = "default") -> dict[str, dict[str, Any]]:
    return {
        item["jid"]: item
        for item in (json.loads(raw) for raw in redis.lrange(f"queue:{queue}", 0, -1))
    }


def dead_items(redis: redis_lib.Redis) -> dict[str, tuple[dict[str, Any], float]]:
    return {
        json.loads(raw)["jid"]: (json.loads(raw), score)
        for raw, score in redis.zrange("dead", 0, -1, withscores=True)
    }


def without(item: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k not in keys}


def put_twins(client: Client, jobset: api.JobSet, **extra: Any) -> None:
    twin = failed_job("", **extra)
    for jid in TWINS.values():
        jobset.schedule(time.time() + 60, twin | {"jid": jid})


def ruby_act(redis_url: str, set_class: str, action: str) -> None:
    ruby_eval(
        redis_url,
        f'e = Sidekiq::{set_class}.new.find_job(ENV["JID"]); abort("none") unless e; e.{action}',
        env={"JID": TWINS["ruby"]},
    )


@pytest.mark.parametrize(
    ("set_class", "action", "python_action"),
    [
        ("RetrySet", "retry", "retry"),
        ("DeadSet", "retry", "retry"),
        ("ScheduledSet", "add_to_queue", "add_to_queue"),
    ],
)
def test_retry_and_add_to_queue_write_what_ruby_writes(
    client: Client,
    redis: redis_lib.Redis,
    redis_url: str,
    set_class: str,
    action: str,
    python_action: str,
) -> None:
    jobset = {"RetrySet": api.RetrySet, "DeadSet": api.DeadSet, "ScheduledSet": api.ScheduledSet}[
        set_class
    ](client)
    put_twins(client, jobset, retry_count=3)
    ruby_act(redis_url, set_class, action)
    entry = jobset.find_job(TWINS["python"])
    assert entry is not None and getattr(entry, python_action)()
    assert jobset.size() == 0
    items = queue_items(redis)
    ruby, python = items[TWINS["ruby"]], items[TWINS["python"]]
    assert without(python, "jid", "enqueued_at") == without(ruby, "jid", "enqueued_at")
    assert python["retry_count"] == (2 if action == "retry" else 3)
    assert close(python["enqueued_at"], ruby["enqueued_at"], 5.0)
    # Ruby's API finds the job Python moved where its own went.
    seen = ruby_json(
        redis_url,
        'puts JSON.generate(Sidekiq::Queue.new.find_job(ENV["JID"])&.item)',
        JID=TWINS["python"],
    )
    assert seen == python


def test_kill_and_delete_do_what_ruby_does(
    client: Client, redis: redis_lib.Redis, redis_url: str
) -> None:
    retries = api.RetrySet(client)
    put_twins(client, retries)
    ruby_act(redis_url, "RetrySet", "kill")
    assert retries.kill(TWINS["python"])
    dead = dead_items(redis)
    (ruby, ruby_score), (python, python_score) = dead[TWINS["ruby"]], dead[TWINS["python"]]
    assert without(python, "jid") == without(ruby, "jid") and close(python_score, ruby_score, 5.0)
    dead_set = api.DeadSet(client)
    ruby_act(redis_url, "DeadSet", "delete")
    assert dead_set.delete(TWINS["python"])
    assert dead_set.size() == 0 and retries.size() == 0


def test_bulk_actions_and_clears_seen_from_the_other_side(
    client: Client, redis: redis_lib.Redis, redis_url: str
) -> None:
    dead = api.DeadSet(client)
    for n in range(60):
        dead.add(failed_job(f"{n:024x}", queue=("low", "default")[n % 2]))
    assert dead.retry_all() == 60
    ruby = ruby_json(
        redis_url,
        """
        puts JSON.generate(dead: Sidekiq::DeadSet.new.size, low: Sidekiq::Queue.new("low").size,
          counts: Sidekiq::Queue.new("low").map { |j| j.item["retry_count"] }.uniq)
    """,
    )
    assert ruby == {"dead": 0, "low": 30, "counts": [-1]}
    # Ruby kills them all back from a retry set Python fills; Python sees the dead set Ruby left.
    retries = api.RetrySet(client)
    for n in range(7):
        retries.schedule(time.time() + n, failed_job(f"{n:024x}"))
    ruby_eval(redis_url, "Sidekiq::RetrySet.new.kill_all")
    assert retries.size() == 0 and dead.size() == 7
    assert {entry.jid for entry in dead} == {f"{n:024x}" for n in range(7)}
    assert api.Queue(client, "low").clear() == 30
    ruby_eval(redis_url, 'Sidekiq::Queue.new("default").clear')
    assert api.Queue.all(client) == [] and api.Stats(client).enqueued == 0
    assert ruby_eval(redis_url, "puts Sidekiq::Queue.all.map(&:name).inspect") == "[]"


# -- a real sidekiq.rb process ---------------------------------------------------------------

# Beats every second instead of every 5 (launcher.rb reads the constant on each loop), so the
# test waits less for the work hash and for each signal; the formats written are unchanged.
SLEEPY = """
require {jobs}
require "sidekiq/launcher"
Sidekiq::Launcher.send(:remove_const, :BEAT_PAUSE)
Sidekiq::Launcher::BEAT_PAUSE = 1
class Sleepy
  include Sidekiq::Worker
  def perform(seconds)
    sleep(seconds)
  end
end
"""


def test_a_real_sidekiq_process_its_work_and_signals(
    sidekiq_process: Any, client: Client, redis_url: str, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "sleepy.rb"
    jobs_file.write_text(SLEEPY.format(jobs=json.dumps(str(JOBS))))
    proc = sidekiq_process(
        queues=["default", "low"], concurrency=3, require=jobs_file, shutdown_timeout=1
    )
    jid = ruby_push(redis_url, "Sleepy", [30])
    work = wait_for(
        lambda: api.Workers(client).find_work(jid), timeout=15, message="the job in Workers"
    )
    (process,) = api.ProcessSet(client)
    ruby = ruby_json(
        redis_url,
        """
        p = Sidekiq::ProcessSet.new.first
        w = Sidekiq::Workers.new.map { |pid, tid, h|
          # 6.x yields the work Hash; 7.2+ a Sidekiq::Work (its "payload" is a JSON string)
          h.is_a?(Hash) ? [pid, tid, h["queue"], h["run_at"], h["payload"]["jid"]]
                        : [pid, tid, h.queue, h.run_at.to_i, h.job.jid] }
        puts JSON.generate(identity: p.identity, hostname: p["hostname"], pid: p["pid"], tag: p.tag,
          labels: p.labels, queues: p.queues, concurrency: p["concurrency"], busy: p["busy"],
          beat: p["beat"], stopping: p.stopping?, started_at: p["started_at"], work: w)
    """,
    )
    assert process.identity == ruby["identity"] and process.pid == proc.pid == ruby["pid"]
    assert (process.hostname, process.tag, process.labels, process.queues) == (
        ruby["hostname"],
        ruby["tag"],
        ruby["labels"],
        ruby["queues"],
    )
    assert (
        (process.concurrency, process.stopping)
        == (ruby["concurrency"], ruby["stopping"])
        == (3, False)
    )
    assert process.busy == ruby["busy"] == 1
    assert process.started_at is not None and close(
        process.started_at.timestamp(), ruby["started_at"], 1e-3
    )
    assert work.run_at is not None
    assert [
        [work.process_id, work.thread_id, work.queue, int(work.run_at.timestamp()), work.job.jid]
    ] == ruby["work"]

    process.quiet()
    ruby_quiet = "puts Sidekiq::ProcessSet.new.first&.stopping?"
    wait_for(
        lambda: ruby_eval(redis_url, ruby_quiet) == "true",
        timeout=15,
        interval=0.5,
        message="Ruby sees it quiet",
    )
    assert next(iter(api.ProcessSet(client))).stopping
    process.stop()
    wait_for(
        lambda: not proc.running,
        timeout=30,
        interval=0.2,
        message="sidekiq stopped by the TERM signal",
    )
    # Sidekiq pushed its unfinished job back to the queue on the way out.
    assert api.Queue(client).find_job(jid) is not None
