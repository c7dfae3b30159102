"""Security: AUTH and ACL users in the URL, TLS with our own CA, refused logins, a payload cap,
and nothing from a payload imported.

Every server here is a real redis-server: password-protected, with an ACL user, or TLS-only
with certificates made by ``openssl`` for the test (``support.tls``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st
from kombu import Connection, Consumer, Exchange, Queue
from kombu.exceptions import OperationalError
from support.env import missing_or_fail
from support.redis_server import RedisServer
from support.tls import PKI, TLSRedisServer, make_pki, openssl_available
from support.waiting import wait_for
from support.worker import CeleryWorker

import celery_sidekiq
from kombu_sidekiq import job as jobs
from kombu_sidekiq.client import Client
from kombu_sidekiq.transport import PayloadTooLarge, oversize

#: A password with every character a URL treats specially; the URL carries it percent-encoded.
PASSWORD = "p@ss:w/rd?#%"
QUOTED = "p%40ss%3Aw%2Frd%3F%23%25"


def runs(conn: redis_lib.Redis, task: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in conn.lrange(f"results:{task}", 0, -1)]


def wait_runs(conn: redis_lib.Redis, task: str, count: int = 1) -> list[dict[str, Any]]:
    wait_for(
        lambda: conn.llen(f"results:{task}") >= count, timeout=20, message=f"{count} runs of {task}"
    )
    return runs(conn, task)


def producer_app(url: str, **conf: Any) -> Celery:
    app = Celery("security-producer", broker=url)
    app.conf.update(conf)
    celery_sidekiq.setup(app)
    return app


# -- AUTH and ACL users ----------------------------------------------------------------------


@pytest.fixture
def protected(redis_server_factory: Any) -> RedisServer:
    """requirepass with an awkward password, and an ACL user "celery" with another one."""
    server = redis_server_factory(password=PASSWORD)
    with server.client() as conn:
        conn.execute_command(
            "ACL", "SETUSER", "celery", "on", ">s3cret-celery", "~*", "&*", "+@all"
        )
    return server


@pytest.mark.worker
@pytest.mark.parametrize(
    "credentials", [f":{QUOTED}", "celery:s3cret-celery"], ids=["requirepass", "acl-user"]
)
def test_workers_and_producers_log_in_with_the_urls_credentials(
    credentials: str, protected: RedisServer, celery_worker: Any
) -> None:
    url = f"sidekiq://{credentials}@127.0.0.1:{protected.port}/0"
    celery_worker(broker_url=url)
    app = producer_app(url)
    try:
        app.send_task("bridge.add", (2, 3))
    finally:
        app.close()
    with protected.client() as conn:
        Client(conn).push(jobs.build("bridge.add", [4, 5]))  # Ruby-side push
        done = wait_runs(conn, "bridge.add", 2)
        assert sorted(run["args"] for run in done) == [[2, 3], [4, 5]]
        users = {client["user"] for client in conn.client_list()}
        assert users == (
            {"default", "celery"} if credentials.startswith("celery:") else {"default"}
        )


@pytest.mark.worker
@pytest.mark.parametrize(
    ("credentials", "user"),
    [
        (":wrong-password", "default"),
        ("celery:wrong-password", "celery"),
        ("nobody:s3cret-celery", "nobody"),
        ("", "default"),
    ],
    ids=["wrong-password", "wrong-user-password", "unknown-user", "no-password"],
)
def test_a_refused_login_stops_the_worker_saying_what_to_change(
    credentials: str, user: str, protected: RedisServer, tmp_path: Path
) -> None:
    url = f"sidekiq://{credentials + '@' if credentials else ''}127.0.0.1:{protected.port}/0"
    worker = CeleryWorker(broker_url=url, log_path=tmp_path / "refused.log", name="refused")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 78 during startup"):
        worker.start()
    log = worker.log_text()
    assert time.monotonic() - started < 20
    assert f"authentication failed for user '{user}' at 127.0.0.1:{protected.port}" in log
    assert "check the user name and password in the broker URL" in log
    assert "wrong-password" not in log and "s3cret" not in log  # the password never shows
    assert "Traceback" not in log


def test_a_producer_with_a_refused_login_fails_fast_without_showing_the_password(
    protected: RedisServer,
) -> None:
    app = producer_app(f"sidekiq://celery:wrong-password@127.0.0.1:{protected.port}/0")
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError) as failure:
            app.send_task("bridge.add", (1, 2))
    finally:
        app.close()
    assert time.monotonic() - started < 10
    assert "wrong-password" not in str(failure.value)
    with protected.client() as conn:
        assert conn.llen("queue:default") == 0


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    if not openssl_available():
        missing_or_fail("openssl (Debian package openssl)")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_server(pki: PKI) -> Iterator[TLSRedisServer]:
    """TLS only, demanding a client certificate signed by our CA, and a password."""
    with TLSRedisServer(pki, auth_clients=True, password="tls-pass") as server:
        yield server


def tls_url(server: TLSRedisServer, **ssl: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in ssl.items())
    return f"sidekiqs://:tls-pass@127.0.0.1:{server.port}/0" + (f"?{query}" if query else "")


def connects(url: str, **options: Any) -> bool:
    with Connection(url, **options) as connection:
        connection.ensure_connection(max_retries=0)
        return bool(connection.default_channel.sidekiq.redis.ping())


def test_sidekiqs_verifies_the_server_even_without_options(tls_server: TLSRedisServer) -> None:
    # kombu's rediss:// would fall back to CERT_NONE here; sidekiqs:// checks the system CAs,
    # which do not know our test CA.
    with pytest.raises(OperationalError, match="certificate verify failed"):
        connects(tls_url(tls_server))


def test_a_server_certificate_from_another_ca_is_refused(
    tls_server: TLSRedisServer, pki: PKI
) -> None:
    ssl = {**tls_server.ssl_options, "ssl_ca_certs": str(pki.wrong_ca_cert)}
    with pytest.raises(OperationalError, match="certificate verify failed"):
        connects(tls_url(tls_server), ssl=ssl)


def test_the_right_ca_works_as_broker_use_ssl_or_as_url_options(
    tls_server: TLSRedisServer, pki: PKI
) -> None:
    assert connects(tls_url(tls_server), ssl=tls_server.ssl_options)
    # What rediss:// URLs accept works for sidekiqs:// too.
    assert connects(tls_url(tls_server, **tls_server.ssl_options))
    assert connects(
        tls_url(
            tls_server,
            ssl_cert_reqs="CERT_REQUIRED",
            ssl_ca_certs=str(pki.ca_cert),
            ssl_certfile=str(pki.client_cert),
            ssl_keyfile=str(pki.client_key),
        )
    )


def test_a_server_that_demands_a_client_certificate_refuses_us_without_one(
    tls_server: TLSRedisServer, pki: PKI
) -> None:
    with pytest.raises(OperationalError):
        connects(
            tls_url(tls_server), ssl={"ssl_cert_reqs": "required", "ssl_ca_certs": str(pki.ca_cert)}
        )


@pytest.mark.worker
def test_a_worker_and_a_producer_over_tls_with_client_certificates(
    tls_server: TLSRedisServer, celery_worker: Any
) -> None:
    url = tls_url(tls_server, **tls_server.ssl_options)
    celery_worker(broker_url=url)  # certificates in the URL
    app = producer_app(tls_url(tls_server), broker_use_ssl=tls_server.ssl_options)  # or in the conf
    try:
        app.send_task("bridge.add", (20, 22))
    finally:
        app.close()
    with tls_server.client() as conn:
        (run,) = wait_runs(conn, "bridge.add")
    assert run["args"] == [20, 22]


@pytest.mark.worker
def test_a_missing_certificate_file_stops_the_worker_naming_it(
    tls_server: TLSRedisServer, tmp_path: Path
) -> None:
    url = tls_url(tls_server, ssl_cert_reqs="required", ssl_ca_certs="/nonexistent/ca.pem")
    worker = CeleryWorker(broker_url=url, log_path=tmp_path / "nocert.log", name="nocert")
    with pytest.raises(RuntimeError, match="exited with 78 during startup"):
        worker.start()
    assert "ssl_ca_certs='/nonexistent/ca.pem': no such file" in worker.log_text()


# -- payload cap -----------------------------------------------------------------------------


@given(
    size=st.integers(min_value=0, max_value=10**9), limit=st.integers(min_value=0, max_value=10**9)
)
def test_the_cap_holds_exactly_and_zero_means_none(size: int, limit: int) -> None:
    reason = oversize(size, limit)
    assert (reason is not None) == (limit > 0 and size > limit)
    if reason is not None:
        assert str(size) in reason and f"max_payload_bytes={limit}" in reason


def test_setup_refuses_a_cap_that_is_not_a_byte_count() -> None:
    for bad in (-1, 1.5, "1000", True):
        with pytest.raises(ValueError, match="max_payload_bytes"):
            celery_sidekiq.setup(Celery("bad-cap"), max_payload_bytes=bad)


def test_a_producer_over_the_cap_gets_a_clear_error_and_writes_nothing(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    app = Celery("capped", broker=broker_url)
    celery_sidekiq.setup(app, max_payload_bytes=1024)
    try:
        app.send_task("bridge.tsum", ([1] * 10,))  # well under
        for options in ({}, {"countdown": 60}):
            with pytest.raises(
                PayloadTooLarge,
                match=r"bridge.tsum for queue 'default' is \d+ bytes of JSON, over max_payload_b",
            ):
                app.send_task("bridge.tsum", ([1] * 1000,), **options)
    finally:
        app.close()
    assert redis.llen("queue:default") == 1
    assert redis.zcard("schedule") == 0


def test_a_consumer_moves_an_oversized_job_untouched_to_the_dead_set(
    broker_url: str, redis: redis_lib.Redis
) -> None:
    big = jobs.dumps(jobs.build("Big", ["x" * 5000]))
    small = jobs.dumps(jobs.build("Small", [1]))
    redis.lpush("queue:default", big.encode(), small.encode())  # the big one is taken first
    delivered: list[str] = []
    queue = Queue("default", Exchange("default"), "default")
    with Connection(broker_url, transport_options={"max_payload_bytes": 4096}) as conn:

        def on_message(body: Any, message: Any) -> None:
            delivered.append(message.headers["task"])
            message.ack()

        with Consumer(conn.default_channel, [queue], callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 10
            while not delivered and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.5)
    assert delivered == ["Small"]
    assert redis.zrange("dead", 0, -1) == [big.encode()]  # byte for byte


@pytest.mark.worker
def test_a_worker_with_a_cap_buries_oversized_ruby_jobs_and_runs_the_rest(
    celery_worker: Any, redis: redis_lib.Redis
) -> None:
    worker = celery_worker(
        env={"SIDEKIQ_SETUP": json.dumps({"poll_interval": 0.5, "max_payload_bytes": 2048})}
    )
    big = jobs.build("Workers::PyWorker", ["x" * 4000])
    client = Client(redis)
    client.push(big)
    client.push(jobs.build("Workers::PyWorker", ["small"]))
    (run,) = wait_runs(redis, "Workers::PyWorker")
    assert run["args"] == ["small"]
    wait_for(lambda: redis.zcard("dead") == 1, timeout=10, message="the big job in the dead set")
    assert jobs.parse(redis.zrange("dead", 0, -1)[0]) == big
    assert "over max_payload_bytes=2048" in worker.log_text()


# -- nothing from a payload is imported ------------------------------------------------------


class _Trap:
    """Unpickling this would create ``path``: the proof that a payload was deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


@pytest.mark.worker
def test_a_payload_never_imports_or_unpickles_anything(
    celery_worker: Any, redis: redis_lib.Redis, tmp_path: Path
) -> None:
    worker = celery_worker()
    pickled, imported = tmp_path / "unpickled", tmp_path / "imported"
    # A kombu envelope claiming pickle content, in the queue's kombu key.
    with Connection(
        f"redis://127.0.0.1:{redis.connection_pool.connection_kwargs['port']}/0"
    ) as plain:
        plain.SimpleQueue("default", serializer="pickle").put(_Trap(pickled))  # type: ignore[attr-defined]
    # Sidekiq jobs whose class names a callable: a class selects a registered task, nothing else.
    client = Client(redis)
    client.push(jobs.build("os.system", [f"touch {imported}"]))
    client.push(jobs.build("pathlib.Path.touch", [str(imported)]))
    client.push(jobs.build("Workers::PyWorker", ["after"]))
    wait_runs(redis, "Workers::PyWorker")
    wait_for(
        lambda: redis.zcard("retry") == 2,
        timeout=10,
        message="the unknown classes failed, to retry",
    )
    wait_for(
        lambda: "untrusted content" in worker.log_text(), timeout=10, message="the pickle refused"
    )
    assert not pickled.exists()
    assert not imported.exists()
