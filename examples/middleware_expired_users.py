"""Server middleware: skip the jobs of users whose account has expired.

Rails enqueues ``NewsletterJob.perform_async(user_id, issue)`` for every subscriber; a Python
worker sends the newsletters. Accounts expire in between, so a middleware looks at each job's
first argument before the task runs and skips the jobs of expired users. A skipped job counts
as done: it is acknowledged, never retried, and the task never sees it.

    BROKER_URL=sidekiq://localhost:6379/0 celery -A middleware_expired_users worker
    redis-cli SADD users:expired 7                     # user 7's account has expired
    # from Ruby: NewsletterJob.perform_async(7, "2026-11") is skipped, (8, "2026-11") is sent

A link is any callable ``(job, call_next) -> result``: ``job`` is the Sidekiq job as read from
Redis (``class``, ``args``, ``jid``, ``queue``...), ``call_next()`` runs the rest of the chain
and the task. Return without calling it to skip the job; raise to fail it (it is retried as any
failure is).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

import celery_sidekiq

logger = logging.getLogger(__name__)

BROKER_URL = os.environ.get("BROKER_URL", "sidekiq://localhost:6379/0")
_redis = redis.Redis.from_url(BROKER_URL.replace("sidekiq://", "redis://", 1))


class SkipExpiredUsers:
    """Skips jobs whose first argument is the id of an expired user.

    ``expired(user_id)`` says whether a user's account has expired; here a Redis SET, in a real
    app a cached query. Jobs whose first argument is not a user id pass untouched.
    """

    def __init__(self, expired: Callable[[int], bool], classes: frozenset[str]) -> None:
        self.expired = expired
        self.classes = classes

    def __call__(self, job: dict[str, Any], call_next: Callable[[], Any]) -> Any:
        args = job["args"]
        user_id = args[0] if args else None
        if job["class"] in self.classes and isinstance(user_id, int) and self.expired(user_id):
            logger.info("skipping %s %s: user %s has expired", job["class"], job["jid"], user_id)
            return None
        return call_next()


def is_expired(user_id: int) -> bool:
    return bool(_redis.sismember("users:expired", user_id))


app = Celery("newsletters", broker=BROKER_URL)
celery_sidekiq.setup(
    app,
    poll_interval=1.0,
    middleware=[SkipExpiredUsers(is_expired, classes=frozenset({"NewsletterJob"}))],
)


@app.task(name="NewsletterJob")
def send_newsletter(user_id: int, issue: str) -> None:
    """Send one issue to one user (here: note it in the list ``newsletters:sent``)."""
    logger.info("sending newsletter %s to user %s", issue, user_id)
    _redis.rpush("newsletters:sent", f"{user_id}:{issue}")
