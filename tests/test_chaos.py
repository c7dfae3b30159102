"""The chaos soak, short: about a minute of faults on a random (seeded) schedule while Python
and Ruby producers, three workers (solo, prefork, threads), the scheduled poller and beat run
through a fault proxy; at the end every job is accounted for (tests/chaos.py, whose long run
is ``make chaos CHAOS_ARGS="--minutes 10"``).

``CHAOS_SEED`` picks the schedule (default 1); the summary, with the seed, is in the failure
message, and every log in the test's tmp dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import chaos
import pytest
from support.env import missing_or_fail
from support.redis_server import redis_server_available

pytestmark = pytest.mark.worker


def test_a_minute_of_chaos_loses_nothing_and_runs_nothing_twice_without_a_death(
    tmp_path: Path,
) -> None:
    if not redis_server_available():
        missing_or_fail("redis-server (Debian package redis-server)")
    options = chaos.Options(
        seconds=float(os.environ.get("CHAOS_SECONDS", "55")),
        seed=int(os.environ.get("CHAOS_SEED", "1")),
        rate=60,  # jobs/s: a few thousand in all, on a busy 2-core machine
        fault_every=2.0,  # each of the eleven kinds about twice
        drain_timeout=45,
        workdir=tmp_path / "chaos",
        verbose=False,
    )
    summary = chaos.run(options)
    print(summary.text())
    assert summary.jobs > 1000, summary.text()
    assert summary.ok, summary.text()
