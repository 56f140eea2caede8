"""``pmg web`` as a child process, a browser for it, and databases written by the real code.

The console runs as it does in the field: ``python -m gateway.cli.main web -c FILE`` on a free
loopback port; the browser is Debian's Chromium driven by Playwright (no browser download: the
package's own binary).  Waits are on conditions (the port accepting, an element's text), never
fixed sleeps.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct-horse-battery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pmg(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, input=stdin,
    )


def web_section(port: int, users_file: Path | None) -> str:
    users = f'users_file = "{users_file}"\n' if users_file else ""
    return f'\n[web]\nlisten = "127.0.0.1:{port}"\n{users}'


def add_user(cfg: Path, name: str, role: str) -> None:
    done = pmg("web", "passwd", "-c", str(cfg), name, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@contextmanager
def web_process(cfg: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``pmg web -c cfg`` until the block ends; fails with its log if it exits or never listens."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli.main", "web", "-c", str(cfg)], cwd=REPO, stdout=out, stderr=out
        )
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"pmg web exited {proc.returncode}: {log.read_text()[-2000:]}")
            return _accepting(port)

        wait_for(up, timeout=30, what="pmg web listening")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def browser() -> Iterator[object]:
    """Debian's Chromium under Playwright (root needs --no-sandbox)."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail("chromium is not installed; run .ci/bootstrap or apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()

