"""A real ``celery -A beat_app beat -S sidekiq`` process (tests/apps/beat_app.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.procs import REPO_ROOT, TESTS_DIR, LoggedProcess


class Beat(LoggedProcess):
    """``python -m celery -A beat_app beat -S sidekiq``, logging to ``log_path``.

    ``schedule`` becomes the app's ``beat_schedule`` (see beat_app for its JSON form).
    """

    def __init__(self, broker_url: str, log_path: Path, schedule: dict[str, Any]) -> None:
        self.log_path = log_path
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(TESTS_DIR / "apps"), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
            ),
            "BROKER_URL": broker_url,
            "BEAT_SCHEDULE": json.dumps(schedule),
            "PYTHONUNBUFFERED": "1",
        }
        self.argv = [
            sys.executable, "-m", "celery", "-A", "beat_app", "beat", "-S", "sidekiq",
            "--loglevel=DEBUG", "-s", str(log_path.with_suffix(".schedule")),
        ]  # fmt: skip
        self.proc = None

    def start(self) -> Beat:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=TESTS_DIR / "apps", env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"beat exited with {self.proc.returncode}:\n{self.log()}")
        return "beat_schedule entries in" in self.log()

    def log(self) -> str:
        return self.log_text()

    def fires(self) -> int:
        return self.log().count("beat: enqueued")

    def stop(self, sig: int | None = None, timeout: float = 10.0) -> int | None:
        return super().stop(sig, timeout)
