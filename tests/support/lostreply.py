"""A TCP proxy in front of redis-server that loses a command's reply, or the command, on demand.

A lost reply is the fault that makes a retry dangerous: the write happened, the client cannot
know. The proxy makes it exact instead of timed: it forwards the command, waits for Redis's
whole reply to it (so the write has landed, and the reply says what it did), then cuts the
client's connection instead of passing the reply on. A lost request is the other half: the
connection is cut before the command reaches Redis (nothing written). Every other command and
every later connection goes through untouched, so the client's retry reaches Redis.

    with LostReplyProxy(redis_server.port) as proxy:
        client = redis.Redis(port=proxy.port)
        proxy.lose_reply("LPUSH")        # the next LPUSH runs; its connection dies unanswered
        ...
        proxy.faults                     # [Fault(kind="reply", command=[b"LPUSH", ...], ...)]
        proxy.names()                    # every command name that reached Redis, in order

Commands are parsed as redis-py sends them (RESP arrays of bulk strings), replies as RESP2 or
RESP3 (redis-py 8 says HELLO 3 when it connects). A RESP3 push message is not the reply to a
command: the proxy refuses it rather than count replies out of step (no test subscribes).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["reply", "request"]


@dataclass
class Fault:
    """One fault the proxy made: ``kind`` "reply" (``reply`` holds Redis's answer, never
    delivered) or "request" (the command never reached Redis)."""

    kind: Kind
    connection: int
    command: list[bytes]
    reply: bytes | None = None


@dataclass
class _Arm:
    kind: Kind
    names: frozenset[bytes]
    times: int


@dataclass
class _Stream:
    """One direction of one connection: bytes not yet parsed into whole messages."""

    buffer: bytearray = field(default_factory=bytearray)


class LostReplyProxy:
    """Listens on 127.0.0.1 (``port``), forwards to ``upstream_port``; see the module doc."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.faults: list[Fault] = []
        #: (connection number, command) of every command forwarded to Redis.
        self.commands: list[tuple[int, list[bytes]]] = []
        self._arms: list[_Arm] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._connections = 0

    # -- faults ------------------------------------------------------------------------------

    def lose_reply(self, *names: str, times: int = 1) -> None:
        """The next ``times`` commands named one of ``names`` run, but their replies are lost."""
        self._arm("reply", names, times)

    def lose_request(self, *names: str, times: int = 1) -> None:
        """The next ``times`` commands named one of ``names`` never reach Redis."""
        self._arm("request", names, times)

    def _arm(self, kind: Kind, names: tuple[str, ...], times: int) -> None:
        with self._lock:
            self._arms.append(_Arm(kind, frozenset(n.upper().encode() for n in names), times))

    def _take_arm(self, name: bytes) -> Kind | None:
        with self._lock:
            for arm in self._arms:
                if arm.times > 0 and name.upper() in arm.names:
                    arm.times -= 1
                    return arm.kind
        return None

    def names(self) -> list[str]:
        """The name of every command forwarded to Redis, in order."""
        with self._lock:
            return [command[0].decode().upper() for _, command in self.commands]

    # -- running -----------------------------------------------------------------------------

    def __enter__(self) -> LostReplyProxy:
        thread = threading.Thread(target=self._accept, name="lostreply-accept", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping = True
        # shutdown, not just close: it wakes the threads blocked in accept() and select().
        for sock in [self._listener, *list(self._sockets)]:
            _shut(sock)
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections += 1
                number = self._connections
            thread = threading.Thread(
                target=self._serve, args=(number, client), name=f"lostreply-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, number: int, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            _shut(client)
            return
        self._sockets.update((client, server))
        requests, replies = _Stream(), _Stream()
        sent = answered = 0  # commands forwarded, replies passed back
        cut_at: int | None = None  # the command whose reply is to be lost
        lost: list[bytes] = []
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, "client")
            selector.register(server, selectors.EVENT_READ, "server")
            while not self._stopping:
                for key, _ in selector.select(timeout=1.0):
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:
                        return self._close(client, server)
                    if key.data == "client":
                        requests.buffer += data
                        for raw, command in _messages(requests):
                            kind = self._take_arm(command[0]) if cut_at is None else None
                            if kind == "request":
                                self._record(Fault("request", number, command))
                                return self._close(client, server)
                            server.sendall(raw)
                            with self._lock:
                                self.commands.append((number, command))
                            if kind == "reply":
                                cut_at, lost = sent, command
                            sent += 1
                    else:
                        replies.buffer += data
                        for raw, _reply in _messages(replies):
                            if answered == cut_at:
                                self._record(Fault("reply", number, lost, raw))
                                return self._close(client, server)
                            client.sendall(raw)
                            answered += 1
        self._close(client, server)

    def _record(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            _shut(sock)
            sock.close()
            self._sockets.discard(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected, or closed already
        sock.shutdown(socket.SHUT_RDWR)


# -- RESP --------------------------------------------------------------------------------------

#: Types of one line: simple string, error, integer; RESP3 null, double, boolean, big number.
_LINE = frozenset(b"+-:_,#(")
#: Types with a length and that many bytes: bulk string; RESP3 blob error, verbatim string.
_BULK = frozenset(b"$!=")
#: Types with a count of elements: array, RESP3 set; a RESP3 map or attribute has two per entry.
_AGGREGATE = frozenset(b"*~%|")


def _messages(stream: _Stream) -> list[tuple[bytes, list[bytes]]]:
    """Take every whole message off the front of ``stream``: ``(raw bytes, flattened parts)``."""
    found = []
    while True:
        parts: list[bytes] = []
        end = _parse(stream.buffer, 0, parts)
        if end is None:
            return found
        found.append((bytes(stream.buffer[:end]), parts))
        del stream.buffer[:end]


def _parse(buf: bytearray, pos: int, parts: list[bytes]) -> int | None:
    """The offset just past the message at ``pos``, its strings appended to ``parts``; or None
    if it is not all there yet."""
    if pos >= len(buf):
        return None
    line_end = buf.find(b"\r\n", pos)
    if line_end < 0:
        return None
    kind, head, after = buf[pos], bytes(buf[pos + 1 : line_end]), line_end + 2
    if kind in _LINE:
        parts.append(head)
        return after
    if kind in _BULK:
        length = int(head)
        if length < 0:
            return after
        if len(buf) < after + length + 2:
            return None
        parts.append(bytes(buf[after : after + length]))
        return after + length + 2
    if kind in _AGGREGATE:
        pairs = kind in b"%|"
        for _ in range(max(int(head), 0) * (2 if pairs else 1)):
            end = _parse(buf, after, parts)
            if end is None:
                return None
            after = end
        # An attribute is not a reply: it comes before one, which belongs to the same message.
        return _parse(buf, after, parts) if kind == ord("|") else after
    raise ValueError(f"not a RESP reply to a command: {bytes(buf[pos : pos + 40])!r}")
