"""Shared bits for managed subprocesses that log to a file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

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
