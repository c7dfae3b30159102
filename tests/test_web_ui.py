"""Sidekiq's own Web UI shows Celery workers and Python failures (issue 3, point 10).

The real UI (sidekiq.rb 6.4.1 and 7.3.2: tests/ruby/web.ru served by ``rackup`` and WEBrick)
runs on the test's Redis beside a real Celery worker and a real sidekiq.rb process; headless
Chromium (Debian's ``chromium``) loads the Busy and Retries pages, and the test reads the DOM it
rendered: what a person looking at the UI would see.

The test always takes screenshots, into its tmp dir; with ``UPDATE_SCREENSHOTS=1`` it writes
those of 6.4.1 to docs/images/ instead (``web-ui-busy.png``, ``web-ui-retries.png``: the
README's):

    UPDATE_SCREENSHOTS=1 python -m pytest -p no:cacheprovider tests/test_web_ui.py
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from support.browser import Chromium, chromium_path, png_size
from support.env import missing_or_fail
from support.procs import REPO_ROOT
from support.ruby import SidekiqProcessFactory
from support.waiting import wait_for
from support.web_ui import Row, SidekiqWeb, tables, web_ui_available
from support.worker import CeleryWorkerFactory

from celery_sidekiq.heartbeat import VERSION_LABEL
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client

#: setup() options of the Celery worker: a fast beat, so the page is current within half a
#: second (and ``sidekiq_version``, the Ruby side's: 6.4.1 reads ``<identity>:workers`` for the
#: Busy page's jobs, 7 ``<identity>:work``).
SETUP = {"beat_interval": 0.5, "poll_interval": 0.5}

#: Viewport sizes (width, height) that fit each page's content and no more.
BUSY_SCREEN = (1400, 860)
RETRIES_SCREEN = (1400, 540)
DOCS_IMAGES = REPO_ROOT / "docs" / "images"


@pytest.fixture
def screenshots(sidekiq_rb: str, tmp_path: Path) -> Path:
    """Where screenshots go: docs/images/ with UPDATE_SCREENSHOTS=1 (6.4.1's: the README's),
    else the tmp dir (so a test run never dirties the work tree)."""
    if sidekiq_rb == "6" and os.environ.get("UPDATE_SCREENSHOTS", "") not in ("", "0"):
        return DOCS_IMAGES
    return tmp_path / "screenshots"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    if chromium_path() is None:
        missing_or_fail("chromium (Debian package chromium)")
    chromium = Chromium(tmp_path / "chromium")
    yield chromium
    # Teardown output is shown only when the test failed.
    print(f"--- chromium log tail ({chromium.log_path}) ---\n{chromium.log_tail()}")


@pytest.fixture
def sidekiq_web(
    sidekiq_rb: str, require_ruby: None, redis_url: str, tmp_path: Path
) -> Iterator[SidekiqWeb]:
    """The Web UI on a free port, reading the test's (flushed) Redis."""
    if not web_ui_available(sidekiq_rb):
        missing_or_fail("rackup and WEBrick (Debian packages ruby-rack, ruby-webrick)")
    web = SidekiqWeb(redis_url, tmp_path / "web.log").start()
    yield web
    web.stop()
    print(f"--- rackup log tail ({web.log_path}) ---\n{web.log_tail()}")


def identity_of(redis: redis_lib.Redis, pid: int | None) -> str:
    """The ``processes`` member (``host:pid:nonce``) of the process with ``pid``."""

    def find() -> str:
        members = {m.decode() for m in redis.smembers("processes")}  # type: ignore[union-attr]
        return next((m for m in members if m.split(":")[1] == str(pid)), "")

    return wait_for(find, timeout=10, message=f"pid {pid} in processes")


def retry_entry(redis: redis_lib.Redis, jid: str) -> dict[str, Any] | None:
    members: list[bytes] = redis.zrange("retry", 0, -1)  # type: ignore[assignment]
    for member in members:
        entry: dict[str, Any] = json.loads(member)
        if entry["jid"] == jid:
            return entry
    return None


def by_jid(rows: list[Row]) -> dict[str, Row]:
    """Retries rows by jid: each row's checkbox value is ``"<score>-<jid>"``."""
    return {row.inputs["key[]"].split("-", 1)[1]: row for row in rows}


# Sidekiq's markup (busy.erb) as Chromium serializes it: the parser sees the same tree.
BUSY_SNIPPET = """
<table class="processes table table-hover"><thead><tr><th>Name</th><th>Busy</th></tr></thead>
<tbody><tr><td class="box">
  vm:42 <span class="label">worker1@vm</span><br><b>Queues: </b>
  default, low</td><td>1</td>
  <td><form method="POST"><input type="hidden" name="identity" value="vm:42:abc"></form></td>
</tr></tbody></table>
<table class="workers table"><tbody><tr><td>vm:42:abc</td><td>&quot;a&quot; &amp; b</td></tr>
</tbody></table>
"""


def test_tables_reads_cells_and_inputs_of_body_rows() -> None:
    page = tables(BUSY_SNIPPET)
    [process] = page["processes"]  # the header row (only <th>) is left out
    assert process.cells == ["vm:42 worker1@vm Queues: default, low", "1", ""]
    assert process.inputs == {"identity": "vm:42:abc"}
    assert [row.cells for row in page["workers"]] == [["vm:42:abc", '"a" & b']]


def test_png_size_reads_the_header(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    png.write_bytes(bytes.fromhex("89504e470d0a1a0a0000000d49484452") + (1400).to_bytes(4, "big")
                    + (540).to_bytes(4, "big") + b"\x08\x02\x00\x00\x00")  # fmt: skip
    assert png_size(png) == (1400, 540)
    png.write_bytes(b"GIF89a" + bytes(40))
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(png)


@pytest.mark.interop
@pytest.mark.worker
def test_busy_and_retries_pages_show_the_celery_worker_and_python_failures(
    browser: Chromium,  # first: a missing chromium fails before any server starts
    sidekiq_rb: str,
    celery_worker: CeleryWorkerFactory,
    sidekiq_process: SidekiqProcessFactory,
    sidekiq_web: SidekiqWeb,
    screenshots: Path,
    redis: redis_lib.Redis,
) -> None:
    host = socket.gethostname()
    ruby = sidekiq_process(queues="ruby", concurrency=2)
    worker = celery_worker(
        pool="threads",
        concurrency=3,
        queues="default,low",
        env={"SIDEKIQ_SETUP": json.dumps({**SETUP, "sidekiq_version": int(sidekiq_rb)})},
    )
    identity = identity_of(redis, worker.pid)
    ruby_identity = identity_of(redis, ruby.pid)
    client = Client(redis)

    # --- Retries: two Python failures beside a Ruby one -------------------------------------
    py_fail = jobs.build("bridge.fail", ["invoice 1042 has no lines"], version=6)
    py_decline = jobs.build(
        "bridge.decline", ["card ending 4242"], version=6, extra={"tags": ["billing"]}
    )
    rb_fail = jobs.build("RubyFailer", ["order 7"], queue="ruby", version=6)
    for job in (py_fail, py_decline, rb_fail):
        client.push(job)
    wait_for(lambda: redis.zcard("retry") == 3, timeout=20, message="3 jobs in retry")

    retries = by_jid(tables(browser.dump_dom(sidekiq_web.url("retries")))["table"])
    assert set(retries) == {py_fail["jid"], py_decline["jid"], rb_fail["jid"]}
    # Columns: checkbox, Next Retry, Retry Count, Queue, Job, Arguments, Error.
    assert retries[py_fail["jid"]].cells[2:] == [
        "0", "default", "bridge.fail", '"invoice 1042 has no lines"',
        "ValueError: invoice 1042 has no lines",
    ]  # fmt: skip
    assert retries[py_decline["jid"]].cells[2:] == [
        "0", "default", "bridge.decline billing", '"card ending 4242"',
        "bridge_app.PaymentDeclined: card ending 4242",
    ]  # fmt: skip
    assert retries[rb_fail["jid"]].cells[2:] == [
        "0", "ruby", "RubyFailer", '"order 7"', "RuntimeError: boom from ruby",
    ]  # fmt: skip
    shot = browser.screenshot(
        sidekiq_web.url("retries"), screenshots / "web-ui-retries.png", *RETRIES_SCREEN
    )
    assert png_size(shot) == RETRIES_SCREEN

    failed_at = (retry_entry(redis, py_fail["jid"]) or {})["failed_at"]
    # The UI's "Retry Now" button (its real form: session cookie + CSRF token) puts the Python
    # job back in its queue; the Celery worker runs it and it fails again. Sidekiq's
    # Retry Now takes one off retry_count, so the count stays 0 and retried_at is set.
    form = [("key[]", retries[py_fail["jid"]].inputs["key[]"]), ("retry", "Retry Now")]
    status, page = sidekiq_web.post_form("retries", "retries", form)
    assert status == 200, page
    wait_for(lambda: redis.llen("results:bridge.fail") == 2, timeout=20, message="rerun")

    def failed_again() -> dict[str, Any]:
        entry = retry_entry(redis, py_fail["jid"]) or {}
        return entry if "retried_at" in entry else {}

    again = wait_for(failed_again, timeout=20, message="bridge.fail back in retry")
    assert (again["retry_count"], again["failed_at"]) == (0, failed_at)

    # --- Busy: the Celery worker, its queues and threads, and the Python job it runs --------
    sleeper = jobs.build("bridge.sleep", [60], queue="low", version=6)
    client.push(sleeper)
    work_key = f"{identity}:workers" if sidekiq_rb == "6" else f"{identity}:work"
    wait_for(
        lambda: redis.hget(identity, "busy") == b"1" and redis.hlen(work_key) == 1,
        timeout=20,
        message="the worker reports bridge.sleep as running",
    )
    busy = tables(browser.dump_dom(sidekiq_web.url("busy")))
    processes = {row.inputs["identity"]: row for row in busy["processes"]}
    assert set(processes) == {identity, ruby_identity}
    # Columns: Name (host:pid, tag, labels, queues), Started, RSS, Threads, Busy, buttons.
    name, _started, rss, threads, busy_count, buttons = processes[identity].cells
    # 7.0.2+ end the name cell with the process's version: ours names the bridge.
    version = "" if sidekiq_rb == "6" else f" Version: {VERSION_LABEL}"
    assert name == f"{host}:{worker.pid} worker1@{host} celery Queues: default, low{version}"
    assert (threads, busy_count) == ("3", "1")
    assert rss.endswith(("KB", "MB"))
    assert buttons == "Quiet Stop"
    ruby_name, _, _, ruby_threads, ruby_busy, _ = processes[ruby_identity].cells
    assert ruby_name.startswith(f"{host}:{ruby.pid} ") and "Queues: ruby" in ruby_name
    assert (ruby_threads, ruby_busy) == ("2", "0")

    # Columns: Process, TID, JID, Queue, Job, Arguments, Started. (Only the sleeper: were a
    # retry due meanwhile, its brief run could show too.)
    [running] = [row for row in busy["workers"] if sleeper["jid"] in row.cells]
    assert running.cells[0] == identity
    assert running.cells[2:6] == [sleeper["jid"], "low", "bridge.sleep", "60"]
    shot = browser.screenshot(
        sidekiq_web.url("busy"), screenshots / "web-ui-busy.png", *BUSY_SCREEN
    )
    assert png_size(shot) == BUSY_SCREEN

    # The job sleeps for a minute: a warm shutdown at teardown would wait for it.
    worker.kill9()


def queues_shown(name_cell: str) -> str:
    """What the Busy page says after "Queues: " in a process's name cell."""
    shown = name_cell.split("Queues: ", 1)[1]
    return shown.split(" Version: ", 1)[0].strip()


@pytest.mark.interop
@pytest.mark.worker
def test_busy_page_shows_each_queue_order_as_for_a_sidekiq_process_with_the_same_queues(
    browser: Chromium,
    sidekiq_rb: str,
    celery_worker: CeleryWorkerFactory,
    sidekiq_process: SidekiqProcessFactory,
    sidekiq_web: SidekiqWeb,
    redis: redis_lib.Redis,
) -> None:
    """A strict, a weighted and a random Celery worker, each beside a sidekiq.rb process
    started with the same queues in Sidekiq's notation: the Busy page shows the same queue
    list for both of each pair (7.3.2: ``critical: 3, default: 2, low: 1``; 6.4.1, which
    shows no weights: the names in order)."""
    orders = {
        "strict": (["critical", "default", "low"], {}),
        "weighted": (
            ["critical,3", "default,2", "low,1"],
            {"queue_weights": {"critical": 3, "default": 2, "low": 1}},
        ),
        "random": (["critical,1", "default,1", "low,1"], {"queue_order": "random"}),
    }
    pairs = {}
    for name, (notation, options) in orders.items():
        ruby = sidekiq_process(queues=notation, concurrency=1)
        setup = {**SETUP, **options, "sidekiq_version": int(sidekiq_rb)}
        worker = celery_worker(
            queues="critical,default,low", name=name, env={"SIDEKIQ_SETUP": json.dumps(setup)}
        )
        pairs[name] = (identity_of(redis, ruby.pid), identity_of(redis, worker.pid))
    busy = tables(browser.dump_dom(sidekiq_web.url("busy")))
    shown = {row.inputs["identity"]: queues_shown(row.cells[0]) for row in busy["processes"]}
    expected = {
        "strict": "critical, default, low",
        "weighted": "critical, default, low"
        if sidekiq_rb == "6"
        else "critical: 3, default: 2, low: 1",
        "random": "critical, default, low"
        if sidekiq_rb == "6"
        else "critical: 1, default: 1, low: 1",
    }
    for name, (ruby_identity, identity) in pairs.items():
        assert shown[identity] == shown[ruby_identity] == expected[name], (name, shown)
