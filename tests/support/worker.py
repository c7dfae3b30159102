"""A real ``celery worker`` subprocess for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from support.procs import REPO_ROOT, TESTS_DIR, LoggedProcess
from support.waiting import wait_for

APPS_DIR = TESTS_DIR / "apps"


class CeleryWorker(LoggedProcess):
    """``python -m celery -A <app_module> worker`` with its output in ``log_path``.

    The app module is imported from ``app_dir`` (default ``tests/apps``) and reads the
    broker URL from the BROKER_URL environment variable.
    """

    def __init__(
        self,
        broker_url: str,
        log_path: Path,
        app_module: str = "bridge_app",
        queues: str = "default",
        pool: str = "solo",
        concurrency: int = 1,
        name: str = "worker",
        env: dict[str, str] | None = None,
        app_dir: Path = APPS_DIR,
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.broker_url = broker_url
        self.log_path = Path(log_path)
        self.app_module = app_module
        self.queues = queues
        self.pool = pool
        self.concurrency = concurrency
        self.name = name
        self.extra_env = dict(env or {})
        self.app_dir = Path(app_dir)
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self.app_module, "worker",
            "-Q", self.queues, "-P", self.pool, "-c", str(self.concurrency),
            "--loglevel=INFO", "-n", f"{self.name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            *self.extra_args,
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = [str(self.app_dir), str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            path.append(env["PYTHONPATH"])
        env.update(
            PYTHONPATH=os.pathsep.join(path),
            BROKER_URL=self.broker_url,
            PYTHONUNBUFFERED="1",  # log lines reach the file as they happen
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> CeleryWorker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A restarted worker appends to the same log: only look for "ready." after this point.
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.app_dir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: kill9() takes pool children too
            )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"celery worker exited with {self.proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_text()}"
                )
            return b" ready." in self.log_path.read_bytes()[offset:]

        try:
            wait_for(ready, timeout=timeout, message=self._timeout_message(timeout))
        except AssertionError as exc:
            self.kill9()
            raise AssertionError(f"{exc}\n--- worker log ---\n{self.log_text()}") from None
        return self

    def _timeout_message(self, timeout: float) -> str:
        return f"celery worker {self.name!r} not ready within {timeout}s"


class CeleryWorkerFactory(Protocol):
    """Type of the ``celery_worker`` fixture; ``kw`` goes to CeleryWorker."""

    def __call__(
        self,
        app_module: str = "bridge_app",
        queues: str = "default",
        pool: str = "solo",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        **kw: Any,
    ) -> CeleryWorker: ...
