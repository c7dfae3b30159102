"""Fuzz the periodic member and cron parsers (``kombu_sidekiq.periodic``).

An input starting with ``{`` is a ``periodic`` ZSET member: ``Entry.parse`` must return an
entry or raise ``InvalidEntry``; an entry's member must write as UTF-8 and read back as the same
entry, and the job one fire enqueues must write back and pass ``job.parse``. Any other input is
a cron expression: ``Cron.parse`` must return or raise ``InvalidCron``. For every cron parsed
either way, the next fire after a fixed moment must be an int the cron matches, or None.
"""

from __future__ import annotations

from datetime import datetime, timezone

from _harness import fuzz, instrumented

with instrumented():
    from kombu_sidekiq import job as jobs
    from kombu_sidekiq import periodic

MOMENT = 1767225600  # 2026-01-01T00:00:00Z


def check_cron(cron: periodic.Cron) -> None:
    cron.croniter_expression()
    found = cron.next_after(MOMENT)
    if found is None:
        return
    if type(found) is not int or found <= MOMENT:
        raise AssertionError(f"{cron.source!r}: next_after gave {found!r}")
    when = datetime.fromtimestamp(found, timezone.utc)
    if not cron.matches(when):
        raise AssertionError(f"{cron.source!r}: next fire {when} does not match the cron")
    periodic.next_score(cron, float(found), float(found + 30))


def test_one_input(data: bytes) -> None:
    if not data.startswith(b"{"):
        try:
            cron = periodic.Cron.parse(data.decode("utf-8", "replace"))
        except periodic.InvalidCron:
            return
        check_cron(cron)
        return
    try:
        entry = periodic.Entry.parse(data)
    except periodic.InvalidEntry:
        return
    member = entry.member()
    again = periodic.Entry.parse(member.encode("utf-8"))
    if again != entry:
        raise AssertionError(f"member does not read back: {again!r:.200} != {entry!r:.200}")
    jobs.parse(jobs.dumps(entry.job()).encode("utf-8"))
    check_cron(entry.schedule)


if __name__ == "__main__":
    fuzz(test_one_input)
