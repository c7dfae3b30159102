"""What test tasks recorded: each run of a test task (Python or Ruby) appends one JSON document
to the Redis list ``results:<task or class name>``."""

from __future__ import annotations

import json
from typing import Any

import redis

from support.waiting import wait_for


def runs(
    client: redis.Redis, name: str, count: int = 1, timeout: float = 30
) -> list[dict[str, Any]]:
    """Wait until ``name`` ran at least ``count`` times; every run recorded so far, in order."""
    key = f"results:{name}"
    wait_for(lambda: client.llen(key) >= count, timeout=timeout, message=f"{count} runs of {name}")
    return [json.loads(item) for item in client.lrange(key, 0, -1)]
