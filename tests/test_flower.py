"""Flower (from PyPI) on ``sidekiq://``: workers, tasks, events and the Broker tab's queue lengths.

A real Flower process (``celery -A bridge_app flower``) watches a real worker; the test reads
Flower's HTTP API and its Broker page. Flower selects its broker reader by URL scheme; the
config file it runs (``--conf``, here one line: ``import celery_sidekiq.flower``) gives it one
for ``sidekiq://``, as the README says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from support.procs import REPO_ROOT, LoggedProcess
from support.recorded import runs
from support.redis_server import free_port
from support.waiting import wait_for
from support.worker import APPS_DIR

import celery_sidekiq
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

pytestmark = pytest.mark.worker


class Flower(LoggedProcess):
    """``celery -A bridge_app flower`` on a free port, with the API open (no auth)."""

    def __init__(self, broker_url: str, result_url: str, tmp_path: Path) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "flower.log"
        self.conf = tmp_path / "flowerconfig.py"
        self.conf.write_text("import celery_sidekiq.flower  # noqa: F401\n")
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(APPS_DIR), str(REPO_ROOT)]),
            "BROKER_URL": broker_url,
            "RESULT_BACKEND": result_url,
            "FLOWER_UNAUTHENTICATED_API": "true",
        }

    def start(self) -> Flower:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "bridge_app", "flower",
                    f"--port={self.port}", "--address=127.0.0.1", f"--conf={self.conf}",
                ],
                cwd=APPS_DIR, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: self.get("/healthcheck"), timeout=30, message="flower serving",
                 ignore=(OSError,))  # fmt: skip
        return self

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as reply:
            body = reply.read().decode()
        return json.loads(body) if reply.headers.get_content_type() == "application/json" else body


@pytest.fixture
def result_url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/1"


@pytest.fixture
def flower(broker_url: str, result_url: str, tmp_path: Path) -> Iterator[Flower]:
    process = Flower(broker_url, result_url, tmp_path)
    yield process.start()
    process.stop()


def _stub(*args: Any) -> None:
    """Runs in the worker, never here."""


@pytest.fixture
def producer(broker_url: str, result_url: str) -> Iterator[Celery]:
    app = Celery("flower_producer", broker=broker_url, backend=result_url)
    celery_sidekiq.setup(app)
    app.conf.task_send_sent_event = True
    # The producer knows the tasks (as an app's own code does), so their jobs fail Celery's way.
    for name in ("bridge.add", "bridge.fail"):
        app.task(name=name, shared=False)(_stub)
    yield app
    app.close()


def test_flower_shows_workers_tasks_events_and_sidekiq_queue_lengths(
    celery_worker: Any,
    flower: Flower,
    producer: Celery,
    redis: redis_lib.Redis,
    result_url: str,
) -> None:
    worker = celery_worker(
        queues="default,reports",
        env={"RESULT_BACKEND": result_url},
        extra_args=["-E", "--prefetch-multiplier=1"],
    )
    name = f"{worker.name}@{os.uname().nodename}"
    # Workers: Flower asks them over remote control (broadcast and replies through the broker).
    workers = wait_for(
        lambda: flower.get("/api/workers?refresh=1").get(name),
        timeout=30,
        message="the worker in /api/workers",
    )
    assert {queue["name"] for queue in workers["active_queues"]} == {"default", "reports"}
    assert "bridge.add" in workers["registered"]

    # Tasks and events: a success and a failure, as Flower's event state saw them.
    ok = producer.tasks["bridge.add"].delay(2, 3)
    failed = producer.tasks["bridge.fail"].delay("for flower")
    assert ok.get(timeout=20) == 5
    with pytest.raises(ValueError, match="for flower"):
        failed.get(timeout=20)

    def task_states() -> dict[str, str] | None:
        tasks = flower.get("/api/tasks")
        states = {tid: tasks[tid]["state"] for tid in (ok.id, failed.id) if tid in tasks}
        return states if states == {ok.id: "SUCCESS", failed.id: "FAILURE"} else None

    wait_for(task_states, timeout=30, message="both tasks in /api/tasks")
    info = flower.get(f"/api/task/info/{failed.id}")
    assert info["name"] == "bridge.fail" and "for flower" in info["exception"]
    assert info["worker"] == name

    # The Broker tab: Sidekiq's queue:<name> lists. The solo worker is busy on one long job,
    # holding no other (prefetch 1), so five more wait in queue:default.
    client = Client(redis)
    client.push(jobs.build("bridge.sleep", [60]))
    runs(redis, "bridge.sleep")
    for n in range(5):
        client.push(jobs.build("bridge.add", [n, n]))
    client.push(jobs.build("bridge.add", [1, 1], queue="reports"))
    assert redis.llen("queue:default") == 5 and redis.llen("queue:reports") == 1
    lengths = flower.get("/api/queues/length")
    assert {q["name"]: q["messages"] for q in lengths["active_queues"]} == {
        "default": 5,
        "reports": 1,
    }
    page = flower.get("/broker")
    assert "sidekiq://" in page and "default" in page and "reports" in page


def test_without_the_config_flowers_broker_tab_says_it_cannot_read_sidekiq(
    celery_worker: Any, broker_url: str, result_url: str, tmp_path: Path
) -> None:
    process = Flower(broker_url, result_url, tmp_path)
    process.conf.write_text("")  # a config file without the import
    process.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            process.get("/api/queues/length")
        assert refused.value.code == 404  # "'redis' broker is not supported"
    finally:
        process.stop()
