"""Fuzz ``kombu_sidekiq.job.parse``, the one door for bytes read from Redis.

It must return a job or raise ``InvalidJob``, nothing else; a job it returns must write back
as UTF-8 and read again as the same job.
"""

from __future__ import annotations

from _harness import fuzz, instrumented

with instrumented():
    from kombu_sidekiq import job as jobs


def test_one_input(data: bytes) -> None:
    try:
        job = jobs.parse(data)
    except jobs.InvalidJob:
        return
    again = jobs.parse(jobs.dumps(job).encode("utf-8"))
    if again != job:
        raise AssertionError(f"parse(dumps(job)) != job: {again!r:.200} != {job!r:.200}")


if __name__ == "__main__":
    fuzz(test_one_input)
