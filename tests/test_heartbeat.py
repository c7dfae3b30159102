"""celery_sidekiq.heartbeat: Celery workers as Sidekiq processes (Busy page, stats, signals).

Unit tests drive ``Heartbeat`` against the test Redis; worker tests run real ``celery worker``
processes (beat every 0.2 s) and read what they wrote with redis-py and with Ruby's
``Sidekiq::ProcessSet`` / ``Sidekiq::Workers`` / ``Sidekiq::Stats`` (Debian's 6.4.1).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
import redis as redis_lib
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.recorded import inflight
from support.redis_server import RedisServerFactory
from support.ruby import ruby_eval
from support.waiting import wait_for
from support.worker import CeleryWorker, CeleryWorkerFactory

from celery_sidekiq.heartbeat import (
    STATS_TTL,
    VERSION_LABEL,
    Heartbeat,
    Snapshot,
    Tally,
    WorkerProcess,
    count_executions,
    new_identity,
    work_keys,
)
from kombu_sidekiq.client import Client
from kombu_sidekiq.keys import Keys
from kombu_sidekiq.order import QueueOrder

BEAT = 0.2  # seconds between beats in worker tests


def setup_env(version: int = 7, **options: Any) -> dict[str, str]:
    """Environment for bridge_app: setup() options with a fast heartbeat."""
    options = {"sidekiq_version": version, "beat_interval": BEAT, "poll_interval": 0.5, **options}
    return {"SIDEKIQ_SETUP": json.dumps(options)}


def push_job(
    redis: redis_lib.Redis,
    klass: str,
    args: list[Any],
    queue: str = "default",
    ns: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """LPUSH + SADD a Sidekiq job, as sidekiq.rb's client writes it."""
    now = time.time()
    job = {
        "class": klass, "args": args, "queue": queue, "jid": os.urandom(12).hex(),
        "retry": False, "created_at": now, "enqueued_at": now, **extra,
    }  # fmt: skip
    keys = Keys(ns)
    redis.sadd(keys.queues, queue)
    redis.lpush(keys.queue(queue), json.dumps(job))
    return job


def identity_of(redis: redis_lib.Redis, worker: CeleryWorker, ns: str = "") -> str:
    """Wait for the worker's identity in ``processes`` and return it."""

    def find() -> str:
        members = {m.decode() for m in redis.smembers(Keys(ns).processes)}  # type: ignore[union-attr]
        mine = [m for m in members if m.split(":")[1] == str(worker.pid)]
        return mine[0] if mine else ""

    return wait_for(find, timeout=10, message=f"worker pid {worker.pid} in processes")


def process_hash(redis: redis_lib.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}  # type: ignore[union-attr]


def beat_of(redis: redis_lib.Redis, key: str) -> float:
    return float(redis.hget(key, "beat") or 0)


def wait_next_beat(redis: redis_lib.Redis, key: str) -> None:
    """Wait until the process beats again (so the state it reports is newer than now)."""
    before = beat_of(redis, key)
    wait_for(lambda: beat_of(redis, key) > before, timeout=5, message=f"{key} beats")


def ruby_json(redis_url: str, script: str) -> Any:
    return json.loads(ruby_eval(redis_url, script))


def results(redis: redis_lib.Redis, task: str) -> int:
    return int(redis.llen(f"results:{task}"))


# --- unit: Heartbeat against Redis ---------------------------------------------------------


def snapshot(work: dict[str, str] | None = None, quiet: bool = False) -> Snapshot:
    info = {"hostname": "h", "pid": 1, "queues": ["default"], "concurrency": 3}
    return Snapshot(info=info, concurrency=3, quiet=quiet, rss_kb=1234, work=work or {})


def make_heartbeat(
    redis: redis_lib.Redis, version: int = 7, ns: str = "", **kw: Any
) -> tuple[Heartbeat, list[str]]:
    client = Client(redis, Keys(ns), version)
    obeyed: list[str] = []
    heartbeat = Heartbeat(
        lambda: client,
        new_identity(),
        version,
        snapshot=lambda: snapshot(),
        on_signal=obeyed.append,
        **kw,
    )
    return heartbeat, obeyed


def test_identity_is_host_pid_nonce() -> None:
    identity = new_identity()
    assert re.fullmatch(
        rf"{re.escape(socket.gethostname())}:{os.getpid()}:[0-9a-f]{{12}}", identity
    )
    assert new_identity() != identity
    assert new_identity("web.1", 42).startswith("web.1:42:")


def test_work_key_names_follow_version() -> None:
    assert work_keys("h:1:ab", 6) == ("h:1:ab:work", "h:1:ab:workers")
    assert work_keys("h:1:ab", 7) == ("h:1:ab:work",)
    assert work_keys("h:1:ab", 8) == ("h:1:ab:work",)


@pytest.mark.parametrize("ns", ["", "ns"])
def test_beat_writes_process_work_and_stats(redis: redis_lib.Redis, ns: str) -> None:
    heartbeat, _ = make_heartbeat(redis, version=6, ns=ns)
    keys, identity = Keys(ns), heartbeat.identity
    for failed in (False, False, True):
        heartbeat.tally.count(failed=failed)
    work = {"1a": json.dumps({"queue": "default", "payload": "{}", "run_at": 1})}

    assert heartbeat.beat(snapshot(work)) is None

    assert redis.smembers(keys.processes) == {identity.encode()}  # the member is never prefixed
    fields = process_hash(redis, keys.key(identity))
    assert json.loads(fields.pop("info"))["queues"] == ["default"]
    assert abs(float(fields.pop("beat")) - time.time()) < 5
    assert int(fields.pop("rtt_us")) >= 0
    assert fields == {"busy": "1", "quiet": "false", "rss": "1234", "concurrency": "3"}
    assert 0 < redis.ttl(keys.key(identity)) <= 60
    for name in work_keys(identity, 6):
        assert redis.hgetall(keys.key(name)) == {b"1a": work["1a"].encode()}
        assert 0 < redis.ttl(keys.key(name)) <= 60
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert redis.get(keys.key("stat:processed")) == b"3"
    assert redis.get(keys.key("stat:failed")) == b"1"
    assert redis.get(keys.key(f"stat:processed:{today}")) == b"3"
    assert redis.get(keys.key(f"stat:failed:{today}")) == b"1"
    assert STATS_TTL - 60 < redis.ttl(keys.key(f"stat:failed:{today}")) <= STATS_TTL

    # The next beat rewrites the work list (the job ended) and adds nothing to the counters.
    heartbeat.beat(snapshot({}, quiet=True))
    assert all(not redis.exists(keys.key(name)) for name in work_keys(identity, 6))
    assert process_hash(redis, keys.key(identity))["quiet"] == "true"
    assert redis.get(keys.key("stat:processed")) == b"3"


def test_beat_pops_one_signal_per_beat(redis: redis_lib.Redis) -> None:
    heartbeat, obeyed = make_heartbeat(redis)
    redis.lpush(f"{heartbeat.identity}-signals", "TSTP", "TTIN")  # as Process#signal does
    heartbeat.tick()
    heartbeat.tick()
    heartbeat.tick()
    assert obeyed == ["TSTP", "TTIN"]


def test_failed_beat_keeps_counts_and_never_raises(
    redis: redis_lib.Redis, redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory()
    down = server.client(socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    heartbeat, _ = make_heartbeat(down)
    heartbeat.tally.count(failed=True)
    server.stop()

    heartbeat.tick()  # logs, does not raise
    assert heartbeat.tally.take() == (1, 1)
    heartbeat.tally.give_back(1, 1)

    server.start()
    wait_for(down.ping, timeout=5, ignore=(redis_lib.ConnectionError,))
    heartbeat.tick()
    assert down.get("stat:processed") == b"1"
    assert down.get("stat:failed") == b"1"
    assert down.sismember("processes", heartbeat.identity)


def test_clear_flushes_counts_and_deregisters(redis: redis_lib.Redis) -> None:
    heartbeat, _ = make_heartbeat(redis, version=6)
    work = {"1a": json.dumps({"queue": "default", "payload": "{}", "run_at": 1})}
    heartbeat.beat(snapshot(work))
    redis.lpush(f"{heartbeat.identity}-signals", "TSTP")
    heartbeat.tally.count(failed=False)

    heartbeat.clear()

    assert redis.get("stat:processed") == b"1"
    assert redis.get("stat:failed") == b"0"
    left = {key.decode() for key in redis.scan_iter()}
    assert left and all(key.startswith("stat:") for key in left), left


def test_setup_options() -> None:
    from celery import Celery

    import celery_sidekiq
    from celery_sidekiq.heartbeat import HeartbeatStep

    app = celery_sidekiq.setup(Celery("t", broker="sidekiq://localhost/0"), beat_interval=1.5)
    assert HeartbeatStep in app.steps["worker"]
    assert celery_sidekiq.config_of(app).beat_interval == 1.5
    off = celery_sidekiq.setup(Celery("t", broker="sidekiq://localhost/0"), heartbeat=False)
    assert HeartbeatStep not in off.steps["worker"]
    with pytest.raises(ValueError, match="beat_interval"):
        celery_sidekiq.setup(Celery("t", broker="sidekiq://localhost/0"), beat_interval=0)


class FakeWorker:
    """What WorkerProcess reads of a celery WorkController."""

    def __init__(self, queues: list[str]) -> None:
        self.hostname = "worker1@vm"
        self.concurrency = 4
        self.max_concurrency = None
        self.pool = None
        self.app = SimpleNamespace(
            amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={q: None for q in queues}))
        )


@pytest.mark.parametrize(
    ("order", "weights", "mode"),
    [
        (QueueOrder(), {"critical": 0, "default": 0, "low": 0}, "strict"),
        (
            QueueOrder.from_sidekiq(["critical,3", "default,2", "low,1"]),
            {"critical": 3, "default": 2, "low": 1},
            "weighted",
        ),
        (QueueOrder("random"), {"critical": 1, "default": 1, "low": 1}, "random"),
    ],
)
@pytest.mark.parametrize("version", [6, 7, 8])
def test_info_reports_the_queue_order_the_worker_follows(
    order: QueueOrder, weights: dict[str, int], mode: str, version: int
) -> None:
    """6.x reads no weights (its Busy page lists ``queues``); 7.0.3+ reads ``weights``, one
    map per capsule, 0 meaning strict; 8.0.9+ reads ``capsules`` with Sidekiq's mode."""
    process = WorkerProcess(FakeWorker(["critical", "default", "low"]), "vm:1:abc", version, order)
    info = process.info()
    assert info["queues"] == ["critical", "default", "low"]
    if version == 6:
        assert "weights" not in info and "capsules" not in info
    else:
        assert info["weights"] == [weights]
        assert list(info["weights"][0]) == ["critical", "default", "low"]  # the UI's order
    if version == 8:
        assert info["capsules"] == {"default": {"concurrency": 4, "mode": mode, "weights": weights}}


def test_info_lists_a_strict_order_as_configured_not_as_consumed() -> None:
    """``setup(queues=["critical", "low"])`` ranks them; ``-Q`` may list them otherwise."""
    order = QueueOrder.from_sidekiq(["critical", "low"])
    process = WorkerProcess(FakeWorker(["low", "extra", "critical"]), "vm:1:abc", 7, order)
    info = process.info()
    assert info["queues"] == ["critical", "low", "extra"]
    assert info["weights"] == [{"critical": 0, "low": 0, "extra": 0}]


class FakeRequest:
    """What count_executions needs of a celery.worker.request.Request."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_success(self, result: Any, **kwargs: Any) -> None:
        self.calls.append("success")
        if result[0]:  # as Celery's Request does: a failed result goes on to on_failure
            self.on_failure(result[1], return_ok=True)

    def on_failure(self, exc_info: Any, **kwargs: Any) -> None:
        self.calls.append("failure")


class ExcInfo:
    def __init__(self, exc: BaseException) -> None:
        self.exception = exc


def test_count_executions_counts_each_run_once() -> None:
    from celery.exceptions import Ignore, Retry

    tally = Tally()
    outcomes = [
        (False, None),  # success
        (True, ExcInfo(ValueError("x"))),  # task raised
        (True, ExcInfo(Retry())),  # self.retry(): the job raised and runs again
        (True, ExcInfo(Ignore())),  # not a failure
    ]
    for failed, payload in outcomes:
        request = FakeRequest()
        count_executions(request, tally)
        request.on_success((failed, payload, 0.1))
        assert request.calls == (["success", "failure"] if failed else ["success"])
        assert "on_success" not in vars(request)  # the wrappers removed themselves
    lost = FakeRequest()
    count_executions(lost, tally)
    lost.on_failure(ExcInfo(RuntimeError("worker lost")))
    assert tally.take() == (5, 3)


# --- real celery workers -------------------------------------------------------------------


@pytest.mark.worker
@pytest.mark.parametrize(
    ("pool", "concurrency", "version"), [("solo", 1, 6), ("prefork", 2, 7), ("threads", 3, 8)]
)
def test_worker_registers_and_deregisters(
    celery_worker: CeleryWorkerFactory,
    redis: redis_lib.Redis,
    pool: str,
    concurrency: int,
    version: int,
) -> None:
    worker = celery_worker(
        pool=pool, concurrency=concurrency, queues="default,low", env=setup_env(version)
    )
    identity = identity_of(redis, worker)
    assert re.fullmatch(rf"{re.escape(socket.gethostname())}:{worker.pid}:[0-9a-f]{{12}}", identity)
    wait_next_beat(redis, identity)  # it keeps beating

    fields = process_hash(redis, identity)
    info = json.loads(fields["info"])
    assert info["hostname"] == socket.gethostname()
    assert info["pid"] == worker.pid
    assert info["identity"] == identity
    assert info["concurrency"] == concurrency
    assert info["queues"] == ["default", "low"]
    assert info["tag"].startswith("worker1@")
    assert info["labels"] == ["celery"]
    assert abs(info["started_at"] - time.time()) < 60
    if version == 6:
        assert not {"weights", "version", "embedded", "capsules"} & set(info)
    else:
        assert info["weights"] == [{"default": 0, "low": 0}]
        assert (info["version"], info["embedded"]) == (VERSION_LABEL, False)
        assert ("capsules" in info) == (version == 8)
    assert fields["busy"] == "0"
    assert fields["quiet"] == "false"
    assert fields["concurrency"] == str(concurrency)
    assert int(fields["rss"]) > 10_000  # KB: a Python process with Celery loaded
    assert int(fields["rtt_us"]) >= 0
    assert abs(float(fields["beat"]) - time.time()) < 5
    assert 0 < redis.ttl(identity) <= 60

    assert worker.stop(signal.SIGTERM) == 0
    assert not redis.sismember("processes", identity)
    assert not redis.exists(identity, f"{identity}:work", f"{identity}:workers")


class SidekiqQueuesWorker(CeleryWorker):
    """A worker named its queues with Sidekiq's ``-q name,weight`` instead of ``-Q``."""

    @property
    def argv(self) -> list[str]:
        argv = super().argv
        at = argv.index("-Q")
        return argv[:at] + argv[at + 2 :]


@pytest.mark.worker
@pytest.mark.parametrize("version", [7, 8])
def test_a_worker_started_with_sidekiqs_q_reports_its_weights(
    broker_url: str, redis: redis_lib.Redis, tmp_path: Any, version: int
) -> None:
    worker = SidekiqQueuesWorker(
        broker_url,
        tmp_path / "celery.log",
        env=setup_env(version),
        extra_args=["-q", "critical,3", "-q", "default,2", "-q", "low,1"],
    )
    worker.start()
    try:
        info = json.loads(process_hash(redis, identity_of(redis, worker))["info"])
    finally:
        worker.stop()
    weights = {"critical": 3, "default": 2, "low": 1}
    assert info["queues"] == list(weights)
    assert info["weights"] == [weights]
    if version == 8:
        assert info["capsules"]["default"]["mode"] == "weighted"
        assert info["capsules"]["default"]["weights"] == weights


@pytest.mark.worker
@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("prefork", 2), ("threads", 2)])
def test_stats_count_every_execution(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis, pool: str, concurrency: int
) -> None:
    worker = celery_worker(pool=pool, concurrency=concurrency, env=setup_env())
    identity = identity_of(redis, worker)
    for n in range(3):
        push_job(redis, "bridge.add", [n, 1])
    for _ in range(2):
        push_job(redis, "bridge.fail", ["expected failure"])

    wait_for(
        lambda: results(redis, "bridge.add") == 3 and results(redis, "bridge.fail") == 2, timeout=20
    )
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    expected = {
        "stat:processed": b"5", "stat:failed": b"2",
        f"stat:processed:{today}": b"5", f"stat:failed:{today}": b"2",
    }  # fmt: skip
    wait_for(
        lambda: {key: redis.get(key) for key in expected} == expected,
        timeout=10,
        message="stat counters after 5 runs, 2 failed",
    )
    assert redis.ttl(f"stat:processed:{today}") > 4 * 365 * 24 * 3600
    assert worker.stop() == 0
    assert {key: redis.get(key) for key in expected} == expected  # no double flush at exit
    assert not redis.sismember("processes", identity)


@pytest.mark.worker
def test_warm_shutdown_shows_running_job_then_counts_it(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis
) -> None:
    worker = celery_worker(pool="prefork", concurrency=1, env=setup_env())
    identity = identity_of(redis, worker)
    push_job(redis, "bridge.sleep", [2])
    wait_for(lambda: process_hash(redis, identity).get("busy") == "1", timeout=10)

    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)  # warm: the pool waits for the job
    # Like Sidekiq, the process stays listed, quiet and busy, until its last job is done...
    wait_for(lambda: process_hash(redis, identity).get("quiet") == "true", timeout=5)
    assert process_hash(redis, identity)["busy"] == "1"
    assert worker.proc.wait(20) == 0

    # ...then flushes the count and deregisters.
    assert redis.get("stat:processed") == b"1"
    assert not redis.sismember("processes", identity)
    assert not redis.exists(identity, f"{identity}:work")


@pytest.mark.worker
def test_namespace_prefixes_keys_not_identity(
    celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis
) -> None:
    worker = celery_worker(env=setup_env(namespace="ns"))
    identity = identity_of(redis, worker, ns="ns")
    assert redis.exists(f"ns:{identity}")
    assert not redis.exists("processes", identity)
    push_job(redis, "bridge.add", [1, 2], ns="ns")
    wait_for(lambda: redis.get("ns:stat:processed") == b"1", timeout=15)
    assert not redis.exists("stat:processed")
    assert worker.stop() == 0
    assert not redis.exists(f"ns:{identity}") and not redis.sismember("ns:processes", identity)


@pytest.mark.worker
def test_worker_survives_redis_restart(
    celery_worker: CeleryWorkerFactory, redis_server_factory: RedisServerFactory
) -> None:
    server = redis_server_factory()
    conn = server.client()
    worker = celery_worker(broker_url=f"sidekiq://127.0.0.1:{server.port}/0", env=setup_env())
    identity = identity_of(conn, worker)

    server.restart()  # no persistence: the process entry is gone
    wait_for(
        lambda: conn.sismember("processes", identity) and conn.exists(identity),
        timeout=20,
        ignore=(redis_lib.ConnectionError,),
        message="worker registered again after the outage",
    )
    assert worker.running
    assert worker.stop() == 0


# --- what Ruby's Sidekiq API sees (Debian's sidekiq 6.4.1) -----------------------------------

PROCESS_SET = """
puts JSON.generate(Sidekiq::ProcessSet.new.map { |p|
  {identity: p.identity, hostname: p["hostname"], pid: p["pid"], queues: p.queues,
   concurrency: p["concurrency"], busy: p["busy"], quiet: p["quiet"], stopping: p.stopping?,
   tag: p.tag, labels: p.labels, beat: p["beat"], rss: p["rss"]}
})
"""

WORK_SET = """
puts JSON.generate(Sidekiq::Workers.new.map { |process, tid, work|
  # 6.x yields the work Hash, payload parsed; 7.2+ a Sidekiq::Work, whose #job parses it
  hash = work.is_a?(Hash) ? work : {"queue" => work.queue, "run_at" => work.run_at.to_i,
    "payload" => {"jid" => work.job.jid, "class" => work.job.klass, "args" => work.job.args}}
  {process: process, tid: tid, queue: hash["queue"], run_at: hash["run_at"],
   jid: hash["payload"]["jid"], class: hash["payload"]["class"], args: hash["payload"]["args"]}
})
"""


def signal_process(redis_url: str, identity: str, method: str) -> None:
    """``Sidekiq::Process#quiet!``/``#stop!``/``#dump_threads``, as the Web UI's buttons do."""
    ruby_eval(
        redis_url,
        f'Sidekiq::Process.new("identity" => ENV.fetch("ID")).{method}',
        env={"ID": identity},
    )


@pytest.mark.interop
@pytest.mark.worker
@pytest.mark.parametrize(("pool", "concurrency"), [("solo", 1), ("prefork", 2)])
def test_ruby_sees_process_and_running_job(
    sidekiq_rb: str,
    require_ruby: None,
    celery_worker: CeleryWorkerFactory,
    redis: redis_lib.Redis,
    redis_url: str,
    pool: str,
    concurrency: int,
) -> None:
    worker = celery_worker(
        pool=pool,
        concurrency=concurrency,
        queues="default,low",
        env=setup_env(int(sidekiq_rb)),  # the version the Ruby side runs, as users set it
    )
    identity = identity_of(redis, worker)

    [process] = ruby_json(redis_url, PROCESS_SET)
    assert process["identity"] == identity
    assert (process["hostname"], process["pid"]) == (socket.gethostname(), worker.pid)
    assert process["queues"] == ["default", "low"]
    assert process["concurrency"] == concurrency
    assert (process["busy"], process["quiet"], process["stopping"]) == (0, "false", False)
    assert process["rss"] > 0 and abs(process["beat"] - time.time()) < 5

    job = push_job(redis, "bridge.sleep", [4], queue="low")
    # Sidekiq::Workers (6.4.1 reads <identity>:workers, 7 <identity>:work) shows the job.
    [work] = wait_for(lambda: ruby_json(redis_url, WORK_SET), timeout=10, message="job in Workers")
    assert (work["process"], work["queue"]) == (identity, "low")
    assert (work["jid"], work["class"], work["args"]) == (job["jid"], "bridge.sleep", [4])
    assert abs(work["run_at"] - time.time()) < 10
    assert ruby_eval(redis_url, "puts Sidekiq::Workers.new.size") == "1"
    assert redis.exists(f"{identity}:work")  # 6.4.2+ name, written for sidekiq_version=6 too

    wait_for(lambda: results(redis, "bridge.sleep") == 1, timeout=10)
    wait_for(
        lambda: ruby_json(redis_url, WORK_SET) == [], timeout=15, message="Workers empty again"
    )
    wait_for(lambda: ruby_eval(redis_url, "puts Sidekiq::Stats.new.processed") == "1", timeout=10)
    assert worker.stop() == 0
    assert ruby_json(redis_url, PROCESS_SET) == []


@pytest.mark.interop
@pytest.mark.worker
def test_ruby_quiet_stop_and_dump(
    sidekiq_rb: str,
    require_ruby: None,
    celery_worker: CeleryWorkerFactory,
    redis: redis_lib.Redis,
    redis_url: str,
) -> None:
    worker = celery_worker(pool="prefork", concurrency=2, env=setup_env(int(sidekiq_rb)))
    identity = identity_of(redis, worker)

    signal_process(redis_url, identity, "dump_threads")  # TTIN
    wait_for(lambda: "sidekiq-heartbeat" in worker.log_text(), timeout=10, message="thread dump")

    signal_process(redis_url, identity, "quiet!")  # TSTP
    wait_for(lambda: process_hash(redis, identity).get("quiet") == "true", timeout=10)
    wait_for(lambda: "Canceling queue default" in worker.log_text(), timeout=10)
    [process] = ruby_json(redis_url, PROCESS_SET)
    assert process["stopping"] is True
    assert process["queues"] == ["default"]  # still shows what it served

    push_job(redis, "bridge.add", [1, 2])
    deadline = time.monotonic() + 2.0  # a job not taken: observe a window of beats
    while time.monotonic() < deadline:
        assert results(redis, "bridge.add") == 0
        time.sleep(0.1)
    # Not run: still in the queue, or held by a fetch sent just before the quiet (it goes back
    # to the queue at the stop below).
    wait_for(lambda: redis.llen("queue:default") + inflight(redis) == 1, timeout=5)
    wait_next_beat(redis, identity)  # quiet, not dead
    assert worker.running

    signal_process(redis_url, identity, "stop!")  # TERM
    assert worker.proc is not None
    assert worker.proc.wait(20) == 0  # warm shutdown, exit code 0
    assert not redis.sismember("processes", identity)
    assert not redis.exists(identity)
    assert ruby_json(redis_url, PROCESS_SET) == []
    assert redis.llen("queue:default") == 1  # the job waits for another worker


@pytest.mark.interop
@pytest.mark.worker
def test_ruby_stop_solo_worker(
    require_ruby: None, celery_worker: CeleryWorkerFactory, redis: redis_lib.Redis, redis_url: str
) -> None:
    worker = celery_worker(pool="solo", env=setup_env(7))
    identity = identity_of(redis, worker)
    signal_process(redis_url, identity, "stop!")
    assert worker.proc is not None
    assert worker.proc.wait(20) == 0
    assert redis.scard("processes") == 0
    assert not redis.exists(identity)
