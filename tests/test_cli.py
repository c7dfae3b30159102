"""``celery -A bridge_app sidekiq ...`` as a real subprocess: output, ``--json``, exit codes.

What each action does to Redis is compared with Ruby in test_api_ruby.py; here the command line
is checked: that every command is reachable through Celery's entry point, prints what it should,
asks before destroying, and exits non-zero when it could not do what it was asked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis as redis_lib
from support import hostile
from support.procs import TESTS_DIR
from support.redis_server import free_port

from celery_sidekiq import api
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.keys import Keys


def sidekiq(
    broker_url: str, *args: str, input: str | None = None, setup: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BROKER_URL": broker_url}
    if setup is not None:  # bridge_app's celery_sidekiq.setup() options, as JSON
        env["SIDEKIQ_SETUP"] = setup
    env.pop("CELERY_APP", None)
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "bridge_app", "sidekiq", *args],
        cwd=TESTS_DIR / "apps",
        env=env,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(broker_url: str, *args: str, input: str | None = None) -> str:
    done = sidekiq(broker_url, *args, input=input)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def as_json(broker_url: str, *args: str) -> Any:
    return json.loads(ok(broker_url, *args, "--json"))


@pytest.fixture
def client(redis: redis_lib.Redis) -> Client:
    return Client(redis)


def failed(jid: str, n: int = 0, queue: str = "default") -> dict[str, Any]:
    extra = {
        "retry_count": 1,
        "error_class": "ValueError",
        "error_message": f"boom {n}",
        "failed_at": time.time(),
    }
    return jobs.build("Workers::Flaky", [n], queue=queue, jid=jid, extra=extra)


def test_stats_and_queues(client: Client, redis: redis_lib.Redis, broker_url: str) -> None:
    client.push_bulk([jobs.build("A", [n]) for n in range(3)] + [jobs.build("B", [], queue="low")])
    api.RetrySet(client).schedule(time.time() + 60, failed("a" * 24))
    redis.mset({"stat:processed": 4321, "stat:failed": 12})
    text = ok(broker_url, "stats", "--days", "2")
    assert "Processed        4321" in text and "Retries          1" in text
    assert "default  3" in text and "DAY" in text
    data = as_json(broker_url, "stats", "--days", "2")
    expected = api.Stats(client).to_dict()
    assert abs(data.pop("default_queue_latency") - expected.pop("default_queue_latency")) < 5
    assert len(data.pop("history")["processed"]) == 2
    assert data == expected
    queues = as_json(broker_url, "queues")
    assert [(q["name"], q["size"]) for q in queues] == [("default", 3), ("low", 1)]
    assert "QUEUE" in ok(broker_url, "queues")


def test_set_listings(client: Client, broker_url: str) -> None:
    retries = api.RetrySet(client)
    for n in range(3):
        retries.schedule(time.time() + 60 * (n + 1), failed(f"{n:024x}", n))
    api.ScheduledSet(client).schedule(
        time.time() + 30, jobs.build("Later", ["soon"], scheduled=True)
    )
    text = ok(broker_url, "retries", "--limit", "2")
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["NEXT", "RETRY", "JID"]
    assert f"{0:024x}" in lines[1] and "ValueError: boom 0" in lines[1]  # next first
    assert "2 of 3 shown; --limit 0 shows all" in text
    listed = as_json(broker_url, "retries", "--limit", "0")
    assert [e["jid"] for e in listed] == [f"{n:024x}" for n in range(3)]
    assert listed[0]["set"] == "retry" and listed[0]["item"]["error_message"] == "boom 0"
    listing = ok(broker_url, "scheduled")
    assert "Later" in listing and "soon" in listing and "(in 2" in listing  # "(in 29s)" or so
    assert ok(broker_url, "dead") == "No jobs in dead.\n"


# rusty-sidekiq's periodic members, byte for byte as rusty-sidekiq.md §3 shows them.
PERIODIC_DEFAULTS = (
    '{"name":"Scheduled PeriodicJob","class":"MyWorker","cron":"0 * * * * *",'
    '"queue":null,"args":null,"retry":null}'
)
PERIODIC_WITH_ARGS = (
    '{"name":"report","class":"ReportWorker","cron":"0 0 8 * * *","queue":"low",'
    '"args":"[{\\"user_guid\\":\\"USR-123\\"}]","retry":true}'
)


def test_processes_workers_and_periodic(redis: redis_lib.Redis, broker_url: str) -> None:
    identity = "web1:4242:0a1b2c3d4e5f"
    info = {
        "hostname": "web1",
        "pid": 4242,
        "tag": "app",
        "concurrency": 10,
        "queues": ["default"],
        "labels": [],
        "identity": identity,
        "started_at": time.time() - 60,
    }
    redis.sadd("processes", identity)
    redis.hset(
        identity,
        mapping={"info": json.dumps(info), "busy": 1, "beat": time.time(), "quiet": "false"},
    )
    payload = jobs.dumps(jobs.build("Slow", [5]))
    redis.hset(
        f"{identity}:work",
        "abc",
        json.dumps({"queue": "default", "payload": payload, "run_at": int(time.time())}),
    )
    redis.zadd("periodic", {PERIODIC_DEFAULTS: 1800000060.0, PERIODIC_WITH_ARGS: 1800000000.0})
    text = ok(broker_url, "processes")
    assert identity in text and "1/10" in text and "1 processes, 1 of 10 busy" in text
    (process,) = as_json(broker_url, "processes")
    assert (process["identity"], process["busy"], process["stopping"]) == (identity, 1, False)
    (work,) = as_json(broker_url, "workers")
    assert (work["process_id"], work["thread_id"], work["job"]["class"]) == (
        identity,
        "abc",
        "Slow",
    )
    report, every_minute = as_json(broker_url, "periodic")
    assert (report["name"], report["args"], report["queue"], report["retry"]) == (
        "report",
        [{"user_guid": "USR-123"}],
        "low",
        True,
    )
    assert (
        every_minute["class"],
        every_minute["args"],
        every_minute["queue"],
        every_minute["retry"],
    ) == ("MyWorker", None, "default", False)
    assert every_minute["next_at"] == "2027-01-15T08:01:00Z"
    assert "0 * * * * *" in ok(broker_url, "periodic")


def test_retry_kill_and_delete_one_job(
    client: Client, redis: redis_lib.Redis, broker_url: str
) -> None:
    retries = api.RetrySet(client)
    for n, jid in enumerate(("a" * 24, "b" * 24, "c" * 24)):
        retries.schedule(time.time() + 60, failed(jid, n))
    assert (
        "Retried aaaaaaaaaaaaaaaaaaaaaaaa (Workers::Flaky) from retries into queue default."
        in ok(broker_url, "retry", "a" * 24)
    )
    (pushed,) = [json.loads(raw) for raw in redis.lrange("queue:default", 0, -1)]
    assert pushed["retry_count"] == 0  # a manual retry does not use one up
    # Gone now: exit 1, said on stderr, or as JSON on stdout.
    missing = sidekiq(broker_url, "retry", "a" * 24)
    assert (
        missing.returncode == 1
        and "no job aaaaaaaaaaaaaaaaaaaaaaaa in retries, dead, scheduled" in missing.stderr
    )
    missing = sidekiq(broker_url, "retry", "a" * 24, "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["ok"] is False
    killed = as_json(broker_url, "kill", "b" * 24)
    assert killed == {
        "ok": True,
        "action": "kill",
        "jid": "b" * 24,
        "from": "retries",
        "class": "Workers::Flaky",
    }
    assert redis.zcard("dead") == 1 and redis.zcard("retry") == 1
    # delete asks first; "n" keeps the job and fails, "y" deletes it.
    declined = sidekiq(broker_url, "delete", "b" * 24, input="n\n")
    assert (
        declined.returncode == 1
        and "Delete job bbbbbbbbbbbbbbbbbbbbbbbb (Workers::Flaky) from dead?" in declined.stderr
    )
    assert redis.zcard("dead") == 1
    assert "Deleted" in ok(broker_url, "delete", "b" * 24, input="y\n")
    assert redis.zcard("dead") == 0
    assert (
        as_json(broker_url, "delete", "a" * 24, "--from", "queue:default", "--yes")["from"]
        == "queue:default"
    )
    assert redis.llen("queue:default") == 0
    wrong = sidekiq(broker_url, "delete", "c" * 24, "--from", "graveyard", "--yes")
    assert wrong.returncode == 2 and "unknown set 'graveyard'" in wrong.stderr
    assert redis.zcard("retry") == 1


def test_bulk_actions_ask_show_progress_and_report(
    client: Client, redis: redis_lib.Redis, broker_url: str
) -> None:
    dead = api.DeadSet(client)
    for n in range(150):
        dead.add(failed(f"{n:024x}", n, queue=("low", "default")[n % 2]))
    declined = sidekiq(broker_url, "retry-all", "dead", input="n\n")
    assert (
        declined.returncode == 1
        and "Push all 150 jobs of dead back to their queues now?" in declined.stderr
    )
    assert redis.zcard("dead") == 150
    done = sidekiq(broker_url, "retry-all", "dead", input="y\n")
    assert done.returncode == 0 and "Retried 150 jobs from dead; 0 left there." in done.stdout
    assert "Retrying dead" in done.stderr  # click's progress bar (its label, without a terminal)
    assert redis.llen("queue:low") == redis.llen("queue:default") == 75
    unknown = sidekiq(broker_url, "retry-all", "bogus", "--yes")
    assert (
        unknown.returncode == 2
        and "unknown set 'bogus': use one of scheduled, retries, dead" in unknown.stderr
    )
    assert sidekiq(broker_url, "kill-all", "dead", "--yes").returncode == 2
    scheduled = api.ScheduledSet(client)
    for n in range(4):
        scheduled.schedule(time.time() + 600, jobs.build("Later", [n], scheduled=True))
    assert as_json(broker_url, "kill-all", "scheduled", "--yes") == {
        "ok": True,
        "action": "kill-all",
        "set": "scheduled",
        "moved": 4,
        "left": 0,
    }
    assert as_json(broker_url, "clear", "queue:low", "--yes") == {
        "ok": True,
        "action": "clear",
        "set": "queue:low",
        "removed": 75,
    }
    assert "Deleted 4 jobs from dead." in ok(broker_url, "clear", "dead", "--yes")
    assert not redis.exists("queue:low", "dead") and redis.smembers("queues") == {b"default"}


def test_quiet_and_stop_send_the_web_uis_signals(redis: redis_lib.Redis, broker_url: str) -> None:
    for identity in ("web1:100:aaaaaaaaaaaa", "web1:200:bbbbbbbbbbbb"):
        redis.sadd("processes", identity)
        redis.hset(
            identity,
            mapping={"info": json.dumps({"identity": identity, "hostname": "web1"}), "busy": 0},
        )
    assert "Asked web1:100:aaaaaaaaaaaa to quiet" in ok(
        broker_url, "quiet", "web1:100"
    )  # a unique prefix
    assert redis.lrange("web1:100:aaaaaaaaaaaa-signals", 0, -1) == [b"TSTP"]
    ambiguous = sidekiq(broker_url, "quiet", "web1:")
    assert ambiguous.returncode == 1 and "matches 2 processes" in ambiguous.stderr
    assert sidekiq(broker_url, "stop", "web1:200", input="n\n").returncode == 1
    assert not redis.exists("web1:200:bbbbbbbbbbbb-signals")
    stopped = as_json(broker_url, "stop", "--all", "--yes")
    assert stopped == {
        "ok": True,
        "action": "stop",
        "processes": ["web1:100:aaaaaaaaaaaa", "web1:200:bbbbbbbbbbbb"],
    }
    assert redis.lrange("web1:200:bbbbbbbbbbbb-signals", 0, -1) == [b"TERM"]
    unknown = sidekiq(broker_url, "stop", "nobody", "--yes")
    assert unknown.returncode == 1 and "no live process 'nobody'" in unknown.stderr


def test_an_unreachable_or_wrong_broker_says_so(redis_url: str) -> None:
    down = sidekiq(f"sidekiq://127.0.0.1:{free_port()}/0", "stats")
    assert down.returncode == 69 and "cannot reach Redis" in down.stderr
    wrong = sidekiq(redis_url, "stats")  # redis:// is kombu's own transport, not Sidekiq's
    assert wrong.returncode == 2 and "sidekiq:// or sidekiqs://" in wrong.stderr


def test_the_apps_namespace_is_used(redis: redis_lib.Redis, broker_url: str) -> None:
    Client(redis, Keys("yolo_app")).push(jobs.build("A", [], queue="ns_only"))
    Client(redis).push(jobs.build("B", [], queue="bare"))
    done = sidekiq(broker_url, "queues", "--json", setup='{"namespace": "yolo_app"}')
    assert done.returncode == 0, done.stderr
    assert [queue["name"] for queue in json.loads(done.stdout)] == ["ns_only"]
    redis.set("yolo_app:retry", "not a sorted set")
    refused = sidekiq(broker_url, "retries", setup='{"namespace": "yolo_app"}')
    assert refused.returncode == 1 and "Redis refused: ResponseError: WRONGTYPE" in refused.stderr


def test_hostile_members_are_listed_with_their_reason_and_never_stop_a_command(
    redis: redis_lib.Redis, broker_url: str
) -> None:
    names = (
        "lone_surrogate",
        "surrogate_in_key",
        "nested_100000",
        "not_utf8",
        "nan",
        "args_string",
        "retry_count_x",
        "created_at_10_300",
    )
    members = [hostile.EXAMPLES[name] for name in names]
    now = time.time()
    for n, raw in enumerate(members):
        redis.zadd("retry", {raw: now + 60 + n})
        redis.zadd("schedule", {raw: now + 60 + n})
        redis.zadd("dead", {raw: now - n})
        redis.lpush("queue:default", raw)
    redis.sadd("queues", "default")
    redis.zadd(
        "periodic",
        {
            b'{"name":"\\ud800","class":"A","cron":"* * * * *"}': 1800000000.0,
            b"[" * 5_000 + b"]" * 5_000: 1800000001.0,
            PERIODIC_DEFAULTS.encode(): 1800000060.0,
        },
    )
    refused = [raw for raw in members if _refused(raw)]
    for command in ("retries", "scheduled", "dead"):
        text = ok(broker_url, command, "--limit", "0")
        assert "(invalid: a string holds a lone UTF-16 surrogate" in text
        listed = as_json(broker_url, command, "--limit", "0")
        assert len(listed) == len(members)
        assert [e["reason"] is not None for e in listed].count(True) == len(refused)
        assert all(e["invalid"] == (e["reason"] is not None) for e in listed)
    assert [q["size"] for q in as_json(broker_url, "queues")] == [len(members)]
    assert as_json(broker_url, "stats")["retry_size"] == len(members)
    periodic = as_json(broker_url, "periodic")
    assert [e["invalid"] for e in periodic] == [True, True, False]
    assert "(unreadable)" in ok(broker_url, "periodic")
    done = as_json(broker_url, "retry-all", "retries", "--yes")
    assert (done["moved"], done["left"]) == (len(members) - len(refused), len(refused))
    # What is left are the members that are no job: a single retry says so and keeps them.
    kept = sidekiq(broker_url, "retry", "ab" * 12, "--from", "retries")
    assert kept.returncode == 1 and "is not a valid job" in kept.stderr
    assert redis.zcard("retry") == len(refused)
    assert f"Killed {len(refused)} jobs from retries; 0 left there." in ok(
        broker_url, "kill-all", "retries", "--yes"
    )


def _refused(raw: bytes) -> bool:
    try:
        jobs.parse(raw)
    except jobs.InvalidJob:
        return True
    return False
