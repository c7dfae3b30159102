"""Fuzz the codec as a worker runs it: ``job.parse``, then ``codec.message_from_job``.

For every job parse accepts, ``message_from_job`` must not raise (the job already left its
queue), its envelope must be JSON that UTF-8 carries, its body a protocol-2 body kombu's JSON
reads back, and the headers Celery's worker reads must have the types it expects. The retry of
that message (``codec.retry_job``) must give a job that writes back, or a ``CodecError``.
"""

from __future__ import annotations

from typing import Any

from _harness import fuzz, instrumented, writable

with instrumented():
    from kombu.utils import json as kombu_json

    from kombu_sidekiq import codec
    from kombu_sidekiq import job as jobs

REGISTRY = codec.ClassRegistry()


def check(condition: bool, what: str, value: Any) -> None:
    if not condition:
        raise AssertionError(f"{what}: {value!r:.200}")


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def check_headers(headers: dict[str, Any]) -> None:
    check(isinstance(headers["id"], str) and bool(headers["id"]), "id", headers["id"])
    check(isinstance(headers["task"], str), "task", headers["task"])
    check(isinstance(headers["root_id"], str), "root_id", headers["root_id"])
    for key in ("parent_id", "group", "expires", "shadow", "origin"):
        check(headers[key] is None or isinstance(headers[key], str), key, headers[key])
    index = headers["group_index"]
    check(index is None or type(index) is int, "group_index", index)
    check(type(headers["retries"]) is int and headers["retries"] >= 0, "retries", headers)
    limits = headers["timelimit"]
    check(isinstance(limits, list) and len(limits) == 2, "timelimit", limits)
    for limit in limits:
        check(limit is None or type(limit) in (int, float), "timelimit", limits)
    check(type(headers.get("ignore_result", False)) is bool, "ignore_result", headers)
    stamped = headers.get("stamped_headers", [])
    check(_strings(stamped), "stamped_headers", stamped)
    check(isinstance(headers.get("stamps", {}), dict), "stamps", headers)
    check(type(headers.get("replaced_task_nesting", 0)) is int, "replaced_task_nesting", headers)


def test_one_input(data: bytes) -> None:
    try:
        job = jobs.parse(data)
    except jobs.InvalidJob:
        return
    raw = data.decode("utf-8")
    message = codec.message_from_job(job, raw, "default", REGISTRY)
    writable(message)
    body = kombu_json.loads(message["body"])
    check(isinstance(body, list) and len(body) == 3, "body", body)
    args, kwargs, embed = body
    check(isinstance(args, list) and isinstance(kwargs, dict), "args, kwargs", body)
    for key in ("callbacks", "errbacks", "chain"):
        value = embed[key]
        check(value is None or all(isinstance(s, dict) for s in value), key, value)
    check(embed["chord"] is None or isinstance(embed["chord"], dict), "chord", embed)
    check_headers(message["headers"])
    check(isinstance(message["properties"]["reply_to"], str), "reply_to", message)
    try:
        retried = codec.retry_job(raw, body)
    except codec.CodecError:
        return
    jobs.parse(jobs.dumps(retried).encode("utf-8"))


if __name__ == "__main__":
    fuzz(test_one_input)
