"""A private redis-server per test session (or per test), on a free loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from support.procs import TempDirServer
from support.waiting import wait_for


def free_port() -> int:
    """A port that was free a moment ago (the OS picks it; small race with other processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer(TempDirServer):
    """``redis-server`` bound to 127.0.0.1 with persistence off, in its own temp dir.

    ``restart()`` keeps the port so clients and brokers configured with ``url`` reconnect to
    the same address (outage tests). Data does not survive a restart (no persistence).
    """

    def __init__(
        self,
        password: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        port: int | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.password = password
        self.extra_args = list(extra_args)
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.logfile = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, **kw: Any) -> redis.Redis:
        kw.setdefault("password", self.password)
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def start(self) -> RedisServer:
        if self.running:
            return self
        args = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.logfile),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, cwd=self.dir)

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            # No redis-py retries (default: 3 with backoff): wait_for does the polling.
            with self.client(
                socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
            ) as c:
                return bool(c.ping())

        try:
            wait_for(
                ready,
                timeout=self.startup_timeout,
                message=f"redis-server on port {self.port} did not answer PING",
                ignore=(redis.ConnectionError, redis.TimeoutError),
            )
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (fails if someone grabbed it meanwhile)."""
        self.stop()
        return self.start()


class RedisServerFactory(Protocol):
    """Type of the ``redis_server_factory`` fixture: returns a started private server."""

    def __call__(
        self, password: str | None = None, extra_args: list[str] | tuple[str, ...] = ()
    ) -> RedisServer: ...
