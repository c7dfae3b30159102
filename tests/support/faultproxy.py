"""A TCP fault proxy between Redis clients and a real ``redis-server``, for fault tests.

It listens on a free loopback port and forwards every connection to the server, byte for
byte, unless told to misbehave. It reads RESP just enough to know where each command ends in
the client -> server stream and where each reply ends in the server -> client stream (replies
come in order, so the n-th complete reply answers the n-th command), which lets it act on the
reply of one particular command::

    from support.faultproxy import FaultProxy

    with FaultProxy(redis_port) as proxy:
        url = proxy.url("sidekiq")                    # point clients here
        rule = proxy.drop_reply(r"EVALSHA \\w+", skip=1)  # lose the 2nd EVALSHA's reply
        rule.wait(10)                                 # ... until it happened
        proxy.delay(2000)                             # every reply 2 s late, until removed
        proxy.clear()                                 # back to a plain proxy
        with proxy.stalled():                         # replies held (commands still run)
            time.sleep(3)
        proxy.cut()                                   # every connection closed, now
        proxy.cut_on("LPUSH", when="after")           # LPUSH runs, its client is cut off
        print(proxy.counters)

Faults:

``drop_reply(match)``
    The server runs the command, its reply is thrown away; the connection stays open (the
    client waits for an answer that never comes, and later replies on that connection answer
    the wrong commands: only a client that gives up on the connection recovers).
``delay(ms, match=None)``
    Replies (to matching commands, or all) are forwarded ``ms`` after they arrived, in order.
``stall()`` / ``release()``
    No reply is forwarded until released (the server keeps running commands).
``cut()``
    Every connection is closed at once (an RST to the client by default), whatever it was
    doing: mid-command for any that had one in flight.
``cut_on(match, when=...)``
    The connection that sends a matching command is closed: ``"before"`` the command reaches
    the server, ``"partial"`` after half of its bytes did (the server never runs it), or
    ``"after"`` the server ran it and before its reply reaches the client.
``refuse(True)``
    New connections are accepted and closed at once.

A *match* is a regular expression, searched from the start of the command written as
``NAME arg1 arg2 ...`` (the name upper-cased, arguments as sent: ``"GET"`` also matches
``GETEX``, write ``r"GET\\b"``), or a callable given the command's arguments. ``reply=`` adds
a predicate on the raw reply bytes (drop, delay and cut-after rules), ``skip=`` lets the first
matches go by, ``count=`` says how many times the rule fires (``None``: until removed).

Connections in PUB/SUB mode (after ``SUBSCRIBE``) are not counted reply by reply: their
messages are forwarded as they come, delayed or stalled like any reply.

Everything runs on one thread with a selector; the methods above may be called from any thread.
Standard library only.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import re
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

logger = logging.getLogger(__name__)

#: What a rule matches a command with: a regex (searched from the start of ``NAME args...``),
#: or a callable given the arguments (the name as sent first).
Matcher = str | bytes | re.Pattern[bytes] | Callable[[Sequence[bytes]], bool]

#: A predicate on a reply's raw bytes.
ReplyMatcher = Callable[[bytes], bool]

Action = Literal["drop", "delay", "cut_before", "cut_partial", "cut_after"]

_PUBSUB_ENTRY = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"})


# -- RESP ------------------------------------------------------------------------------------


class ProtocolError(ValueError):
    """Bytes that are not RESP."""


_LINE_TYPES = frozenset(b"+-:_,(#")  # simple string, error, integer, null, double, bignum, bool
_BLOB_TYPES = frozenset(b"$!=")  # bulk string, blob error, verbatim string
_ARRAY_TYPES = frozenset(b"*~>")  # array, set, push: n values
_MAP_TYPES = frozenset(b"%|")  # map, attribute: n pairs


def reply_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """Where the RESP2/RESP3 value starting at ``pos`` ends (the offset after it), or None
    if ``buf`` does not hold all of it yet."""
    todo = 1  # values still to read, flattened over nesting levels
    size = len(buf)
    while todo:
        if pos >= size:
            return None
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        kind = buf[pos]
        head = bytes(buf[pos + 1 : eol])
        pos = eol + 2
        todo -= 1
        if kind in _LINE_TYPES:
            continue
        try:
            n = int(head)
        except ValueError:
            raise ProtocolError(f"bad length {head!r} for type {chr(kind)!r}") from None
        if kind in _BLOB_TYPES:
            if n >= 0:
                if pos + n + 2 > size:
                    return None
                pos += n + 2
        elif kind in _ARRAY_TYPES:
            todo += max(n, 0)
        elif kind in _MAP_TYPES:
            # an attribute (|) is followed by the value it describes, which is the reply
            todo += 2 * max(n, 0) + (kind == ord("|"))
        else:
            raise ProtocolError(f"unknown RESP type byte {chr(kind)!r}")
    return pos


def parse_request(buf: bytes | bytearray, pos: int = 0) -> tuple[list[bytes], int] | None:
    """The command starting at ``pos`` (a RESP array of bulk strings, or an inline command)
    and the offset after it; None if it is not all there yet."""
    size = len(buf)
    if pos >= size:
        return None
    if buf[pos] != ord("*"):  # inline: one line of words
        eol = buf.find(b"\n", pos)
        if eol < 0:
            return None
        return bytes(buf[pos:eol]).split(), eol + 1
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    try:
        count = int(buf[pos + 1 : eol])
    except ValueError:
        raise ProtocolError(f"bad array header {bytes(buf[pos:eol])!r}") from None
    pos = eol + 2
    args: list[bytes] = []
    for _ in range(max(count, 0)):
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        if buf[pos] != ord("$"):
            raise ProtocolError(f"expected a bulk string, got {bytes(buf[pos:eol])!r}")
        n = int(buf[pos + 1 : eol])
        start = eol + 2
        if start + n + 2 > size:
            return None
        args.append(bytes(buf[start : start + n]))
        pos = start + n + 2
    return args, pos


def command_line(args: Sequence[bytes], limit: int = 0) -> bytes:
    """``NAME arg1 arg2 ...`` with the name upper-cased (cut to ``limit`` bytes if given)."""
    if not args:
        return b""
    line = b" ".join([args[0].upper(), *args[1:]])
    return line[:limit] if limit else line


# -- rules and counters ----------------------------------------------------------------------


@dataclass(eq=False)
class Rule:
    """One armed fault. ``hits`` counts the times it fired; ``commands`` keeps what it fired
    on (the first 100, each cut to 300 bytes); ``wait()`` waits for the first firing."""

    action: Action
    match: Matcher | None
    reply: ReplyMatcher | None = None
    skip: int = 0
    count: int | None = 1
    delay: float = 0.0  # seconds (delay rules)
    rst: bool = True  # cut rules: reset the client connection instead of closing it cleanly
    hits: int = 0
    commands: list[bytes] = field(default_factory=list)
    fired: threading.Event = field(default_factory=threading.Event)
    _regex: re.Pattern[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.match, str):
            self._regex = re.compile(self.match.encode())
        elif isinstance(self.match, bytes):
            self._regex = re.compile(self.match)
        elif isinstance(self.match, re.Pattern):
            self._regex = self.match

    @property
    def armed(self) -> bool:
        return self.count is None or self.count > 0

    def matches(self, args: Sequence[bytes]) -> bool:
        if self.match is None:
            return True
        if self._regex is not None:
            return self._regex.match(command_line(args)) is not None
        assert callable(self.match)
        return bool(self.match(args))

    def wait(self, timeout: float) -> bool:
        """True once the rule has fired (at least once)."""
        return self.fired.wait(timeout)

    def _consume(self, args: Sequence[bytes]) -> bool:
        """A candidate passed every test: fire, unless it is one of the ``skip`` first."""
        if not self.armed:
            return False
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.count is not None:
            self.count -= 1
        self.hits += 1
        if len(self.commands) < 100:
            self.commands.append(command_line(args, 300))
        self.fired.set()
        return True


@dataclass(frozen=True)
class Counters:
    """What the proxy has seen since it started."""

    accepted: int = 0  # client connections accepted
    open: int = 0  # client connections open now
    refused: int = 0  # connections closed at once (refuse(), or the server unreachable)
    commands: int = 0  # complete commands forwarded or acted on
    replies: int = 0  # complete replies seen from the server
    dropped: int = 0  # replies thrown away by drop rules
    delayed: int = 0  # replies that waited for a delay rule
    held: int = 0  # replies that waited for a stall to be released
    cut: int = 0  # connections cut (cut() or cut_on rules)
    bytes_up: int = 0  # client -> server
    bytes_down: int = 0  # server -> client
    by_command: dict[str, int] = field(default_factory=dict)


# -- connections -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Pending:
    """A command whose reply has not come back yet."""

    args: list[bytes]
    drop: list[Rule]
    cut: list[Rule]
    delay: list[Rule]
    enters_pubsub: bool = False


@dataclass(eq=False)
class _Conn:
    id: int
    client: socket.socket
    upstream: socket.socket
    peer: str
    c2s: bytearray = field(default_factory=bytearray)  # not yet a complete command
    s2c: bytearray = field(default_factory=bytearray)  # not yet a complete reply
    to_upstream: bytearray = field(default_factory=bytearray)
    held: collections.deque[tuple[float, bytes, bool]] = field(
        default_factory=collections.deque
    )  # (due, reply, counted as held)
    to_client: bytearray = field(default_factory=bytearray)
    pending: collections.deque[_Pending] = field(default_factory=collections.deque)
    pubsub: bool = False  # commands sent after a SUBSCRIBE: replies are not counted
    pubsub_replies: bool = False  # the SUBSCRIBE's reply came: everything passes through
    upstream_eof: bool = False
    closed: bool = False
    events: dict[str, int] = field(default_factory=dict)


def _set_rst(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FaultProxy:
    """A fault-injecting TCP proxy for Redis (see the module docstring); ``with`` starts and
    stops it."""

    def __init__(
        self,
        upstream_port: int,
        upstream_host: str = "127.0.0.1",
        port: int = 0,
        host: str = "127.0.0.1",
        connect_timeout: float = 2.0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self._want_port = port
        self.port = 0
        self.connect_timeout = connect_timeout
        self._lock = threading.RLock()
        self._rules: list[Rule] = []
        self._stalled = False
        self._refusing = False
        self._conns: dict[int, _Conn] = {}
        self._ids = itertools.count(1)
        self._requests: collections.deque[Callable[[], None]] = collections.deque()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._sel: selectors.DefaultSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._count: dict[str, int] = collections.Counter()
        self._by_command: collections.Counter[str] = collections.Counter()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._thread is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self._want_port))
        listener.listen(256)
        listener.setblocking(False)
        self.port = self._want_port = int(listener.getsockname()[1])  # a restart keeps it
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(listener, selectors.EVENT_READ, ("accept", None))
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"faultproxy:{self.port}", daemon=True
        )
        self._thread.start()
        logger.info("fault proxy 127.0.0.1:%d -> %s:%d", self.port, *self.upstream)
        return self

    def stop(self) -> None:
        """Close every connection and the listener; the thread ends."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        self._thread.join(10)
        self._thread = None

    close = stop

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def url(self, scheme: str = "redis", db: int = 0) -> str:
        """``<scheme>://127.0.0.1:<port>/<db>``, e.g. ``url("sidekiq")`` for a broker."""
        return f"{scheme}://{self.host}:{self.port}/{db}"

    # -- faults ------------------------------------------------------------------------------

    def drop_reply(
        self,
        match: Matcher | None,
        *,
        reply: ReplyMatcher | None = None,
        skip: int = 0,
        count: int | None = 1,
    ) -> Rule:
        """Throw away the reply to the next matching command (``count`` of them)."""
        return self._arm(Rule("drop", match, reply=reply, skip=skip, count=count))

    def delay(
        self,
        ms: float,
        match: Matcher | None = None,
        *,
        reply: ReplyMatcher | None = None,
        count: int | None = None,
    ) -> Rule:
        """Forward replies ``ms`` after they arrive (to matching commands, or all: pub/sub
        messages too), until the rule is removed (or fired ``count`` times). ``reply=``
        needs a ``match``: it picks which of the matching commands' replies wait."""
        if reply is not None and match is None:
            raise ValueError("reply= needs a match: a delay of every reply looks at none")
        return self._arm(Rule("delay", match, reply=reply, count=count, delay=ms / 1000.0))

    @contextlib.contextmanager
    def delaying(self, ms: float, match: Matcher | None = None) -> Iterator[Rule]:
        rule = self.delay(ms, match)
        try:
            yield rule
        finally:
            self.remove(rule)

    def cut_on(
        self,
        match: Matcher | None,
        *,
        when: Literal["before", "partial", "after"] = "after",
        reply: ReplyMatcher | None = None,
        skip: int = 0,
        count: int | None = 1,
        rst: bool = True,
    ) -> Rule:
        """Close the connection that sends a matching command: ``before`` it reaches the
        server, after ``partial``ly forwarding it, or ``after`` the server ran it (its reply
        never reaches the client; ``reply=`` filters on it)."""
        if reply is not None and when != "after":
            raise ValueError("reply= needs when='after': only then is there a reply to look at")
        actions: dict[str, Action] = {
            "before": "cut_before",
            "partial": "cut_partial",
            "after": "cut_after",
        }
        action = actions[when]
        return self._arm(Rule(action, match, reply=reply, skip=skip, count=count, rst=rst))

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)
        self._wake()

    def clear(self) -> None:
        """Remove every rule, release a stall, accept connections again."""
        with self._lock:
            self._rules.clear()
            self._stalled = False
            self._refusing = False
        self._wake()

    def stall(self) -> None:
        """Stop forwarding replies (the server still gets and runs every command)."""
        with self._lock:
            self._stalled = True

    def release(self) -> None:
        """Forward what a stall held, and everything after it."""
        with self._lock:
            self._stalled = False
        self._wake()

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        self.stall()
        try:
            yield
        finally:
            self.release()

    def refuse(self, refusing: bool = True) -> None:
        """Accept new connections and close them at once (or stop doing so)."""
        with self._lock:
            self._refusing = refusing

    def cut(self, rst: bool = True) -> int:
        """Close every connection now; returns how many were open."""
        done = threading.Event()
        result: list[int] = []

        def request() -> None:
            conns = [c for c in self._conns.values() if not c.closed]
            for conn in conns:
                self._close(conn, rst=rst, cut=True)
            result.append(len(conns))
            done.set()

        with self._lock:
            self._requests.append(request)
        self._wake()
        if not done.wait(10):
            raise RuntimeError("fault proxy thread did not answer")
        return result[0]

    # -- what it saw -------------------------------------------------------------------------

    @property
    def counters(self) -> Counters:
        with self._lock:
            return Counters(
                open=sum(1 for c in self._conns.values() if not c.closed),
                by_command=dict(self._by_command),
                **self._count,
            )

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    # -- the loop ----------------------------------------------------------------------------

    def _arm(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        self._wake()
        return rule

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stopping:
                timeout = self._timeout()
                events = sel.select(timeout)
                with self._lock:
                    for key, mask in events:
                        kind, conn = key.data
                        try:
                            if kind == "accept":
                                self._accept()
                            elif kind == "wake":
                                self._drain_wake()
                            elif conn is not None and not conn.closed:
                                self._on_event(conn, kind, mask)
                        except Exception:
                            logger.exception("fault proxy: %s event failed", kind)
                            if conn is not None:
                                self._close(conn)
                    while self._requests:
                        self._requests.popleft()()
                    self._forward_due()
                    self._rules = [r for r in self._rules if r.armed]
                    for conn in [c for c in self._conns.values() if c.closed]:
                        del self._conns[conn.id]
        finally:
            with self._lock:
                for conn in list(self._conns.values()):
                    self._close(conn)
                self._conns.clear()
                while self._requests:  # a cut() waiting for an answer gets one
                    self._requests.popleft()()
            for sock in (self._listener, self._wake_r, self._wake_w):
                if sock is not None:
                    with contextlib.suppress(KeyError, ValueError, OSError):
                        sel.unregister(sock)
                    sock.close()
            sel.close()

    def _timeout(self) -> float | None:
        with self._lock:
            if self._stalled:
                return None
            dues = [c.held[0][0] for c in self._conns.values() if c.held and not c.closed]
        if not dues:
            return None
        return max(0.0, min(dues) - time.monotonic())

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _accept(self) -> None:
        assert self._listener is not None and self._sel is not None
        while True:
            try:
                client, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self._count["accepted"] += 1
            if self._refusing:
                self._count["refused"] += 1
                _set_rst(client)
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
            except OSError as exc:
                logger.info("fault proxy: upstream %s:%d unreachable: %s", *self.upstream, exc)
                self._count["refused"] += 1
                _set_rst(client)
                client.close()
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(next(self._ids), client, upstream, f"{addr[0]}:{addr[1]}")
            conn.events = {"client": selectors.EVENT_READ, "upstream": selectors.EVENT_READ}
            self._conns[conn.id] = conn
            self._sel.register(client, selectors.EVENT_READ, ("client", conn))
            self._sel.register(upstream, selectors.EVENT_READ, ("upstream", conn))

    def _on_event(self, conn: _Conn, kind: str, mask: int) -> None:
        sock = conn.client if kind == "client" else conn.upstream
        if mask & selectors.EVENT_WRITE:
            self._send(conn, kind)
        if conn.closed or not mask & selectors.EVENT_READ:
            return
        try:
            data = sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if kind == "client":
            if not data:
                self._flush_blocking(conn.upstream, conn.to_upstream)
                self._close(conn, rst=False)
                return
            self._count["bytes_up"] += len(data)
            conn.c2s += data
            self._on_commands(conn)
        else:
            if not data:  # the server closed it: deliver what came before, then close
                conn.upstream_eof = True
                self._forward_due()
                self._maybe_finish(conn)
                return
            self._count["bytes_down"] += len(data)
            conn.s2c += data
            self._on_replies(conn)
        if not conn.closed:
            self._interest(conn)

    def _on_commands(self, conn: _Conn) -> None:
        pos = 0
        buf = conn.c2s
        while not conn.closed:
            parsed = parse_request(buf, pos)
            if parsed is None:
                break
            args, end = parsed
            raw = bytes(buf[pos:end])
            pos = end
            if not args:
                conn.to_upstream += raw
                continue
            self._count["commands"] += 1
            self._by_command[args[0].upper().decode(errors="replace")] += 1
            cut = next(
                (
                    rule
                    for rule in self._rules
                    if rule.action in ("cut_before", "cut_partial") and rule.matches(args)
                    if rule._consume(args)
                ),
                None,
            )
            if cut is not None:
                if cut.action == "cut_partial":
                    conn.to_upstream += raw[: max(1, len(raw) // 2)]
                self._flush_blocking(conn.upstream, conn.to_upstream)
                logger.info("fault proxy: cut %s %s on %r", conn.peer, cut.action, raw[:80])
                self._close(conn, rst=cut.rst, cut=True)
                return
            conn.to_upstream += raw
            if conn.pubsub:
                continue
            pending = _Pending(
                args,
                drop=[r for r in self._rules if r.action == "drop" and r.matches(args)],
                cut=[r for r in self._rules if r.action == "cut_after" and r.matches(args)],
                delay=[
                    r
                    for r in self._rules
                    if r.action == "delay" and r.match is not None and r.matches(args)
                ],
                enters_pubsub=args[0].upper() in _PUBSUB_ENTRY,
            )
            conn.pending.append(pending)
            if pending.enters_pubsub:
                conn.pubsub = True
        del buf[:pos]

    def _on_replies(self, conn: _Conn) -> None:
        pos = 0
        buf = conn.s2c
        now = time.monotonic()
        while not conn.closed:
            end = reply_end(buf, pos)
            if end is None:
                break
            raw = bytes(buf[pos:end])
            pos = end
            self._count["replies"] += 1
            pending: _Pending | None = None
            if not conn.pubsub_replies and raw[:1] != b">" and conn.pending:
                pending = conn.pending.popleft()
                if pending.enters_pubsub:
                    conn.pubsub_replies = True
            delay = max(
                (r.delay for r in self._rules if r.action == "delay" and r.match is None),
                default=0.0,
            )
            if pending is not None:
                if any(
                    r._consume(pending.args)
                    for r in pending.cut
                    if r in self._rules and (r.reply is None or r.reply(raw))
                ):
                    logger.info("fault proxy: cut %s after %r", conn.peer, raw[:80])
                    self._forward_due(force=conn)
                    self._close(conn, rst=pending.cut[0].rst, cut=True)
                    return
                if any(
                    r._consume(pending.args)
                    for r in pending.drop
                    if r in self._rules and (r.reply is None or r.reply(raw))
                ):
                    logger.info("fault proxy: dropped the reply %r", raw[:80])
                    self._count["dropped"] += 1
                    continue
                live = [
                    r
                    for r in pending.delay
                    if r in self._rules
                    and (r.reply is None or r.reply(raw))
                    and r._consume(pending.args)
                ]
                delay = max([delay, *(r.delay for r in live)])
            if delay > 0:
                self._count["delayed"] += 1
            conn.held.append((now + delay, raw, False))
        del buf[:pos]
        self._forward_due()

    def _forward_due(self, force: _Conn | None = None) -> None:
        """Move replies whose time has come (none while stalled) to the client buffers."""
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if conn.closed or not conn.held:
                continue
            while conn.held:
                due, raw, counted = conn.held[0]
                if conn is not force:
                    if self._stalled:
                        if not counted:
                            self._count["held"] += 1
                            conn.held[0] = (due, raw, True)
                        break
                    if due > now:
                        break
                conn.held.popleft()
                conn.to_client += raw
            if conn.to_client:
                self._send(conn, "client")
            self._maybe_finish(conn)
            if not conn.closed:
                self._interest(conn)

    def _maybe_finish(self, conn: _Conn) -> None:
        if conn.upstream_eof and not conn.held and not conn.to_client and not conn.closed:
            self._close(conn, rst=False)

    def _send(self, conn: _Conn, kind: str) -> None:
        sock, buf = (
            (conn.client, conn.to_client) if kind == "client" else (conn.upstream, conn.to_upstream)
        )
        while buf:
            try:
                sent = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._close(conn)
                return
            del buf[:sent]
        if kind == "client":
            self._maybe_finish(conn)

    def _flush_blocking(self, sock: socket.socket, buf: bytearray) -> None:
        if not buf:
            return
        try:
            sock.setblocking(True)
            sock.settimeout(1.0)
            sock.sendall(buf)
        except OSError:
            pass
        finally:
            buf.clear()

    def _interest(self, conn: _Conn) -> None:
        assert self._sel is not None
        for kind, sock, buf in (
            ("client", conn.client, conn.to_client),
            ("upstream", conn.upstream, conn.to_upstream),
        ):
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if buf else 0)
            if conn.events.get(kind) != want:
                self._sel.modify(sock, want, (kind, conn))
                conn.events[kind] = want

    def _close(self, conn: _Conn, rst: bool = False, cut: bool = False) -> None:
        if conn.closed:
            return
        conn.closed = True
        if cut:
            self._count["cut"] += 1
        for sock in (conn.client, conn.upstream):
            if self._sel is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._sel.unregister(sock)
            if rst:
                _set_rst(sock)
            with contextlib.suppress(OSError):
                sock.close()
        conn.held.clear()
        conn.to_client.clear()
        conn.to_upstream.clear()
