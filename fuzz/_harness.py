"""What every harness shares: atheris set up on the project's modules, and a JSON mutator.

A harness is a script: ``python fuzz/fuzz_job.py [libFuzzer options] CORPUS...``. Modules
imported inside :func:`instrumented` (the project's) report coverage to libFuzzer.

libFuzzer's byte mutations rarely turn ``"retries":2`` into ``"retries":[2]``: that takes two
coordinated edits that both keep the JSON valid. So half the mutations here are structural
(:func:`mutate_json`): parse the input, replace one value with a value of another JSON type, or
add one of the keys the readers know with such a value, and write it back in one of the ways
Redis could hold it (escaped or raw UTF-8). The other half are libFuzzer's own.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

import atheris

#: Values of every JSON type and at the edges of each (a lone surrogate is spliced in as text).
HOSTILE: Sequence[Any] = (
    None, True, False, 0, -1, 1, 2**53 + 1, 2**63, 10**400, -(10**400), 1.5, -0.0, 5e-324,
    1.7976931348623157e308, "", "x", "0", "1.5", "2030-01-01T00:00:00+00:00", "\u2028",
    [], [1], [None, None], [1, 2, 3], ["a"], [{}], {}, {"a": 1}, {"task": "t"}, [[[]]],
)  # fmt: skip

#: Keys the readers look up: the job's, the ``celery`` extension's, ActiveJob's.
KEYS: Sequence[str] = (
    "class", "args", "queue", "jid", "retry", "retry_count", "created_at", "enqueued_at",
    "failed_at", "retried_at", "error_message", "error_class", "error_backtrace", "backtrace",
    "retry_for", "retry_queue", "dead", "unique_for", "unique_until", "bid", "tags", "wrapped",
    "celery", "id", "kwargs", "root_id", "parent_id", "group", "group_index", "retries",
    "timelimit", "expires", "shadow", "origin", "headers", "callbacks", "errbacks", "chain",
    "chord", "reply_to", "stamped_headers", "stamps", "ignore_result", "replaced_task_nesting",
    "job_class", "job_id", "provider_job_id", "queue_name", "priority", "arguments",
    "executions", "exception_executions", "locale", "timezone", "scheduled_at",
    "_aj_globalid", "_aj_symbol_keys", "_aj_ruby2_keywords", "_aj_hash_with_indifferent_access",
    "_aj_serialized", "value", "parts", "begin", "end", "exclude_end", "name", "cron",
)  # fmt: skip

_SPLICES: Sequence[str] = ('"\\ud800"', "NaN", "1e400", "1" + "0" * 5000, "[" * 101 + "]" * 101)


def instrumented() -> Any:
    """``with instrumented(): import ...``: the project's modules, with coverage feedback."""
    return atheris.instrument_imports(include=["kombu_sidekiq", "celery_sidekiq"])


def writable(value: Any) -> str:
    """The JSON a reader writes back for ``value``: strict JSON, and UTF-8 can carry it."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    return text


def _nodes(doc: Any) -> list[tuple[Any, Any]]:
    """(container, key or index) of every value inside ``doc``, at most 200."""
    found: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack and len(found) < 200:
        item = stack.pop()
        slots = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in list(slots):
            found.append((item, key))
            if isinstance(child, (dict, list)):
                stack.append(child)
    return found


def mutate_json(data: bytes, max_size: int, seed: int) -> bytes:
    """One structural mutation of a JSON input, or libFuzzer's own for anything else."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return bytes(atheris.Mutate(data, max_size))
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return bytes(atheris.Mutate(data, max_size))
    if not isinstance(doc, (dict, list)):
        return bytes(atheris.Mutate(data, max_size))
    value = rng.choice(HOSTILE)
    nodes = _nodes(doc)
    containers = [doc, *(c[k] for c, k in nodes if isinstance(c[k], (dict, list)))]
    roll = rng.random()
    if nodes and roll < 0.5:
        container, key = rng.choice(nodes)
        container[key] = value
    else:
        target = rng.choice(containers)
        if isinstance(target, dict):
            target[rng.choice(KEYS)] = value
        else:
            target.insert(rng.randint(0, len(target)), value)
    text = json.dumps(doc, ensure_ascii=rng.random() < 0.3, separators=(",", ":"))
    if rng.random() < 0.1:  # what json.dumps cannot write: splice it over a value
        marker = json.dumps(value, separators=(",", ":"))
        at = text.rfind(marker)
        if at >= 0:
            text = text[:at] + rng.choice(_SPLICES) + text[at + len(marker) :]
    out = text.encode("utf-8", "surrogatepass")
    return out if len(out) <= max_size else bytes(atheris.Mutate(data, max_size))


def fuzz(test_one_input: Callable[[bytes], None], *, structured: bool = True) -> None:
    """Run libFuzzer (its options in ``sys.argv``); an uncaught exception is a crash."""
    if structured:
        atheris.Setup(sys.argv, test_one_input, custom_mutator=mutate_json)
    else:
        atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
