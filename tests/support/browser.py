"""Headless Chromium (Debian's ``chromium``) for tests that look at real web pages.

Each call starts one browser with a fresh profile, loads one URL and exits: ``dump_dom`` returns
the DOM as Chromium rendered it, ``screenshot`` writes a PNG of the viewport. No DevTools
protocol, no driver package: the two command-line modes are all the tests need.

    browser = Chromium(tmp_path)
    html = browser.dump_dom("http://127.0.0.1:9292/busy")
    browser.screenshot("http://127.0.0.1:9292/busy", tmp_path / "busy.png")
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from support.procs import kill_group, tail

#: Flags for a quiet, self-contained run: as root Chromium refuses to start without
#: ``--no-sandbox``; the rest keep it off the network (no updates, sync or field trials), so
#: a run loads exactly the page it is given and nothing else.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--hide-scrollbars",
    # Sidekiq's Web UI picks its language from Accept-Language: English whatever the host's.
    "--accept-lang=en-US",
    "--lang=en-US",
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium_path() -> str | None:
    """The Chromium executable (Debian installs ``/usr/bin/chromium``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; ValueError if ``path`` is not a PNG."""
    head = Path(path).read_bytes()[:24]
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


class Chromium:
    """Runs headless Chromium once per call; its stderr goes to ``workdir/chromium.log``."""

    def __init__(self, workdir: Path, timeout: float = 60.0, executable: str | None = None) -> None:
        exe = executable or chromium_path()
        if exe is None:
            raise FileNotFoundError("chromium not found on PATH (Debian package chromium)")
        self.executable = exe
        self.workdir = Path(workdir)
        self.timeout = timeout
        self.log_path = self.workdir / "chromium.log"

    def dump_dom(self, url: str) -> str:
        """The page's DOM after load, serialized as HTML (``--dump-dom``)."""
        return self._run("--dump-dom", url)

    def screenshot(self, url: str, path: Path, width: int = 1400, height: int = 900) -> Path:
        """A ``width`` x ``height`` PNG of the page's viewport at ``path``."""
        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a stale file must not pass for a new screenshot
        self._run(f"--screenshot={path}", f"--window-size={width},{height}", url)
        if not path.exists():
            raise RuntimeError(f"chromium wrote no screenshot to {path}; see {self.log_path}")
        return path

    def _run(self, *args: str) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A fresh profile per run: no state (cookies, cache, a leftover profile lock) carries
        # over from one page load to the next.
        with (
            tempfile.TemporaryDirectory(prefix="chromium-", dir=self.workdir) as profile,
            open(self.log_path, "ab") as log,
        ):
            argv = [self.executable, *FLAGS, f"--user-data-dir={profile}", *args]
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # its zygote and renderers die with it on timeout
            )
            try:
                out, _ = proc.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                kill_group(proc)
                proc.communicate()
                raise RuntimeError(
                    f"chromium did not finish within {self.timeout}s: {args}; see {self.log_path}"
                ) from None
            finally:
                kill_group(proc)  # helpers that outlived the browser process
        if proc.returncode != 0:
            raise RuntimeError(
                f"chromium exited with {proc.returncode}: {args}; see {self.log_path}"
            )
        return out.decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)
