"""A real ``celery -A beat_app beat -S sidekiq`` process (tests/apps/beat_app.py), and a group
of them started by one test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from support.procs import REPO_ROOT, TESTS_DIR, LoggedProcess, tail
from support.waiting import wait_for

T = TypeVar("T")

#: The line beat logs for each fire it enqueued (celery_sidekiq.periodic.Scheduler.tick).
_FIRE = re.compile(
    r"beat: enqueued (?P<name>.*) \((?P<klass>.*)\) for (?P<at>\S+), jid (?P<jid>\w+)"
)


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

    def fire_times(self) -> dict[str, float]:
        """jid -> the fire time (epoch seconds) beat claimed it for, from its log."""
        return {
            found["jid"]: datetime.fromisoformat(found["at"]).timestamp()
            for found in _FIRE.finditer(self.log())
        }

    def stop(self, sig: int | None = None, timeout: float = 10.0) -> int | None:
        return super().stop(sig, timeout)


class Beats:
    """The beats one test starts on one broker, each logging to a file in ``log_dir``."""

    def __init__(self, broker_url: str, log_dir: Path) -> None:
        self.broker_url = broker_url
        self.log_dir = log_dir
        self.started: list[Beat] = []

    def __call__(self, schedule: dict[str, Any], count: int = 1) -> list[Beat]:
        """Start ``count`` beats with ``schedule`` and wait until each has written it."""
        new = [
            Beat(self.broker_url, self.log_dir / f"beat{len(self.started) + n}.log", schedule)
            for n in range(count)
        ]
        self.started.extend(new)
        for beat in new:
            beat.start()
        for beat in new:
            wait_for(beat.ready, timeout=30, message=f"beat {beat.log_path.name} up")
        return new

    def wait_for(self, predicate: Callable[[], T], timeout: float, message: str) -> T:
        """``support.waiting.wait_for``, with the beats' logs as they are when it gives up."""
        try:
            return wait_for(predicate, timeout=timeout, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def logs(self, lines: int = 30) -> str:
        """The tail of every beat's log, for failure messages."""
        return "\n".join(
            f"--- {beat.log_path.name} ---\n{tail(beat.log_path, lines)}" for beat in self.started
        )

    def stop(self) -> None:
        for beat in self.started:
            beat.stop()
