"""Fuzz ActiveJob decoding: the input is the job data (``args[0]``) of a wrapper job.

The wrapper job goes through ``job.parse`` first, as every job read from Redis does; then
``activejob.unwrap`` must return or raise ``ActiveJobDecodeError``, and what it returns must
survive kombu's JSON (the Celery message body) and UTF-8. ``parse_time`` is fed the input as
text too.
"""

from __future__ import annotations

import contextlib

from _harness import fuzz, instrumented, writable

with instrumented():
    from kombu.utils import json as kombu_json

    from kombu_sidekiq import activejob as aj
    from kombu_sidekiq import job as jobs

PREFIX = b'{"class":"' + aj.RAILS_WRAPPER.encode() + b'","jid":"0123456789abcdef01234567","args":['


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(aj.ActiveJobDecodeError):
        aj.parse_time(data.decode("utf-8", "replace"))
    try:
        job = jobs.parse(PREFIX + data + b"]}")
    except jobs.InvalidJob:
        return
    try:
        inner = aj.unwrap(job)
    except aj.ActiveJobDecodeError:
        return
    if not isinstance(inner.klass, str) or not inner.klass:
        raise AssertionError(f"no class: {inner.klass!r}")
    body = kombu_json.dumps([inner.args, inner.kwargs, {}])
    body.encode("utf-8")
    kombu_json.loads(body)
    writable(inner.headers)


if __name__ == "__main__":
    fuzz(test_one_input)
