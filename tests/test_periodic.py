"""Periodic jobs: rusty-sidekiq's members and cron dialect, exact claims against a real
redis-server, the beat scheduler in process and as real ``celery beat -S sidekiq`` processes,
and sidekiq.rb running what beat enqueued.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from celery.schedules import crontab, schedule
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from support.beat import Beats
from support.waiting import wait_for

import celery_sidekiq
from celery_sidekiq import periodic
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.keys import Keys
from kombu_sidekiq.periodic import CATCH_UP, Cron, Entry, InvalidCron, InvalidEntry, Periodic

UTC = timezone.utc


def at(*parts: int) -> int:
    """Epoch seconds of a UTC date-time."""
    return int(datetime(*parts, tzinfo=UTC).timestamp())


# -- members, byte for byte ------------------------------------------------------------------------

RUSTY_DEFAULT = (
    '{"name":"Scheduled PeriodicJob","class":"MyWorker","cron":"0 * * * * *",'
    '"queue":null,"args":null,"retry":null}'
)
RUSTY_WITH_ARGS = (
    '{"name":"Scheduled PeriodicJob","class":"MyWorker","cron":"0 * * * * *","queue":null,'
    '"args":"[{\\"user_guid\\":\\"USR-123\\"}]","retry":null}'
)


def test_members_are_rusty_sidekiqs_bytes() -> None:
    assert Entry("0 * * * * *", "MyWorker").member() == RUSTY_DEFAULT
    assert (
        Entry("0 * * * * *", "MyWorker", args=[{"user_guid": "USR-123"}]).member()
        == RUSTY_WITH_ARGS
    )
    full = Entry(
        "*/5 * * * * *",
        "Workers::Ü",
        name="n",
        queue="low",
        args=[1.0, {"b": 1, "a": 1e16}],
        retry=3,
    )
    assert full.member() == (
        '{"name":"n","class":"Workers::Ü","cron":"*/5 * * * * *","queue":"low",'
        '"args":"[1.0,{\\"a\\":1e16,\\"b\\":1}]","retry":3}'
    )


def test_members_parse_as_rusty_sidekiq_reads_them() -> None:
    assert Entry.parse(RUSTY_WITH_ARGS) == Entry(
        "0 * * * * *", "MyWorker", args=[{"user_guid": "USR-123"}]
    )
    # optional fields may be missing, unknown ones are ignored, a lone value is wrapped
    assert Entry.parse('{"name":"x","class":"C","cron":"@hourly","extra":1,"args":"5"}') == Entry(
        "@hourly", "C", name="x", args=[5]
    )
    for bad, reason in [
        ("nope", "not JSON"),
        ('["a"]', "JSON object"),
        ('{"name":"x","class":"C"}', "'cron'"),
        ('{"name":"x","class":"C","cron":"* * * * *"}', "5 fields"),
        ('{"name":"x","class":"C","cron":"@daily","args":[1]}', "string holding JSON"),
        ('{"name":"x","class":"C","cron":"@daily","args":"[1"}', "'args' is not JSON"),
        ('{"name":"x","class":"C","cron":"@daily","retry":-1}', "retry"),
    ]:
        with pytest.raises(InvalidEntry, match=reason):
            Entry.parse(bad)


def test_a_fire_builds_the_job_rusty_sidekiq_builds_in_a_form_all_can_run() -> None:
    job = Entry.parse(RUSTY_DEFAULT).job()
    assert (job["class"], job["queue"], job["retry"], job["args"]) == (
        "MyWorker",
        "default",
        False,
        [],
    )
    jobs.validate(job)
    assert isinstance(job["created_at"], float) and isinstance(job["enqueued_at"], float)
    job = Entry("@daily", "W", queue="low", args=[1], retry=5).job(version=8)
    assert (job["queue"], job["retry"], job["args"]) == ("low", 5, [1])
    assert isinstance(job["created_at"], int)  # Sidekiq 8: milliseconds


# -- the cron dialect ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("0 0 8 * * *", at(2026, 1, 1), at(2026, 1, 1, 8)),  # rusty-sidekiq's README example
        ("0 0 8 * * *", at(2026, 1, 1, 8), at(2026, 1, 2, 8)),  # strictly after
        ("* * * * * *", at(2026, 1, 1) + 0.7, at(2026, 1, 1) + 1),  # the next whole second
        ("*/15 * * * * *", at(2026, 1, 1, 0, 0, 15), at(2026, 1, 1, 0, 0, 30)),
        ("5/20 * * * * *", at(2026, 1, 1), at(2026, 1, 1, 0, 0, 5)),
        ("0 0 0 * * 1", at(2026, 1, 1), at(2026, 1, 4)),  # 1 is Sunday
        ("0 0 0 * * sun", at(2026, 1, 1), at(2026, 1, 4)),
        ("0 0 0 * * 7", at(2026, 1, 1), at(2026, 1, 3)),  # 7 is Saturday
        ("0 0 0 13 * 6", at(2026, 1, 1), at(2026, 2, 13)),  # Friday the 13th: AND, not OR
        ("0 0 0 13 * FRI", at(2026, 2, 14), at(2026, 3, 13)),
        ("0 0 12 ? JAN-Mar Mon-Fri", at(2026, 3, 31, 12), at(2027, 1, 1, 12)),
        ("0 30 9 1,15 * ?", at(2026, 1, 2), at(2026, 1, 15, 9, 30)),
        ("0 0 0 29 2 *", at(2026, 1, 1), at(2028, 2, 29)),
        ("0 0 0 1 1 * 2030", at(2026, 1, 1), at(2030, 1, 1)),
        ("@weekly", at(2026, 1, 1), at(2026, 1, 4)),
        ("@hourly", at(2026, 1, 1, 0, 0, 1), at(2026, 1, 1, 1)),
        ("@secondly", at(2026, 1, 1), at(2026, 1, 1, 0, 0, 1)),
    ],
)
def test_next_fire_times_follow_cron_clock(cron: str, after: float, expected: int) -> None:
    assert Cron.parse(cron).next_after(after) == expected


def test_a_cron_with_no_fire_left_has_no_next() -> None:
    assert Cron.parse("0 0 0 1 1 * 2020").next_after(at(2026, 1, 1)) is None
    assert Cron.parse("0 0 0 30 2 *").next_after(at(2026, 1, 1)) is None


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("0 * * * *", "puts seconds first: use 6 fields, such as '0 0 \\* \\* \\* \\*'"),
        ("* * * * * * * *", "has 8 fields"),
        ("0 0 0 * * 0", "outside 1-7 \\(Sunday = 1\\)"),
        ("60 * * * * *", "second '60' is outside 0-59"),
        ("? * * * * *", "only allowed in the day fields"),
        ("0 0 0 * * L", "not a day of week value"),
        ("0 0 0 5-1 * *", "runs backwards"),
        ("*/0 * * * * *", "step must be at least 1"),
        ("0 0 0 1 1 * 2100", "outside 1970-2099"),
    ],
)
def test_a_bad_cron_says_what_to_change(cron: str, message: str) -> None:
    with pytest.raises(InvalidCron, match=message):
        Cron.parse(cron)


def test_the_croniter_translation_moves_sunday_and_keeps_seconds_first() -> None:
    assert Cron.parse("0 0 8 * JAN-mar Mon-FRI").croniter_expression() == "0 0 8 * 1,2,3 1,2,3,4,5"
    assert Cron.parse("@weekly").croniter_expression() == "0 0 0 * * 0"
    assert Cron.parse("1 2 3 4 5 ? 2031").croniter_expression() == "1 2 3 4 5 * 2031"


def brute_next(cron: Cron, after: float, years: int = 29) -> int | None:
    """The next fire, found by walking days: independent of croniter. Day-of-week patterns
    repeat within 28 years between 1901 and 2099, so 29 years is an exhaustive horizon."""
    seconds, minutes, hours, doms, months, dows, _ = (sorted(v) for v in cron.values)
    start = datetime.fromtimestamp(math.floor(after), UTC)
    day = start.date()
    for _ in range(years * 366):
        if day.day in doms and day.month in months and day.isoweekday() % 7 + 1 in dows:
            found = _first_time(day, start, seconds, minutes, hours)
            if found is not None:
                return found
        day += timedelta(days=1)
    return None


def _first_time(
    day: date, start: datetime, seconds: list[int], minutes: list[int], hours: list[int]
) -> int | None:
    for h in hours:
        for m in minutes:
            for s in seconds:
                moment = datetime(day.year, day.month, day.day, h, m, s, tzinfo=UTC)
                if moment > start:
                    return int(moment.timestamp())
            if day == start.date() and (h, m) < (start.hour, start.minute):
                continue
        if day > start.date():
            break
    return None


def subset(low: int, high: int) -> st.SearchStrategy[str]:
    values = st.lists(st.integers(low, high), min_size=1, max_size=4, unique=True)
    return st.just("*") | values.map(lambda v: ",".join(map(str, sorted(v))))


crons = st.tuples(
    subset(0, 59),
    subset(0, 59),
    subset(0, 23),
    subset(1, 31),
    subset(1, 12),
    subset(1, 7) | st.just("?"),
).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(crons, st.integers(at(2000, 1, 1), at(2060, 1, 1)))
def test_next_fire_agrees_with_walking_the_calendar(cron: str, after: int) -> None:
    parsed = Cron.parse(cron)
    found = parsed.next_after(after)
    assert found == brute_next(parsed, after)
    if found is not None:
        assert found > after and parsed.matches(datetime.fromtimestamp(found, UTC))


# -- Celery schedules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "cron"),
    [
        (crontab(), "0 * * * * *"),
        (crontab(minute=0, hour=3), "0 0 3 * * *"),
        (crontab(minute="*/15", hour="9-17", day_of_week="mon-fri"), "0 0,15,30,45 9-17 * * 2-6"),
        (crontab(minute=0, hour=0, day_of_week="sun"), "0 0 0 * * 1"),
        (
            crontab(minute=0, hour=0, day_of_month="1,2,3,15", month_of_year="*/3"),
            "0 0 0 1-3,15 1,4,7,10 *",
        ),
        (crontab(minute="1,2"), "0 1,2 * * * *"),
        (1, "* * * * * *"),
        (10.0, "*/10 * * * * *"),
        (timedelta(minutes=1), "0 * * * * *"),
        (timedelta(minutes=20), "0 */20 * * * *"),
        (timedelta(hours=6), "0 0 */6 * * *"),
        (timedelta(days=1), "0 0 0 * * *"),
        (timedelta(weeks=1), "0 0 0 * * 1"),
        ("*/2 * * * * *", "*/2 * * * * *"),
    ],
)
def test_celery_schedules_become_seconds_first_crons(schedule: Any, cron: str) -> None:
    assert periodic.cron_for(schedule) == cron


class Custom(schedule):  # type: ignore[misc]
    """A schedule subclass, as solar or a user's own: its is_due may decide anything."""


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (7, "every 7 s cannot be a cron"),
        (90, "every 90 s cannot be a cron"),
        (1.5, "every 1.5 s cannot be a cron"),
        (timedelta(days=2), "every 172800 s cannot be a cron"),
        (Custom(timedelta(seconds=10)), "use a crontab"),  # a schedule of its own: is_due decides
        ("* * * * *", "5 fields"),
    ],
)
def test_schedules_a_cron_cannot_express_are_refused(schedule: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        periodic.cron_for(schedule)


@given(
    st.sets(st.integers(0, 59), min_size=1),
    st.sets(st.integers(0, 23), min_size=1),
    st.sets(st.integers(0, 6), min_size=1),
    st.sets(st.integers(1, 31), min_size=1),
    st.sets(st.integers(1, 12), min_size=1),
)
def test_a_crontab_keeps_every_field_with_sunday_moved_to_1(
    minutes: set[int], hours: set[int], dows: set[int], doms: set[int], months: set[int]
) -> None:
    fields = (",".join(map(str, sorted(v))) for v in (minutes, hours, dows, doms, months))
    try:
        spec = crontab(*fields)
    except ValueError:  # celery refuses days no month has ("30" in February): nothing to write
        assume(False)
    parsed = Cron.parse(periodic.cron_for(spec))
    assert parsed.values[:6] == tuple(
        map(frozenset, ({0}, minutes, hours, doms, months, {d + 1 for d in dows}))
    )


@pytest.fixture
def app(broker_url: str) -> Iterator[Celery]:
    app = Celery("periodic-app", broker=broker_url)
    celery_sidekiq.setup(app)
    app.conf.task_routes = {"report.*": {"queue": "reports"}}

    @app.task(name="Workers::Tick", shared=False)
    def tick(*args: Any) -> None:
        """Runs in a worker, never here."""

    @app.task(name="report.build", sidekiq_class="PaymentReportWorker", shared=False)
    def report(*args: Any) -> None:
        """Runs in a worker, never here."""

    yield app
    app.close()


def test_beat_schedule_entries_are_translated_and_bad_ones_named(app: Celery) -> None:
    app.conf.beat_schedule = {
        "tick": {"task": "Workers::Tick", "schedule": 5.0},
        "report": {
            "task": "report.build",
            "schedule": crontab(0, 3),
            "args": (7,),
            "options": {"sidekiq_retry": 2},
        },
        "ruby": {"task": "RubyRecorder", "schedule": 60, "args": [], "options": {"queue": "low"}},
    }
    assert [e.member() for e in periodic.entries_for(app)] == [
        '{"name":"tick","class":"Workers::Tick","cron":"*/5 * * * * *",'
        '"queue":null,"args":null,"retry":null}',
        '{"name":"report","class":"PaymentReportWorker","cron":"0 0 3 * * *",'
        '"queue":"reports","args":"[7]","retry":2}',
        '{"name":"ruby","class":"RubyRecorder","cron":"0 * * * * *",'
        '"queue":"low","args":"[]","retry":null}',
    ]
    for spec, message in [
        ({"task": "T", "schedule": 7}, "beat_schedule\\['bad'\\]: every 7 s"),
        ({"task": "T", "schedule": 5, "kwargs": {"a": 1}}, "positional args only"),
        (
            {"task": "T", "schedule": 5, "options": {"expires": 10}},
            "\\['expires'\\] cannot be stored",
        ),
        ({"task": "T", "schedule": 5, "args": "abc"}, "args must be a list"),
        ({"task": "T", "schedule": 5, "options": {"sidekiq_retry": -1}}, "retry must be"),
    ]:
        app.conf.beat_schedule = {"bad": spec}
        with pytest.raises(ValueError, match=message):
            periodic.entries_for(app)


def test_crontabs_need_a_utc_app(broker_url: str) -> None:
    app = Celery("berlin", broker=broker_url)
    app.conf.timezone = "Europe/Berlin"
    with pytest.raises(ValueError, match="timezone is Europe/Berlin; set timezone='UTC'"):
        periodic.cron_for(crontab(0, 8), app)
    assert periodic.cron_for(30, app) == "*/30 * * * * *"  # intervals do not depend on it


# -- claims in Redis -------------------------------------------------------------------------------


def fired(redis: redis_lib.Redis, queue: str = "default") -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in reversed(redis.lrange(f"queue:{queue}", 0, -1))]


def score(redis: redis_lib.Redis, member: str, key: str = "periodic") -> float | None:
    return redis.zscore(key, member)


def test_a_due_rusty_entry_fires_once_and_moves_to_its_next_fire(redis: redis_lib.Redis) -> None:
    t = at(2026, 1, 1, 12)
    redis.zadd("periodic", {RUSTY_DEFAULT: t})  # as rusty-sidekiq registers: every minute at :00
    (fire,) = Periodic(Client(redis)).enqueue_due(now=t + 5)
    assert score(redis, RUSTY_DEFAULT) == t + 60
    (job,) = fired(redis)
    assert (job["class"], job["args"], job["retry"], job["jid"]) == (
        "MyWorker",
        [],
        False,
        fire.jid,
    )
    assert fire.at == t and redis.smembers("queues") == {b"default"}
    assert Periodic(Client(redis)).enqueue_due(now=t + 30) == []


def test_a_compare_and_set_on_the_read_score_lets_one_claimer_win(redis: redis_lib.Redis) -> None:
    t = at(2026, 1, 1)
    redis.zadd("periodic", {RUSTY_DEFAULT: t})
    a, b = Periodic(Client(redis)), Periodic(Client(redis))
    entry, member = Entry.parse(RUSTY_DEFAULT), RUSTY_DEFAULT.encode()
    assert a._claim(entry, member, float(t), t + 1) is not None
    assert b._claim(entry, member, float(t), t + 1) is None  # read t, but t is gone
    assert len(fired(redis)) == 1


def test_late_fires_are_each_enqueued_once_and_an_outage_costs_one_job(
    redis: redis_lib.Redis,
) -> None:
    client, t = Client(redis), at(2026, 1, 1)
    late = Entry("* * * * * *", "Late", name="late").member()
    down = Entry("* * * * * *", "Down", name="down").member()
    redis.zadd("periodic", {late: t - 5, down: t - CATCH_UP - 3600})
    fires = Periodic(client).enqueue_due(now=t)
    assert sorted(f.at for f in fires if f.entry.klass == "Late") == [
        float(t - n) for n in range(5, -1, -1)
    ]
    assert [f.at for f in fires if f.entry.klass == "Down"] == [float(t - CATCH_UP - 3600)]
    assert score(redis, late) == score(redis, down) == t + 1


def test_claimers_with_skewed_clocks_enqueue_each_fire_time_once(redis: redis_lib.Redis) -> None:
    member = Entry("*/2 * * * * *", "Skew").member()
    t0 = at(2026, 1, 1)
    redis.zadd("periodic", {member: t0})
    clocks = [(Periodic(Client(redis)), skew) for skew in (0.0, 7.3, -4.1, 30.0)]
    for step in range(120):  # a minute, each claimer polling every half second on its own clock
        for claimer, skew in clocks:
            claimer.enqueue_due(now=t0 + step / 2 + skew)
    jobs_ = fired(redis)
    last = score(redis, member)
    assert last is not None and last >= t0 + 60
    assert len(jobs_) == (last - t0) / 2  # one job per fire time from t0 up to the current score
    assert len({j["jid"] for j in jobs_}) == len(jobs_)


def test_racing_claimers_fire_a_backlog_exactly_once(
    redis: redis_lib.Redis, redis_server: Any
) -> None:
    t = at(2026, 1, 1)
    member = Entry("* * * * * *", "Race").member()
    redis.zadd("periodic", {member: t - 40})
    barrier = threading.Barrier(12)
    counts: list[int] = []

    def claim() -> None:
        claimer = Periodic(Client(redis_server.client()))
        barrier.wait()
        counts.append(len(claimer.enqueue_due(now=t)))

    threads = [threading.Thread(target=claim) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(counts) == 41 == redis.llen("queue:default")
    assert score(redis, member) == t + 1


def test_invalid_members_are_moved_aside_logged_once_and_kept(
    redis: redis_lib.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    t = at(2026, 1, 1)
    bad = {"not json": t - 10, '{"name":"x","class":"C","cron":"* * * * *"}': t - 10}
    redis.zadd("periodic", {**bad, RUSTY_DEFAULT: t})
    claimer = Periodic(Client(redis))
    assert len(claimer.enqueue_due(now=t + 1)) == 1
    assert len(claimer.enqueue_due(now=t + 2)) == 0
    assert [m for m, _ in claimer.entries()] == [RUSTY_DEFAULT.encode()]
    invalid = claimer.invalid()  # byte for byte, with the reason and the score they had
    assert {m.decode(): float(r["score"]) for m, r in invalid.items()} == bad
    assert "not JSON" in invalid[b"not json"]["reason"]
    assert sum("moved an invalid entry" in r.getMessage() for r in caplog.records) == 2
    assert claimer.next_due(now=t + 2) == t + 60


def test_an_entry_with_no_fire_left_is_parked_at_infinity(redis: redis_lib.Redis) -> None:
    member = Entry("0 0 0 1 1 * 2030", "Once").member()
    redis.zadd("periodic", {member: at(2030, 1, 1)})
    assert len(Periodic(Client(redis)).enqueue_due(now=at(2030, 1, 1, 0, 0, 1))) == 1
    assert score(redis, member) == math.inf


def test_register_writes_the_same_member_as_rust_and_keeps_a_scheduled_score(
    app: Celery, redis: redis_lib.Redis
) -> None:
    member = periodic.register(app, "0 * * * * *", "MyWorker")
    assert member == RUSTY_DEFAULT
    first = score(redis, RUSTY_DEFAULT)
    assert first is not None and first % 60 == 0
    redis.zadd("periodic", {RUSTY_DEFAULT: first - 60})  # say it is due now
    periodic.register(app, "0 * * * * *", "MyWorker")
    assert score(redis, RUSTY_DEFAULT) == first - 60  # not moved: the claim decides

    member = periodic.register(
        app, crontab(minute=30), app.tasks["report.build"], args=(1, "x"), retry=True
    )
    assert json.loads(member) == {
        "name": "Scheduled PeriodicJob",
        "class": "PaymentReportWorker",
        "cron": "0 30 * * * *",
        "queue": "reports",
        "args": '[1,"x"]',
        "retry": True,
    }
    with pytest.raises(ValueError, match="5 fields"):
        periodic.register(app, "* * * * *", "MyWorker")
    periodic.destroy_all(app)
    assert redis.exists("periodic") == 0


def test_a_namespace_prefixes_the_zset_and_the_queues(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    app = Celery("ns", broker=broker_url)
    celery_sidekiq.setup(app, namespace="tenant")
    periodic.register(app, "* * * * * *", "MyWorker")
    assert redis.keys("*") == [b"tenant:periodic"]
    ((_, due),) = redis.zrange("tenant:periodic", 0, -1, withscores=True)
    Periodic(Client(redis, Keys("tenant"))).enqueue_due(now=due)
    assert redis.llen("tenant:queue:default") == 1
    app.close()


def test_the_scheduler_writes_beat_schedule_replaces_edited_entries_and_fires(
    app: Celery, redis: redis_lib.Redis
) -> None:
    foreign = Entry("0 0 0 * * *", "RustOnly", name="rusty").member()
    redis.zadd("periodic", {foreign: at(2099, 1, 1)})
    app.conf.beat_schedule = {"tick": {"task": "Workers::Tick", "schedule": 10.0, "args": [1]}}
    periodic.Scheduler(app=app).close()
    app.conf.beat_schedule = {"tick": {"task": "Workers::Tick", "schedule": 1.0, "args": [1]}}
    scheduler = periodic.Scheduler(app=app)
    members = {m.decode() for m, _ in Periodic(Client(redis)).entries()}
    assert members == {
        foreign,
        Entry("* * * * * *", "Workers::Tick", name="tick", args=[1]).member(),
    }
    assert 0 < scheduler.tick() <= 1.0

    def ticked_and_fired() -> bool:
        scheduler.tick()
        return bool(redis.llen("queue:default"))

    wait_for(ticked_and_fired, timeout=5, message="a fire within a second or two")
    (job, *_) = fired(redis)
    assert (job["class"], job["args"], job["retry"]) == ("Workers::Tick", [1], False)
    scheduler.close()


def test_the_beat_scheduler_alias_is_installed() -> None:
    from celery.utils.imports import load_extension_class_names

    assert (
        dict(load_extension_class_names("celery.beat_schedulers"))["sidekiq"]
        == "celery_sidekiq.periodic:Scheduler"
    )


# -- real `celery beat -S sidekiq` processes -------------------------------------------------------


@pytest.fixture
def beats(broker_url: str, tmp_path: Path) -> Iterator[Beats]:
    """Start real beats on the test's Redis; they are stopped at teardown."""
    group = Beats(broker_url, tmp_path)
    yield group
    group.stop()


@pytest.mark.worker
def test_three_beats_enqueue_each_fire_of_a_one_second_cron_once(
    beats: Beats, redis: redis_lib.Redis
) -> None:
    schedule = {"every-second": {"task": "Workers::Tick", "every": 1, "args": ["tick"]}}
    member = Entry("* * * * * *", "Workers::Tick", name="every-second", args=["tick"]).member()
    Periodic(Client(redis)).add(Entry.parse(member))  # the first fire time is known up front
    first = score(redis, member)
    assert first is not None
    started = beats(schedule, count=3)
    wait_for(
        lambda: (score(redis, member) or 0) >= first + 12,
        timeout=40,
        message=f"12 fires\n{beats.logs()}",
    )
    for beat in started:
        beat.stop()
    last = score(redis, member)
    assert last is not None
    enqueued = fired(redis)
    assert redis.zcard("periodic") == 1  # all three beats wrote the very same member
    assert len(enqueued) == last - first >= 12, beats.logs()  # one job per fire time, none skipped
    assert len({j["jid"] for j in enqueued}) == len(enqueued)
    assert {(j["class"], tuple(j["args"]), j["retry"]) for j in enqueued} == {
        ("Workers::Tick", ("tick",), False)
    }
    assert sum(beat.fires() for beat in started) == len(enqueued)


@pytest.mark.interop
def test_sidekiq_rb_runs_what_beat_enqueued_for_its_own_and_rusty_entries(
    sidekiq_rb: str, beats: Beats, sidekiq_process: Any, redis: redis_lib.Redis
) -> None:
    sidekiq_process()
    # An entry as rusty-sidekiq writes it: null args, no queue, no retry.
    rusty = (
        '{"name":"rusty","class":"RubyRecorder","cron":"* * * * * *",'
        '"queue":null,"args":null,"retry":null}'
    )
    redis.zadd("periodic", {rusty: int(datetime.now(UTC).timestamp()) + 1})
    beats({"ruby": {"task": "RubyRecorder", "every": 1, "args": [1, "two", {"three": 3.5}]}})

    def seen() -> set[str]:
        return {
            json.dumps(json.loads(r)["args"]) for r in redis.lrange("results:RubyRecorder", 0, -1)
        }

    expected = {"[]", '[1, "two", {"three": 3.5}]'}
    wait_for(lambda: seen() >= expected, timeout=20, message=f"both ran in Ruby\n{beats.logs()}")
    assert redis.zcard("dead") == 0 and redis.zcard("retry") == 0
