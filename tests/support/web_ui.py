"""The real Sidekiq Web UI (6.4.1, or 7.x: see ``support.ruby``), served by ``rackup`` and WEBrick.

``SidekiqWeb(redis_url, log_path).start()`` runs ``rackup -s webrick tests/ruby/web.ru`` on a free
loopback port and returns once ``GET /busy`` answers 200. ``tables(html)`` reads the UI's tables
out of a page (as Chromium rendered it) into rows of cell texts, and ``post_form`` submits one
of its forms the way a browser does: in a cookie session, with the page's CSRF token.
"""

from __future__ import annotations

import functools
import http.cookiejar
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from support.procs import TESTS_DIR, LoggedProcess
from support.redis_server import free_port
from support.ruby import ruby_env
from support.waiting import wait_for

WEB_RU = TESTS_DIR / "ruby" / "web.ru"

#: What web.ru loads; a missing piece (e.g. no ruby-webrick: Ruby 3 dropped WEBrick from its
#: standard library) fails here in a fraction of a second instead of as a server that never answers.
_PROBE = 'require "sidekiq/web"; require "rack/session/cookie"; require "webrick"'


@functools.cache
def web_ui_available(version: str = "6") -> bool:
    """``rackup`` is on PATH and Ruby can load Sidekiq::Web (of sidekiq.rb ``version``), Rack's
    cookie session and WEBrick."""
    if shutil.which("rackup") is None or shutil.which("ruby") is None:
        return False
    env = {**os.environ, **ruby_env(version)}
    probe = subprocess.run(
        ["ruby", "-e", _PROBE], capture_output=True, timeout=60, check=False, env=env
    )
    return probe.returncode == 0


class SidekiqWeb(LoggedProcess):
    #: rackup's clean shutdown (WEBrick answers TERM with a FATAL stack trace).
    stop_signal = signal.SIGINT

    """Sidekiq::Web at ``http://127.0.0.1:<port>/`` on ``redis_url``; its log in ``log_path``."""

    def __init__(self, redis_url: str, log_path: Path, port: int | None = None) -> None:
        self.redis_url = redis_url
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # One cookie jar per server: the Rack session that holds the CSRF token lives in it.
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    @property
    def argv(self) -> list[str]:
        return ["rackup", "-s", "webrick", "-o", "127.0.0.1", "-p", str(self.port), str(WEB_RU)]

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def start(self, timeout: float = 30.0) -> SidekiqWeb:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=TESTS_DIR.parent,
                env={**os.environ, **ruby_env(), "REDIS_URL": self.redis_url},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"rackup exited with {self.proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            return self.get("busy")[0] == 200

        try:
            wait_for(
                answers,
                timeout=timeout,
                interval=0.1,
                message=f"Sidekiq Web UI on port {self.port} did not answer 200",
                ignore=(OSError,),  # connection refused until WEBrick listens
            )
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n--- rackup log ---\n{self.log_tail()}") from None
        return self

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of ``GET path`` in this server's cookie session."""
        try:
            with self.opener.open(self.url(path), timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")

    def post_form(self, page: str, action: str, fields: list[tuple[str, str]]) -> tuple[int, str]:
        """Submit a form of ``page`` to ``action`` as a browser would: GET the page for a
        session cookie and its CSRF token, then POST ``fields`` with that token. Redirects
        are followed; returns the final (status, body)."""
        status, html = self.get(page)
        assert status == 200, f"GET {page}: {status}"
        token = re.search(r"name=['\"]authenticity_token['\"] value=['\"]([^'\"]+)", html)
        assert token, f"no CSRF token on {page}"
        body = urllib.parse.urlencode([("authenticity_token", token[1]), *fields]).encode()
        request = urllib.request.Request(self.url(action), data=body, method="POST")
        try:
            with self.opener.open(request, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")


# --- reading pages -------------------------------------------------------------------------


@dataclass
class Row:
    """One ``<tr>`` of a table: its cells' text (whitespace collapsed) and the ``name -> value``
    of the form inputs inside it (the Busy page's hidden ``identity``, the Retries page's
    checkbox ``key[]`` = ``"<score>-<jid>"``)."""

    cells: list[str] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    header: bool = True  # until a <td> shows up: only <th> cells

    @property
    def text(self) -> str:
        return " | ".join(self.cells)


class _TableParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[str, list[Row]]] = []
        self._row: Row | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {name: value or "" for name, value in attrs}
        if tag == "table":
            self.tables.append((attr.get("class", ""), []))
        elif tag == "tr" and self.tables:
            self._row = Row()
            self.tables[-1][1].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
            self._row.header = self._row.header and tag == "th"
        elif tag == "input" and self._row is not None and "name" in attr:
            self._row.inputs[attr["name"]] = attr.get("value", "")
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")  # a line break renders as a break, not as nothing

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.cells.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str) -> dict[str, list[Row]]:
    """Body rows (those with ``<td>`` cells) of every table in ``html``, by the table's first
    CSS class (``"processes"`` and ``"workers"`` on the Busy page, ``"table"`` for the Retries
    list)."""
    parser = _TableParser()
    parser.feed(html)
    out: dict[str, list[Row]] = {}
    for css, rows in parser.tables:
        key = css.split()[0] if css else ""
        out.setdefault(key, []).extend(row for row in rows if not row.header)
    return out
