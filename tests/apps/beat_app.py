"""The Celery app the beat tests run: ``celery -A beat_app beat -S sidekiq``.

Environment: ``BROKER_URL`` (a ``sidekiq://`` URL) and ``BEAT_SCHEDULE``, JSON of
``{name: {"task": ..., "every": seconds | "crontab": {crontab kwargs}, "args": [...],
"options": {...}}}``, turned into the app's ``beat_schedule``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery import Celery
from celery.schedules import crontab

import celery_sidekiq

app = Celery("beat_app", broker=os.environ["BROKER_URL"])
celery_sidekiq.setup(app)


def _entry(spec: dict[str, Any]) -> dict[str, Any]:
    entry = {
        "task": spec["task"],
        "schedule": crontab(**spec["crontab"]) if "crontab" in spec else float(spec["every"]),
    }
    entry.update({key: spec[key] for key in ("args", "options") if key in spec})
    return entry


app.conf.beat_schedule = {
    name: _entry(spec) for name, spec in json.loads(os.environ.get("BEAT_SCHEDULE", "{}")).items()
}
