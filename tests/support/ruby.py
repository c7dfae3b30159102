"""Run real sidekiq.rb against the test Redis: Debian 12's ruby-sidekiq 6.4.1 (installed), or
Debian 13's 7.x, unpacked by ``scripts/fetch-sidekiq7.sh`` and run on the same Ruby.

Which one runs is the ``SIDEKIQ_RB`` environment variable ("6" or "7"; the ``sidekiq_rb``
fixture sets it), read by every helper here at call time.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from support.procs import TESTS_DIR, LoggedProcess
from support.waiting import wait_for

RUBY_DIR = TESTS_DIR / "ruby"
PRELUDE = RUBY_DIR / "prelude.rb"
JOBS = RUBY_DIR / "jobs.rb"

#: The major versions of sidekiq.rb the interop tests can run against.
SIDEKIQ_RBS = ("6", "7")

#: Where ``scripts/fetch-sidekiq7.sh`` unpacks Sidekiq 7 (``make deps`` runs it).
SIDEKIQ7_ROOT = Path(os.environ.get("SIDEKIQ7_ROOT") or TESTS_DIR.parent / ".cache" / "sidekiq-7")


def sidekiq_rb() -> str:
    """The sidekiq.rb major version the helpers run: ``SIDEKIQ_RB``, default "6"."""
    return os.environ.get("SIDEKIQ_RB") or "6"


def _gem_dir(prefix: str) -> Path | None:
    gems = SIDEKIQ7_ROOT / "usr/share/rubygems-integration/all/gems"
    found = sorted(gems.glob(f"{prefix}*")) if gems.is_dir() else []
    return found[-1] if found else None


def ruby_env(version: str | None = None) -> dict[str, str]:
    """What to add to a Ruby process's environment to load ``version``'s sidekiq.rb."""
    if (version or sidekiq_rb()) == "6":
        return {}
    libs = [_gem_dir(name) for name in ("sidekiq-7.", "redis-client-", "connection_pool-")]
    if None in libs:
        raise RuntimeError(f"sidekiq.rb 7 is not unpacked in {SIDEKIQ7_ROOT}: run make deps")
    path = [str(lib / "lib") for lib in libs if lib is not None]
    old = os.environ.get("RUBYLIB")
    return {"RUBYLIB": ":".join([*path, old] if old else path)}


@functools.cache
def ruby_available(version: str = "6") -> bool:
    """ruby is on PATH and ``require "sidekiq"`` loads ``version`` (cached: ~0.3 s each)."""
    if shutil.which("ruby") is None:
        return False
    try:
        env = {**os.environ, **ruby_env(version)}
    except RuntimeError:
        return False
    probe = subprocess.run(
        ["ruby", "-e", f'require "sidekiq"; exit(Sidekiq::VERSION.start_with?("{version}."))'],
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
    )
    return probe.returncode == 0


def _sidekiq_cmd() -> list[str]:
    if sidekiq_rb() != "6":
        gem = _gem_dir("sidekiq-7.")
        if gem is None:
            raise RuntimeError(f"sidekiq.rb 7 is not unpacked in {SIDEKIQ7_ROOT}: run make deps")
        return ["ruby", str(gem / "bin" / "sidekiq")]
    exe = shutil.which("sidekiq")
    return [exe] if exe else ["ruby", "-S", "sidekiq"]


def ruby_eval(
    redis_url: str, script: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> str:
    """Run ``script`` with tests/ruby/prelude.rb loaded (Sidekiq client on ``redis_url``,
    json, sidekiq/api). Returns stripped stdout; raises RuntimeError with stderr on failure."""
    full_env = {**os.environ, **ruby_env(), "REDIS_URL": redis_url, **(env or {})}
    res = subprocess.run(
        ["ruby", "-r", str(PRELUDE), "-e", script],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"ruby exited with {res.returncode}\n--- script ---\n{script}\n"
            f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}"
        )
    return res.stdout.strip()


# The item travels as JSON in an env var, so no argument ever needs Ruby quoting.
_PUSH = """
item = JSON.parse(ENV.fetch("SIDEKIQ_ITEM"))
jid = Sidekiq::Client.push(item)
abort("Sidekiq::Client.push returned nil (client middleware stopped the job?)") if jid.nil?
puts jid
"""


def ruby_push(
    redis_url: str, klass: str, args: list[Any], queue: str = "default", **opts: Any
) -> str:
    """``Sidekiq::Client.push`` from real Ruby; returns the jid. ``opts`` become item keys,
    e.g. ``at=time.time() + 60`` (scheduled), ``retry=False``, ``jid="..."``."""
    item = {"class": klass, "args": args, "queue": queue, **opts}
    return ruby_eval(redis_url, _PUSH, env={"SIDEKIQ_ITEM": json.dumps(item)})


class SidekiqProcess(LoggedProcess):
    """A real ``sidekiq`` server loading tests/ruby/jobs.rb, logging to ``log_path``.

    ``start()`` returns once the process has registered itself in the Redis SET
    ``processes`` (its identity is "host:pid:nonce"), i.e. its heartbeat runs and its
    fetcher is about to poll the queues.
    """

    def __init__(
        self,
        redis_url: str,
        log_path: Path,
        queues: str | list[str] | tuple[str, ...] = "default",
        concurrency: int = 2,
        verbose: bool = True,
        require: Path = JOBS,
        shutdown_timeout: int = 5,
        env: dict[str, str] | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.redis_url = redis_url
        self.log_path = Path(log_path)
        self.queues = [queues] if isinstance(queues, str) else list(queues)
        self.concurrency = concurrency
        self.verbose = verbose
        # Sidekiq 6.4.1 does `require options[:require]`: a relative path without "./"
        # would be looked up on $LOAD_PATH and fail, so always pass an absolute path.
        self.require = Path(require).resolve()
        self.shutdown_timeout = shutdown_timeout
        self.extra_env = dict(env or {})
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        argv = [*_sidekiq_cmd(), "-r", str(self.require), "-c", str(self.concurrency)]
        for q in self.queues:
            argv += ["-q", q]
        # -t: seconds Sidekiq waits for busy jobs on TERM (default 25 would slow teardown).
        argv += ["-t", str(self.shutdown_timeout)]
        if self.verbose:
            argv.append("-v")
        return argv + self.extra_args

    def _registered(self, conn: redis.Redis) -> bool:
        pid = str(self.pid)
        members: set[bytes] = conn.smembers("processes")  # type: ignore[assignment]
        return any(m.decode().rsplit(":", 2)[1:2] == [pid] for m in members)

    def start(self, timeout: float = 30.0) -> SidekiqProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **ruby_env(), "REDIS_URL": self.redis_url, **self.extra_env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=TESTS_DIR.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def registered() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"sidekiq exited with {self.proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_text()}"
                )
            with redis.Redis.from_url(
                self.redis_url, socket_timeout=2, retry=Retry(NoBackoff(), 0)
            ) as conn:
                return self._registered(conn)

        try:
            wait_for(
                registered,
                timeout=timeout,
                message=f"sidekiq (pid {self.pid}) did not register in 'processes'",
                ignore=(redis.ConnectionError, redis.TimeoutError),
            )
        except AssertionError as exc:
            self.kill9()
            raise AssertionError(f"{exc}\n--- sidekiq log ---\n{self.log_text()}") from None
        return self


class SidekiqProcessFactory(Protocol):
    """Type of the ``sidekiq_process`` fixture; ``kw`` goes to SidekiqProcess."""

    def __call__(
        self,
        queues: str | list[str] | tuple[str, ...] = "default",
        concurrency: int = 2,
        **kw: Any,
    ) -> SidekiqProcess: ...
