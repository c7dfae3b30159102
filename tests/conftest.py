"""Shared fixtures: a private redis-server, real celery workers and real sidekiq.rb.

Policy for missing programs (redis-server, ruby + sidekiq): skip locally, FAIL when CI=true.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

# `tests/` is not a package: make `from support.x import y` work in every import mode.
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import redis as redis_lib  # noqa: E402
from support.env import missing_or_fail  # noqa: E402
from support.redis_server import (  # noqa: E402
    RedisServer,
    RedisServerFactory,
    redis_server_available,
)
from support.ruby import (  # noqa: E402
    SIDEKIQ7_ROOT,
    SIDEKIQ_RBS,
    SidekiqProcess,
    SidekiqProcessFactory,
    ruby_available,
)
from support.ruby import sidekiq_rb as sidekiq_rb_version  # noqa: E402
from support.worker import CeleryWorker, CeleryWorkerFactory  # noqa: E402

# (label, function returning the log tail) of processes started for the current test;
# shown in the report when the test fails.
_LOGS = pytest.StashKey[list[tuple[str, Callable[[], str]]]]()


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject; repeated so the suite works with any ini file.
    config.addinivalue_line("markers", "interop: runs real sidekiq.rb (Debian's ruby-sidekiq)")
    config.addinivalue_line("markers", "worker: runs a real celery worker subprocess")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when == "call":
        for label, get_tail in item.stash.get(_LOGS, []):
            report.sections.append((f"log tail: {label}", get_tail()))
    return report


def _register_log(request: pytest.FixtureRequest, label: str, get_tail: Callable[[], str]) -> None:
    request.node.stash.setdefault(_LOGS, []).append((label, get_tail))


# --- Redis -----------------------------------------------------------------------------


def _require_redis_server() -> None:
    if not redis_server_available():
        missing_or_fail("redis-server (Debian package redis-server)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole session (flushed per test by the `redis` fixture)."""
    _require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[redis_lib.Redis]:
    """Client (bytes responses) for the session server, after FLUSHALL."""
    if not redis_server.running:  # a test stopped/crashed it: give the next one a server
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def redis_url(redis_server: RedisServer, redis: redis_lib.Redis) -> str:
    """``redis://127.0.0.1:PORT/0`` of the (flushed) session server."""
    return redis_server.url


@pytest.fixture
def broker_url(redis_server: RedisServer, redis: redis_lib.Redis) -> str:
    """``sidekiq://127.0.0.1:PORT/0`` of the (flushed) session server."""
    return f"sidekiq://127.0.0.1:{redis_server.port}/0"


@pytest.fixture
def redis_server_factory() -> Iterator[RedisServerFactory]:
    """Private, started servers for tests that stop/restart Redis or need a password."""
    _require_redis_server()
    servers: list[RedisServer] = []

    def make(
        password: str | None = None, extra_args: list[str] | tuple[str, ...] = ()
    ) -> RedisServer:
        server = RedisServer(password=password, extra_args=extra_args)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.cleanup()


# --- Celery worker -----------------------------------------------------------------------


@pytest.fixture
def celery_worker(
    request: pytest.FixtureRequest, broker_url: str, tmp_path: Path
) -> Iterator[CeleryWorkerFactory]:
    """Start real celery workers (BROKER_URL = ``broker_url`` unless ``broker_url=`` is given
    in ``kw``); all are stopped at teardown. ``kw`` goes to CeleryWorker (name, app_dir,
    extra_args, broker_url)."""
    workers: list[CeleryWorker] = []

    def start(
        app_module: str = "bridge_app",
        queues: str = "default",
        pool: str = "solo",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        **kw: Any,
    ) -> CeleryWorker:
        kw.setdefault("name", f"worker{len(workers) + 1}")
        kw.setdefault("broker_url", broker_url)
        worker = CeleryWorker(
            log_path=tmp_path / f"celery-{kw['name']}.log",
            app_module=app_module,
            queues=queues,
            pool=pool,
            concurrency=concurrency,
            env=env,
            **kw,
        )
        workers.append(worker)
        _register_log(request, f"celery {worker.name} ({worker.log_path})", worker.log_tail)
        return worker.start()

    yield start
    for worker in workers:
        worker.stop()


# --- Ruby / sidekiq.rb -------------------------------------------------------------------


@pytest.fixture
def require_ruby() -> None:
    """Skip (locally) or fail (CI=true) unless ruby can ``require "sidekiq"`` (the version
    ``SIDEKIQ_RB`` names: see ``sidekiq_rb``)."""
    version = sidekiq_rb_version()
    if not ruby_available(version):
        missing_or_fail(
            "ruby with sidekiq (Debian packages ruby, ruby-sidekiq)"
            if version == "6"
            else f"sidekiq.rb 7 unpacked in {SIDEKIQ7_ROOT} (make deps runs scripts/fetch-sidekiq7.sh)"
        )


@pytest.fixture(params=SIDEKIQ_RBS, ids=lambda version: f"sidekiq{version}")
def sidekiq_rb(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test once per sidekiq.rb major version (6.4.1 and 7.x), with every Ruby helper
    loading that version. A module opts in with ``pytest.mark.usefixtures("sidekiq_rb")``
    ahead of ``require_ruby``."""
    monkeypatch.setenv("SIDEKIQ_RB", request.param)
    return str(request.param)


@pytest.fixture
def sidekiq_process(
    request: pytest.FixtureRequest, require_ruby: None, redis_url: str, tmp_path: Path
) -> Iterator[SidekiqProcessFactory]:
    """Start real sidekiq servers with tests/ruby/jobs.rb on the test Redis (``kw`` goes
    to SidekiqProcess: verbose, env, require, extra_args, redis_url); stopped at teardown."""
    procs: list[SidekiqProcess] = []

    def start(
        queues: str | list[str] | tuple[str, ...] = "default",
        concurrency: int = 2,
        **kw: Any,
    ) -> SidekiqProcess:
        kw.setdefault("redis_url", redis_url)
        proc = SidekiqProcess(
            log_path=tmp_path / f"sidekiq{len(procs) + 1}.log",
            queues=queues,
            concurrency=concurrency,
            **kw,
        )
        procs.append(proc)
        _register_log(request, f"sidekiq {len(procs)} ({proc.log_path})", proc.log_tail)
        return proc.start()

    yield start
    for proc in procs:
        proc.stop()
