"""Part of Celery's own integration suite on ``sidekiq://``, in ``make test`` (issue 13).

The whole suite (about 380 tests, some 25 minutes) runs with ``make celery-suite``; CI runs the
tests of it that exercise what a Sidekiq job must carry for Celery: failures and their
errbacks, retries, ``Reject(requeue=True)``, message properties and priority, chains, groups
and chords whose members fail, countdowns in a canvas, and revoking by stamped headers. They
run from the sdist of the installed Celery (``scripts/celery-suite.sh`` downloads it with pip),
against a redis-server of their own, with ``setup(app, default_queue="celery")``.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest
from support.procs import REPO_ROOT

pytestmark = pytest.mark.worker

T = "t/integration/"
SELECTED = [
    f"{T}test_tasks.py::test_tasks::{name}"
    for name in (
        "test_fail",
        "test_wrong_arguments",
        "test_fail_with_unpickleable_exception",
        "test_reject_with_requeue_redelivers_and_succeeds",
        "test_retry",
        "test_task_retried_priority",
        "test_task_retried_headers",
        "test_properties",
        "test_revoked_by_headers_simple_canvas",
        "test_revoke_by_stamped_headers_no_match",
    )
] + [
    f"{T}test_tasks.py::test_task_redis_result_backend::test_retry_preserves_ignore_result_false",
    f"{T}test_canvas.py::test_link_error::test_link_error",
    f"{T}test_canvas.py::test_link_error::test_link_error_callback_retries",
    f"{T}test_canvas.py::test_link_error::test_link_error_using_signature",
    f"{T}test_canvas.py::test_chain::test_chain_on_error",
    f"{T}test_canvas.py::test_chain::test_header_failure_fails_the_chords_after_it[1]",
    f"{T}test_canvas.py::test_chain::test_replace_chain_with_empty_chain",
    f"{T}test_canvas.py::test_chain::test_chain_children_with_errbacks",
    f"{T}test_canvas.py::test_group::test_ready_with_exception",
    f"{T}test_canvas.py::test_group::test_errback_called_by_group_fail_first",
    f"{T}test_canvas.py::test_chord::test_group_or_task_countdown_delays_header",
    f"{T}test_canvas.py::test_chord::test_priority",
    f"{T}test_canvas.py::test_chord::test_priority_chain",
    f"{T}test_canvas.py::test_chord::test_error_propagates_from_chord2",
    f"{T}test_canvas.py::test_stamping_mechanism::test_properties_not_affected_from_stamping",
]


@pytest.mark.timeout(1200)
def test_celerys_own_tests_of_failures_canvas_and_properties_pass_on_sidekiq() -> None:
    env = {**os.environ, "CELERY_SUITE_RERUNS": "0", "CELERY_SUITE_TIMEOUT": "120"}
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "celery-suite.sh"), "-q", *SELECTED],
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) == len(SELECTED), output[-3000:]
