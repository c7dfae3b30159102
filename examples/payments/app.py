"""The PaymentReportWorker story, Python side.

A Rails app has long enqueued ``PaymentReportWorker.perform_async(account_id, month)``. The
team moved that job to Python without touching the Rails code: the task below declares the
Ruby class name it answers to. When a report is ready, Python hands the notification back to
Ruby by class name, as a plain Sidekiq job.

    celery -A payments.app worker -Q reports     # BROKER_URL=sidekiq://localhost:6379/0
"""

from __future__ import annotations

import json
import os
import socket

import redis
from celery import Celery

import celery_sidekiq

BROKER_URL = os.environ.get("BROKER_URL", "sidekiq://localhost:6379/0")

app = Celery("payments", broker=BROKER_URL)
celery_sidekiq.setup(app, poll_interval=1.0)
app.conf.task_routes = {
    "payments.*": {"queue": "reports"},
    "ReportReadyNotifier": {"queue": "mailers"},
}

# The demo's log of what ran where; a real app would not need it.
_log = redis.Redis.from_url(BROKER_URL.replace("sidekiq://", "redis://", 1))


@app.task(bind=True, name="payments.payment_report", sidekiq_class="PaymentReportWorker")
def payment_report(self, account_id: int, month: str) -> dict[str, object]:
    """Build the monthly payment report of one account (Ruby enqueues it by its Ruby name)."""
    total = sum(range(account_id)) / 100  # stands in for the real query
    _log.rpush(
        "demo:log",
        json.dumps(
            {
                "ran_in": f"Python ({socket.gethostname()})",
                "class": "PaymentReportWorker",
                "args": [account_id, month],
                "jid": json.loads(self.request.properties["sidekiq_job"])["jid"],
            }
        ),
    )
    app.send_task("ReportReadyNotifier", args=[account_id, month, total])
    return {"account_id": account_id, "month": month, "total": total}
