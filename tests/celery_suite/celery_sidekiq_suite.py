"""pytest plugin: Celery's own integration suite (``t/integration`` of its sdist) on ``sidekiq://``.

Loaded by ``scripts/celery-suite.sh`` (``make celery-suite``) with ``-p celery_sidekiq_suite``,
from the unpacked sdist of the installed Celery; no test code of Celery's is copied here. The
suite's conftest reads ``TEST_BROKER`` and ``TEST_BACKEND`` and builds its apps with
``celery.contrib.pytest``; this plugin adds the one change a user makes, ``setup(app,
default_queue="celery")`` (the suite insists on Celery's default queue name), to every app
those fixtures build, through Celery's own ``fixups`` parameter. With a ``redis://`` broker
(the native run) it changes nothing.

It also supplies the ``celery.contrib.pytest`` fixtures the suite's conftest does not import
(Celery's CI gets them from the pytest-celery plugin), and, with ``CELERY_SUITE_TIMEOUT=N``,
caps every test at N seconds (the suite's own waits are 120 s, its marks 300 s) so that a
failing run takes minutes, not hours.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest
from celery import Celery
from celery.contrib.pytest import celery_worker_parameters, use_celery_app_trap

import celery_sidekiq

__all__ = ["celery_parameters", "celery_worker_parameters", "use_celery_app_trap"]

SIDEKIQ_SCHEMES = ("sidekiq", "sidekiqs")


def on_sidekiq() -> bool:
    return os.environ.get("TEST_BROKER", "").split("://", 1)[0] in SIDEKIQ_SCHEMES


#: The fixtures of celery.contrib.pytest that build the suite's apps.
APP_FIXTURES = ("celery_session_app", "celery_app")


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    """``setup(app, default_queue="celery")`` on each app the suite's fixtures build, before
    any test or worker uses it: what a user adds to an app that moves to ``sidekiq://``."""
    app = yield
    if fixturedef.argname in APP_FIXTURES and on_sidekiq() and isinstance(app, Celery):
        celery_sidekiq.setup(app, default_queue="celery")
    return app


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "celery(**overrides): override celery configuration for a test case"
    )


@pytest.fixture(scope="session")
def celery_parameters() -> Mapping[str, Any]:
    return {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    cap = os.environ.get("CELERY_SUITE_TIMEOUT")
    if not cap:
        return
    for item in items:
        # First in the item's own marks: pytest-timeout reads the closest one.
        item.add_marker(pytest.mark.timeout(float(cap)), append=False)
