"""Shared bits for managed subprocesses that log to a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path
from types import TracebackType
from typing import TypeVar

T = TypeVar("T", bound="Started")

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = REPO_ROOT / "tests"


def tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "<no log file>"
    return "\n".join(text.splitlines()[-lines:])


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the process group (started with start_new_session=True), so pool children and
    grandchildren die too instead of lingering after the test."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def terminate(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send ``sig`` to the main process, wait ``timeout`` s, then SIGKILL the whole group."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc)  # also reaps leftovers of a process that exited on its own
    return proc.wait(10)


class Started:
    """``with Thing(...) as thing``: ``start()`` on entry, ``close()`` on exit."""

    def start(self: T) -> T:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: T) -> T:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LoggedProcess(Started):
    """A subprocess (its own session) whose output goes to ``log_path``; subclasses start it."""

    #: What ``stop()`` sends first: the program's own clean shutdown.
    stop_signal: int = signal.SIGTERM

    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int | None = None, timeout: float = 30.0) -> int | None:
        """Send ``sig`` (default ``stop_signal``), wait up to ``timeout`` s, then SIGKILL the
        whole group. Returns the exit code (negative for a signal)."""
        if self.proc is None:
            return None
        return terminate(self.proc, self.stop_signal if sig is None else sig, timeout)

    def close(self) -> None:
        self.stop()

    def kill9(self) -> None:
        """Crash it: SIGKILL the whole process group, no shutdown handlers run."""
        if self.proc is not None:
            kill_group(self.proc)
            self.proc.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)


class TempDirServer(Started):
    """A server process living in a temp dir of its own (``dir``), logging to ``logfile``."""

    proc: subprocess.Popen[bytes] | None = None
    dir: Path
    logfile: Path

    def stop(self, timeout: float = 10.0) -> None:
        """TERM, then KILL after ``timeout`` s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        self.cleanup()
