"""The fault proxy (tests/support/faultproxy.py) against a real redis-server: it passes
everything through, and each fault does what it says."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_lib
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry
from support.faultproxy import FaultProxy, parse_request, reply_end
from support.redis_server import RedisServer
from support.waiting import wait_for

LOST = (redis_lib.ConnectionError, redis_lib.TimeoutError)


@pytest.fixture
def proxy(redis_server: RedisServer, redis: redis_lib.Redis) -> Iterator[FaultProxy]:
    with FaultProxy(redis_server.port) as proxy:
        yield proxy


def through(proxy: FaultProxy, timeout: float = 2.0) -> redis_lib.Redis:
    """A client of the proxy that never retries: every fault reaches the test."""
    return redis_lib.Redis(
        host="127.0.0.1", port=proxy.port, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


def test_everything_passes_through_byte_for_byte(proxy: FaultProxy, redis: redis_lib.Redis) -> None:
    client = through(proxy)
    big = bytes(range(256)) * 8192  # 2 MiB, every byte value, CR LF included
    assert client.set("big", big)
    assert client.get("big") == big
    with client.pipeline(transaction=True) as pipe:
        for n in range(500):
            pipe.rpush("list", f"item {n}\r\n")
        pipe.lrange("list", 0, -1)
        replies = pipe.execute()
    assert replies[-1] == [f"item {n}\r\n".encode() for n in range(500)]
    assert client.execute_command("EVAL", "return {1, {2, 'x'}, redis.status_reply('OK')}", 0) == [
        1,
        [2, b"x"],
        b"OK",
    ]
    with pytest.raises(redis_lib.ResponseError):
        client.execute_command("NOSUCHCOMMAND")
    assert client.ping()
    counters = proxy.counters
    assert counters.by_command["RPUSH"] == 500
    assert counters.commands == counters.replies
    assert counters.accepted == counters.open == 1
    assert counters.dropped == counters.cut == counters.delayed == 0
    assert redis.get("big") == big


def test_a_dropped_reply_is_run_but_never_answered(
    proxy: FaultProxy, redis: redis_lib.Redis
) -> None:
    client = through(proxy, timeout=1)
    rule = proxy.drop_reply(r"INCRBY\b")  # redis-py sends INCR as INCRBY n 1
    with pytest.raises(redis_lib.TimeoutError):
        client.incr("n")
    assert rule.wait(0) and rule.hits == 1 and not rule.armed
    assert rule.commands == [b"INCRBY n 1"]
    assert redis.get("n") == b"1"  # the server ran it
    assert through(proxy).incr("n") == 2  # one drop only: the rule is spent
    assert proxy.counters.dropped == 1
    assert proxy.rules == []


def test_a_drop_can_skip_matches_and_look_at_the_reply(
    proxy: FaultProxy, redis: redis_lib.Redis
) -> None:
    redis.rpush("jobs", "a", "b")
    # drop the reply of the second RPOP that finds something
    found = lambda raw: raw[:1] == b"$" and raw != b"$-1\r\n"  # noqa: E731 (RESP2 or 3 nil)
    rule = proxy.drop_reply("RPOP", reply=found, skip=1)
    client = through(proxy, timeout=0.5)
    assert client.rpop("empty") is None  # no job: not a candidate
    assert client.rpop("jobs") == b"b"  # skipped
    with pytest.raises(redis_lib.TimeoutError):
        client.rpop("jobs")
    assert rule.hits == 1 and redis.llen("jobs") == 0


def test_replies_are_delayed_in_order(proxy: FaultProxy) -> None:
    client = through(proxy, timeout=5)
    client.ping()  # connected before the delay: only the commands below wait
    with proxy.delaying(300):
        started = time.monotonic()
        with client.pipeline(transaction=False) as pipe:
            for n in range(20):
                pipe.set(f"k{n}", n)
                pipe.get(f"k{n}")
            assert pipe.execute()[1::2] == [str(n).encode() for n in range(20)]
        took = time.monotonic() - started
    assert 0.3 <= took < 1.5  # 40 replies arriving together wait 300 ms together, not 40 times
    started = time.monotonic()
    client.ping()
    assert time.monotonic() - started < 0.25  # removed: no delay any more
    assert proxy.counters.delayed >= 40


def test_a_delay_can_apply_to_one_command_only(proxy: FaultProxy) -> None:
    client = through(proxy, timeout=5)
    client.ping()
    rule = proxy.delay(800, r"GET\b")
    started = time.monotonic()
    client.ping()
    assert time.monotonic() - started < 0.5  # not a match (generous: a busy CI machine)
    started = time.monotonic()
    client.get("x")
    assert time.monotonic() - started >= 0.8
    proxy.remove(rule)
    assert rule.hits == 1


def test_a_stall_holds_replies_while_the_server_runs_the_commands(
    proxy: FaultProxy, redis: redis_lib.Redis
) -> None:
    client = through(proxy, timeout=10)
    client.ping()
    got: list[Any] = []
    with proxy.stalled():
        worker = threading.Thread(target=lambda: got.append(client.incr("stalled")))
        worker.start()
        wait_for(lambda: redis.get("stalled") == b"1", timeout=5, message="the server ran it")
        time.sleep(0.3)
        assert got == [] and worker.is_alive()  # ... but its reply is held
        assert proxy.counters.held == 1
    worker.join(5)
    assert got == [1]


def test_cut_closes_every_connection_even_mid_command(
    proxy: FaultProxy, redis: redis_lib.Redis
) -> None:
    idle, busy = through(proxy, timeout=10), through(proxy, timeout=10)
    idle.ping()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            busy.blpop(["nothing"], timeout=8)
        except LOST as exc:
            errors.append(exc)

    waiter = threading.Thread(target=blocked)
    waiter.start()
    wait_for(
        lambda: any(c["cmd"] == "blpop" for c in redis.client_list()),
        timeout=5,
        message="BLPOP in flight",
    )
    started = time.monotonic()
    assert proxy.cut() == 2
    waiter.join(5)
    assert errors and time.monotonic() - started < 2  # told at once, not after 8 s
    assert idle.ping()  # redis-py saw its idle connection closed and made a new one
    assert proxy.counters.cut == 2 and proxy.counters.accepted == 3
    wait_for(
        lambda: not any(c["cmd"] == "blpop" for c in redis.client_list()),
        timeout=5,
        message="the server saw the cut too",
    )
    assert through(proxy).ping()  # new connections are fine


@pytest.mark.parametrize(("when", "ran"), [("before", False), ("partial", False), ("after", True)])
def test_cut_on_a_command_closes_only_its_connection(
    proxy: FaultProxy, redis: redis_lib.Redis, when: Any, ran: bool
) -> None:
    bystander, victim = through(proxy), through(proxy)
    bystander.ping()
    rule = proxy.cut_on(r"INCRBY\b", when=when)
    victim.ping()  # not a match
    with pytest.raises(redis_lib.ConnectionError):
        victim.incr("n")
    assert rule.hits == 1
    assert redis.get("n") == (b"1" if ran else None)
    assert bystander.ping()
    assert proxy.counters.cut == 1 and proxy.counters.open == 1


def test_pubsub_messages_pass_through_alongside_replies(
    proxy: FaultProxy, redis: redis_lib.Redis
) -> None:
    subscriber = through(proxy, timeout=5).pubsub()
    subscriber.subscribe("news", "more")
    for _ in range(2):
        assert subscriber.get_message(timeout=2)["type"] == "subscribe"
    proxy.drop_reply(r"GET\b")  # armed on every connection: a subscriber never matches it
    for n in range(5):
        redis.publish("news", f"m{n}")
    received = [subscriber.get_message(timeout=2) for _ in range(5)]
    assert [m["data"] for m in received if m] == [f"m{n}".encode() for n in range(5)]
    subscriber.close()


def test_refused_and_unreachable_upstream_connections_fail_at_once(
    redis_server_factory: Any,
) -> None:
    server = redis_server_factory()
    with FaultProxy(server.port) as proxy:
        proxy.refuse()
        with pytest.raises(redis_lib.ConnectionError):
            through(proxy).ping()
        proxy.refuse(False)
        assert through(proxy).ping()
        server.stop()
        with pytest.raises(redis_lib.ConnectionError):
            through(proxy).ping()
        server.start()
        assert through(proxy).ping()  # a restarted server behind the same proxy
        assert proxy.counters.refused == 2


def test_stop_closes_the_listener_and_every_connection(redis_server: RedisServer) -> None:
    proxy = FaultProxy(redis_server.port).start()
    client = through(proxy)
    client.ping()
    port = proxy.port
    proxy.stop()
    with pytest.raises(redis_lib.ConnectionError):
        client.ping()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    proxy.start()  # again, on the same port
    assert proxy.port == port and through(proxy).ping()
    proxy.stop()


# -- the RESP parsers ------------------------------------------------------------------------

scalars = st.one_of(
    st.binary(max_size=20).map(lambda b: b"$%d\r\n%b\r\n" % (len(b), b)),
    st.integers().map(lambda n: b":%d\r\n" % n),
    st.sampled_from([b"+OK\r\n", b"-ERR no\r\n", b"$-1\r\n", b"*-1\r\n", b"_\r\n", b"#t\r\n"]),
    st.sampled_from([b",1.5\r\n", b"(123456789012345678901\r\n", b"=7\r\ntxt:abc\r\n"]),
)


def aggregate(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    def build(kind: bytes, items: list[bytes]) -> bytes:
        if kind in b"%|":
            items = items + items  # pairs
        value = kind + b"%d\r\n" % (len(items) // (2 if kind in b"%|" else 1)) + b"".join(items)
        return value + (b"+attributed\r\n" if kind == b"|" else b"")

    return st.builds(
        build, st.sampled_from([b"*", b"~", b"%", b"|"]), st.lists(children, max_size=4)
    )


values = st.recursive(scalars, aggregate, max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(replies=st.lists(values, min_size=1, max_size=6), data=st.data())
def test_reply_boundaries_are_found_however_the_bytes_arrive(
    replies: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(replies)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    found, pos = [], 0
    for buf in (stream[:cut], stream):  # part of it, then all of it
        while (end := reply_end(buf, pos)) is not None:
            found.append(buf[pos:end])
            pos = end
    assert found == replies


@settings(max_examples=100, deadline=None)
@given(commands=st.lists(st.lists(st.binary(max_size=12), min_size=1, max_size=5), min_size=1))
def test_command_boundaries_are_found(commands: list[list[bytes]]) -> None:
    stream = b"".join(
        b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)
        for args in commands
    )
    found, pos = [], 0
    while (parsed := parse_request(stream, pos)) is not None:
        found.append(parsed[0])
        pos = parsed[1]
    assert found == commands and pos == len(stream)
    assert parse_request(stream[:-1], 0) is None or len(commands) > 1
    assert parse_request(b"PING\r\nGET x\r\n", 0) == ([b"PING"], 6)  # inline commands
