"""The sidekiq:// transport against a real redis-server, through kombu's public API.

These are the contract tests for the kombu internals ``kombu_sidekiq.transport`` overrides: if a
kombu 5.7.x release changes one of them, a test here fails.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis as redis_lib
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

import kombu_sidekiq  # noqa: F401  (registers sidekiq://)
from kombu_sidekiq import codec
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.keys import Keys
from kombu_sidekiq.transport import _PUBLISH_OPTIONS, Channel


def task_message(
    channel: Any, task: str, args: list[Any], kwargs: dict[str, Any] | None = None, **headers: Any
) -> Any:
    sample = codec.sample_message(task, args, kwargs)
    sample["headers"].update(headers)
    return channel.prepare_message(
        sample["body"], 0, "application/json", "utf-8", sample["headers"], sample["properties"]
    )


@pytest.fixture
def connection(broker_url: str) -> Iterator[Connection]:
    with Connection(broker_url) as conn:
        yield conn


def publish(channel: Any, message: Any, queue: str) -> None:
    channel.basic_publish(message, exchange="", routing_key=queue)


def test_the_overridden_kombu_internals_still_exist_with_the_same_shape() -> None:
    base = kombu_redis.Channel
    expected = {
        "_brpop_start": ["self", "timeout"],
        "_brpop_read": ["self", "options"],
        "_get": ["self", "queue"],
        "_put": ["self", "queue", "message", "kwargs"],
        "_q_for_pri": ["self", "queue", "pri"],
        "_size": ["self", "queue"],
        "_purge": ["self", "queue"],
        "_has_queue": ["self", "queue", "kwargs"],
        "_restore": ["self", "message", "leftmost"],
        "basic_consume": ["self", "queue", "args", "kwargs"],
        "_flush_brpop_reauth": ["self"],
        "_create_client": ["self", "asynchronous"],
    }
    for name, params in expected.items():
        assert list(inspect.signature(getattr(base, name)).parameters) == params, name
    for attr in (
        "keyprefix_queue",
        "keyprefix_binding_permanent",
        "keyprefix_binding_deadlines",
        "from_transport_options",
        "auto_delete_queues",
    ):
        assert hasattr(base, attr) or attr == "auto_delete_queues", attr
    assert list(inspect.signature(virtual.QoS.restore_unacked).parameters) == ["self"]
    assert "self._quick_ack = self._dirty.add" in inspect.getsource(virtual.QoS.__init__)
    assert list(inspect.signature(virtual.QoS.can_consume_max_estimate).parameters) == ["self"]
    assert "_restore_at_beginning(self._delivered[delivery_tag])" in inspect.getsource(
        virtual.QoS.reject
    )
    assert "_brpop_start()" in inspect.getsource(kombu_redis.MultiChannelPoller._register_BRPOP)
    assert "_publish_batch" in inspect.getsource(base._put)
    assert "connection._deliver" in inspect.getsource(base._brpop_read)


def test_the_producer_internals_the_direct_way_reads_still_exist() -> None:
    # Every keyword of Producer.publish is known, so none is taken for a message property.
    keywords = set(inspect.signature(kombu.Producer.publish).parameters)
    assert keywords - {"self", "body", "properties"} == set(_PUBLISH_OPTIONS)
    # Inside `with producer.batch()`, kombu publishes through the batch: the direct way steps
    # aside while one is open.
    with Connection("memory://") as conn:
        producer = kombu.Producer(conn)
        with producer.batch():
            assert getattr(producer._batch_local, "current", None) is not None
        assert getattr(producer._batch_local, "current", None) is None


def test_a_task_message_is_written_as_a_sidekiq_job(
    connection: Connection, redis: redis_lib.Redis
) -> None:
    channel = connection.default_channel
    publish(channel, task_message(channel, "Workers::Hard", [1, "x"]), "critical")
    assert redis.smembers("queues") == {b"critical"}
    (raw,) = redis.lrange("queue:critical", 0, -1)
    job = jobs.parse(raw)
    assert (job["class"], job["args"], job["queue"], job["retry"]) == (
        "Workers::Hard",
        [1, "x"],
        "critical",
        True,
    )
    assert set(job) >= {"jid", "created_at", "enqueued_at"}


def test_other_messages_stay_kombu_envelopes_out_of_sidekiqs_sight(
    connection: Connection, redis: redis_lib.Redis
) -> None:
    channel = connection.default_channel
    reply = channel.prepare_message(
        '{"ok": 1}', 0, "application/json", "utf-8", {"ticket": "t"}, {}
    )
    publish(channel, reply, "abc.reply.celery.pidbox")
    assert redis.smembers("queues") == set()
    assert redis.keys("queue:*") == []
    assert redis.llen("abc.reply.celery.pidbox") == 1
    message = channel.basic_get("abc.reply.celery.pidbox", no_ack=True)
    assert json.loads(message.body) == {"ok": 1}


def test_a_job_arrives_as_a_celery_message_and_its_ack_clears_it(
    connection: Connection, redis: redis_lib.Redis
) -> None:
    Client(redis).push(jobs.build("Workers::Hard", [1, {"a": "b"}], jid="c65c0a3b81d5e7e3c5a748cf"))
    channel = connection.default_channel
    message = channel.basic_get("default")
    assert message.headers["task"] == "Workers::Hard"
    assert message.headers["id"] == "c65c0a3b81d5e7e3c5a748cf"
    assert json.loads(message.body)[0] == [1, {"a": "b"}]
    inflight = channel.fetcher.inflight("default")
    assert redis.hlen(inflight) == 1 and redis.llen("queue:default") == 0
    message.ack()
    channel.fetcher.flush_acks()  # acks ride along with the next fetch; flush for the test
    assert redis.hlen(inflight) == 0 and redis.llen("queue:default") == 0


def test_a_second_ack_of_a_delivery_never_frees_the_job_that_took_over_its_field(
    connection: Connection, redis: redis_lib.Redis
) -> None:
    client = Client(redis)
    client.push(jobs.build("A", [1]))
    channel = connection.default_channel
    first = channel.basic_get("default")
    channel.basic_ack(first.delivery_tag)
    client.push(jobs.build("A", [2]))
    # The next fetch gives the acknowledged job's field to the new one; kombu forgets the old
    # delivery only when it records the new one, so a second ack can come in between (a
    # threads pool acks from its threads).
    (second,) = channel.fetcher.fetch(["default"], 1)
    assert second.tag == first.properties["sidekiq_tag"]
    channel.basic_ack(first.delivery_tag)
    channel.basic_reject(first.delivery_tag, requeue=False)
    channel.fetcher.flush_acks()
    inflight = channel.fetcher.inflight("default")
    assert [jobs.parse(raw)["args"] for raw in redis.hvals(inflight)] == [[2]]
    assert redis.zcard("dead") == 0


def test_an_unacked_job_goes_back_to_the_head_of_its_queue_byte_for_byte(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    raw = '{"class":"A","args":[1],"queue":"default","jid":"c65c0a3b81d5e7e3c5a748cf","retry":true,"created_at":1.5,"bid":"x","cattr":{"u":1}}'
    redis.lpush("queue:default", raw)
    redis.lpush("queue:default", jobs.dumps(jobs.build("B", [])))
    with Connection(broker_url) as conn:
        assert conn.default_channel.basic_get("default") is not None  # held, never acked
    # the channel closed: kombu restored what it held, to the head (the BRPOP end)
    assert redis.lindex("queue:default", -1) == raw.encode()
    assert redis.llen("queue:default") == 2


def test_reject_with_requeue_puts_the_job_at_the_back(
    connection: Connection, redis: redis_lib.Redis
) -> None:
    first, second = (jobs.dumps(jobs.build(k, [])) for k in "AB")
    redis.lpush("queue:default", first, second)
    message = connection.default_channel.basic_get("default")
    assert json.loads(message.properties[codec.RAW_JOB_PROPERTY])["class"] == "A"
    message.reject(requeue=True)
    assert redis.lrange("queue:default", 0, -1) == [first.encode(), second.encode()]


def test_eta_goes_to_the_schedule_zset_without_enqueued_at(
    connection: Connection, redis: redis_lib.Redis
) -> None:
    channel = connection.default_channel
    eta = time.time() + 60
    from datetime import datetime, timezone

    publish(
        channel,
        task_message(channel, "A", [1], eta=datetime.fromtimestamp(eta, timezone.utc).isoformat()),
        "default",
    )
    assert redis.llen("queue:default") == 0
    ((raw, score),) = redis.zrange("schedule", 0, -1, withscores=True)
    assert score == pytest.approx(eta, abs=0.001)
    assert "enqueued_at" not in jobs.parse(raw)


def test_a_past_eta_is_enqueued_at_once(connection: Connection, redis: redis_lib.Redis) -> None:
    channel = connection.default_channel
    publish(channel, task_message(channel, "A", [1], eta="2001-01-01T00:00:00+00:00"), "default")
    assert redis.llen("queue:default") == 1
    assert redis.zcard("schedule") == 0


@pytest.mark.parametrize(
    "payload", [b"{not json", b"[1,2]", b'{"class":"A","args":"no"}', b'{"args":[]}']
)
def test_a_malformed_payload_goes_to_the_dead_set_and_the_next_job_is_delivered(
    connection: Connection, redis: redis_lib.Redis, payload: bytes
) -> None:
    good = jobs.dumps(jobs.build("Good", [1]))
    redis.lpush("queue:default", payload, good)  # BRPOP takes the payload first
    received: list[Any] = []
    queue = Queue("default", Exchange("default"), "default")
    with Consumer(
        connection.default_channel,
        [queue],
        callbacks=[lambda body, m: received.append(m)],
        accept=["json"],
    ):
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                connection.drain_events(timeout=1)
    assert [m.headers["task"] for m in received] == ["Good"]
    assert redis.zrange("dead", 0, -1) == [payload]


def test_queue_delete_never_deletes_a_sidekiq_list_and_purge_empties_it(
    connection: Connection, redis: redis_lib.Redis
) -> None:
    Client(redis).push(jobs.build("A", []))
    channel = connection.default_channel
    channel.queue_declare("default")
    channel.queue_delete("default")
    assert redis.llen("queue:default") == 1
    assert channel.queue_purge("default") == 1
    assert redis.llen("queue:default") == 0


def test_namespace_prefixes_every_key(broker_url: str, redis: redis_lib.Redis) -> None:
    with Connection(broker_url, transport_options={"namespace": "ns"}) as conn:
        channel = conn.default_channel
        publish(channel, task_message(channel, "A", [1]), "default")
        publish(
            channel, task_message(channel, "A", [2], eta="2099-01-01T00:00:00+00:00"), "default"
        )
        assert redis.smembers("ns:queues") == {b"default"}
        assert redis.llen("ns:queue:default") == 1
        assert redis.zcard("ns:schedule") == 1
        channel.basic_get("default")
        assert redis.hlen(channel.fetcher.inflight("default")) == 1
        assert channel.fetcher.inflight("default").startswith("ns:")
    assert not [k for k in redis.keys("*") if not k.startswith(b"ns:")]


def test_global_keyprefix_is_refused_with_what_to_use_instead(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    with (
        Connection(broker_url, transport_options={"global_keyprefix": "x:"}) as conn,
        pytest.raises(ValueError, match="namespace"),
    ):
        conn.default_channel  # noqa: B018


def test_sidekiq_8_writes_millisecond_timestamps(broker_url: str, redis: redis_lib.Redis) -> None:
    with Connection(broker_url, transport_options={"sidekiq_version": 8}) as conn:
        channel = conn.default_channel
        publish(channel, task_message(channel, "A", []), "default")
    job = jobs.parse(redis.lindex("queue:default", 0))
    assert isinstance(job["created_at"], int) and isinstance(job["enqueued_at"], int)
    assert jobs.to_epoch_seconds(job["created_at"]) == pytest.approx(time.time(), abs=5)


def test_batch_publishing_writes_jobs_in_one_pipeline(
    connection: Connection, redis: redis_lib.Redis
) -> None:
    producer = Producer(connection.default_channel)
    channel = connection.default_channel
    batch = channel.create_publish_batch(100)
    for n in range(3):
        batch.publish(task_message(channel, "A", [n]), exchange="", routing_key="default")
    assert redis.llen("queue:default") == 0
    batch.flush()
    assert [jobs.parse(r)["args"] for r in redis.lrange("queue:default", 0, -1)] == [[2], [1], [0]]
    assert producer is not None


def test_pickle_never_reaches_redis(connection: Connection, redis: redis_lib.Redis) -> None:
    channel = connection.default_channel
    sample = codec.sample_message("A", [1])
    message = channel.prepare_message(
        b"\x80\x04K\x01.", 0, "application/x-python-serialize", "binary", sample["headers"], {}
    )
    with pytest.raises(codec.CodecError, match="JSON only"):
        publish(channel, message, "default")
    assert redis.keys("*") == []


def test_promotion_moves_due_jobs_keeping_every_other_key(redis: redis_lib.Redis) -> None:
    client = Client(redis)
    raw = '{"class":"A","args":[1],"queue":"low","jid":"c65c0a3b81d5e7e3c5a748cf","retry":3,"created_at":1700000000.5,"bid":"b-1","tags":["x"],"n":1.25}'
    redis.zadd("schedule", {raw: time.time() - 1, "later": time.time() + 60})
    redis.zadd("retry", {jobs.dumps(jobs.build("R", [], queue="default")): time.time() - 1})
    assert client.enqueue_due() == 2
    moved = json.loads(redis.lindex("queue:low", 0))
    original = json.loads(raw)
    assert {k: v for k, v in moved.items() if k != "enqueued_at"} == original
    assert list(moved)[: len(original)] == list(original)
    assert isinstance(moved["enqueued_at"], float)
    assert redis.smembers("queues") == {b"low", b"default"}
    assert redis.zrange("schedule", 0, -1) == [b"later"]


def test_an_unreadable_scheduled_member_is_buried_not_lost(redis: redis_lib.Redis) -> None:
    redis.zadd("schedule", {"{broken": time.time() - 1})
    assert Client(redis).enqueue_due() == 0
    assert redis.zrange("dead", 0, -1) == [b"{broken"]
    assert redis.zcard("schedule") == 0


def test_racing_pollers_promote_each_job_exactly_once(
    redis_server: Any, redis: redis_lib.Redis
) -> None:
    due = time.time() - 1
    redis.zadd(
        "schedule", {jobs.dumps(jobs.build("A", [n], scheduled=True)): due for n in range(500)}
    )
    counts: list[int] = []
    barrier = threading.Barrier(4)

    def poll() -> None:
        client = Client(redis_server.client())
        barrier.wait()
        counts.append(client.enqueue_due())

    threads = [threading.Thread(target=poll) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 500
    assert sorted(jobs.parse(r)["args"][0] for r in redis.lrange("queue:default", 0, -1)) == list(
        range(500)
    )


def test_the_namespaced_client_keeps_to_its_namespace(redis: redis_lib.Redis) -> None:
    client = Client(redis, Keys("app"))
    client.schedule(jobs.build("A", []), time.time() - 1)
    assert client.enqueue_due() == 1
    assert redis.llen("app:queue:default") == 1


def test_channel_options_are_kombu_transport_options() -> None:
    assert {"namespace", "sidekiq_version", "sidekiq_registry"} <= set(
        Channel.from_transport_options
    )
