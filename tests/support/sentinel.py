"""A Sentinel-monitored Redis group for failover tests: master, replica, sentinels.

Every process runs on a free loopback port in its own temp dir. ``failover()`` asks a sentinel
to promote the replica (``SENTINEL FAILOVER``) and waits until the sentinels, the new master and
the old one (now its replica) all agree.

>>> with SentinelGroup(sentinels=2) as group:                               # doctest: +SKIP
...     url = group.url("sidekiq-sentinel")  # sidekiq-sentinel://127.0.0.1:P1;...;/0
...     group.failover()
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from support.procs import Started, TempDirServer
from support.redis_server import RedisServer, free_port
from support.waiting import wait_for

#: The master's name, as ``sentinel monitor`` declares it.
MASTER_NAME = "mymaster"


def sentinel_available() -> bool:
    return shutil.which("redis-sentinel") is not None


def _quick(port: int, **kw: Any) -> redis.Redis:
    """A client that fails at once instead of retrying: wait_for does the polling."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_connect_timeout=0.5,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        **kw,
    )


class Sentinel(TempDirServer):
    """One ``redis-sentinel`` process; it rewrites its config file, so that lives in its dir."""

    def __init__(self, master_port: int, quorum: int, password: str | None = None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-sentinel-test-"))
        self.logfile = self.dir / "sentinel.log"
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"logfile {self.logfile}",
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}",
            # Fast detection keeps the tests short; a short failover timeout too, as two
            # sentinels that both start a failover split the vote and retry only after twice
            # this time.
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
            f"sentinel failover-timeout {MASTER_NAME} 2000",
        ]
        if password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {password}")
        (self.dir / "sentinel.conf").write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sentinel:
        self.proc = subprocess.Popen(
            ["redis-sentinel", str(self.dir / "sentinel.conf")],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        wait_for(
            lambda: self.client().ping(),
            timeout=10,
            message=f"redis-sentinel on {self.port} did not answer PING",
            ignore=(redis.ConnectionError,),
        )
        return self

    def client(self) -> redis.Redis:
        return _quick(self.port)

    def master_port(self) -> int:
        with self.client() as c:
            _host, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def sees_replica(self, port: int) -> bool:
        with self.client() as c:
            replicas = c.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
        # Its master-link-status may lag (sentinels INFO replicas every 10 s); the group checks
        # the replica's own ROLE instead.
        return any(int(r["port"]) == port and r["flags"] == "slave" for r in replicas)


class SentinelGroup(Started):
    """A master, one replica and ``sentinels`` sentinels (quorum 1) watching them."""

    #: Redis 7 waits 5 s before a diskless full sync, in case more replicas show up.
    SERVER_ARGS = ("--repl-diskless-sync-delay", "0")

    def __init__(self, sentinels: int = 1, password: str | None = None) -> None:
        """``password``: requirepass on master and replica (the sentinels need none)."""
        self.password = password
        auth = ["--masterauth", password] if password else []
        self.server_args = [*self.SERVER_ARGS, *auth]
        self.master = RedisServer(password=password, extra_args=self.server_args)
        self.replica: RedisServer | None = None
        self.sentinels: list[Sentinel] = []
        self._count = sentinels

    def start(self) -> SentinelGroup:
        try:
            self.master.start()
            replicaof = ["--replicaof", "127.0.0.1", str(self.master.port)]
            self.replica = RedisServer(
                password=self.password, extra_args=[*self.server_args, *replicaof]
            ).start()
            self.sentinels = [
                Sentinel(self.master.port, quorum=1, password=self.password)
                for _ in range(self._count)
            ]
            for sentinel in self.sentinels:
                sentinel.start()
            self._wait_settled(self.master, self.replica)
            wait_for(
                lambda: all(s.sees_replica(self.replica.port) for s in self.sentinels),
                timeout=15,
                message="the sentinels did not discover the replica",
            )
        except BaseException:
            self.cleanup()
            raise
        return self

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master] + ([self.replica] if self.replica else [])

    def url(self, scheme: str = "sidekiq-sentinel", db: int = 0) -> str:
        """Every sentinel, kombu style: ``scheme://h:p;scheme://h:p/db``."""
        addresses = [f"{scheme}://127.0.0.1:{s.port}" for s in self.sentinels]
        return ";".join(addresses) + f"/{db}"

    def current_master(self) -> RedisServer:
        port = self.sentinels[0].master_port()
        return next(server for server in self.servers if server.port == port)

    def failover(self, kill: bool = False, timeout: float = 20) -> RedisServer:
        """Move the master role to the replica; return the new master once it has it.

        ``kill=True`` stops the master, as a crash would: the sentinels notice within
        ``down-after-milliseconds`` and promote the replica. Otherwise ``SENTINEL FAILOVER``
        promotes it and the old master is turned into its replica at once (sentinels do that
        only at their next INFO, up to 10 s later, taking writes nobody will see meanwhile).
        """
        old = self.current_master()
        new = next(server for server in self.servers if server is not old)
        with _quick(old.port, password=self.password) as c:
            # Let the replica catch up first: the switch then loses no acknowledged write.
            c.execute_command("WAIT", 1, 5000)
        if kill:
            old.stop()
        else:
            with self.sentinels[0].client() as c:
                c.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        self._wait_settled(new, None if kill else old, timeout)
        return new

    def _wait_settled(
        self, master: RedisServer, replica: RedisServer | None, timeout: float = 20
    ) -> None:
        def settled() -> bool:
            if any(s.master_port() != master.port for s in self.sentinels):
                return False
            with _quick(master.port, password=self.password) as c:
                if c.execute_command("ROLE")[0] != "master":
                    return False
            if replica is None:
                return True
            with _quick(replica.port, password=self.password) as c:
                if c.execute_command("ROLE")[0] == "master":
                    c.execute_command("REPLICAOF", "127.0.0.1", master.port)
                role = c.execute_command("ROLE")
                return bool(
                    role[0] == "slave" and int(role[2]) == master.port and role[3] == "connected"
                )

        wait_for(
            settled,
            timeout=timeout,
            interval=0.1,
            message=f"the sentinels did not settle on master {master.port}",
            ignore=(redis.ConnectionError, redis.TimeoutError, redis.ResponseError),
        )

    def log_text(self) -> str:
        parts = [f"--- sentinel {s.port} ---\n{s.log_text()}" for s in self.sentinels]
        parts += [f"--- redis {r.port} ---\n{r.log_text()}" for r in self.servers]
        return "\n".join(parts)

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.cleanup()
        for server in self.servers:
            server.cleanup()

    close = cleanup
