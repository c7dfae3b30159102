"""What tests read back from Redis: each run of a test task (Python or Ruby) appends one JSON
document to the list ``results:<task or class name>``; reliable fetch holds jobs in flight."""

from __future__ import annotations

import json
from typing import Any

import redis

from support.waiting import wait_for


def items(client: redis.Redis, key: str, count: int = 1, timeout: float = 30) -> list[Any]:
    """Wait until the list ``key`` holds ``count`` JSON documents; all of them, in order."""
    wait_for(lambda: client.llen(key) >= count, timeout=timeout, message=f"{count} items in {key}")
    return [json.loads(item) for item in client.lrange(key, 0, -1)]


def runs(
    client: redis.Redis, name: str, count: int = 1, timeout: float = 30
) -> list[dict[str, Any]]:
    """Wait until ``name`` ran at least ``count`` times; every run recorded so far, in order."""
    return items(client, f"results:{name}", count, timeout)


def inflight(client: redis.Redis) -> int:
    """Jobs some worker holds (reliable fetch's in-flight hashes and landing lists)."""
    held = 0
    for pattern in ("celery-sidekiq:inflight:*", "celery-sidekiq:landing:*"):
        for key in client.keys(pattern):
            held += client.hlen(key) if client.type(key) == b"hash" else client.llen(key)
    return held
