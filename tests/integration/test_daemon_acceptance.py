"""Acceptance: the daemon as systemd runs it — a real ``pmg run`` subprocess polling simulated
DL/T 645 meters served by a ``pmg sim dlt645 --tcp`` subprocess, with a real Mosquitto.

- readiness, STATUS lines and watchdog feeding over a real ``$NOTIFY_SOCKET`` datagram socket;
- a second ``pmg run`` on the same database exits 3 with one line;
- SIGHUP with a broken configuration keeps the daemon polling on the old one; a good one is applied;
- SIGTERM while polls are in flight: exit 0, ledger verify clean, every charged reading has its entry
  and the charged energy equals the register advance, offline status retained at the broker;
- log lines on stderr are key=value.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.broker import Mosquitto
from support.gateway_harness import base_config, subscriber, write_config
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
PMG = str(REPO / ".venv" / "bin" / "pmg")
POLICY = '[policy]\npreset = "generic"\n'  # notice is required: nobody is cut during the test

pytestmark = pytest.mark.slow


@contextmanager
def process(argv: list[str], **kw: object) -> Iterator[subprocess.Popen[str]]:
    """A child process that is always gone when the block ends (a hung one dumps its stacks first)."""
    proc = subprocess.Popen(argv, text=True, cwd=REPO, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER=1: tracebacks of every thread to stderr
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


class NotifySocket:
    """What systemd does for Type=notify: a datagram socket whose messages a thread collects (a unix
    datagram queue holds only ~10 messages; systemd reads promptly, so must we)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, name="notify-socket", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def seen(self, text: str) -> bool:
        with self._lock:
            return any(text in m for m in self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _config(tmp_path: Path, sim_port: int, mqtt_port: int, meters: int, poll_s: float) -> str:
    body = base_config(tmp_path / "pmg.db", mqtt_port=mqtt_port, policy=POLICY) + (
        f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "socket://127.0.0.1:{sim_port}"\n'
        f"baud = 9600\ntimeout_s = 0.5\nretries = 0\npoll_interval_s = {poll_s}\n"
    )
    for i in range(1, meters + 1):
        body += (
            f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "{i:012d}"\naccount = "a{i}"\ntariff = "flat-cn"\n'
            "max_power_w = 10000000\n"
        )
    return body


def _db(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _count(db: Path, sql: str) -> int:
    conn = _db(db)
    try:
        return int(conn.execute(sql).fetchone()[0] or 0)
    finally:
        conn.close()


def test_daemon_lifecycle_under_signals(tmp_path: Path, mosquitto: Mosquitto) -> None:
    db = tmp_path / "pmg.db"
    log_path = tmp_path / "daemon.log"
    notify = NotifySocket(tmp_path / "notify.sock")
    # 500 W at 3600x: 0.5 kWh per real second, so every poll moves the register (max_power_w allows it).
    sim_argv = [PMG, "sim", "dlt645", "--meters", "3", "--tcp", "0", "--speed", "3600", "--baud", "9600"]
    # 40 ms per answer and ~10 data identifiers per poll: the bus is never idle, so SIGTERM lands mid-poll.
    sim_argv += ["--no-timing", "--response-delay-ms", "40"]
    try:
        with process(sim_argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as sim:
            assert sim.stdout is not None
            banner = sim.stdout.readline()
            match = re.search(r"socket://127\.0\.0\.1:(\d+)", banner)
            assert match, banner
            sim_port = int(match.group(1))
            cfg = write_config(tmp_path / "gw.toml", _config(tmp_path, sim_port, mosquitto.port, 2, 0.2))
            env = {
                **os.environ,
                "NOTIFY_SOCKET": str(notify.path),
                "WATCHDOG_USEC": "1000000",
                "PYTHONFAULTHANDLER": "1",
            }
            env.pop("JOURNAL_STREAM", None)
            with (
                subscriber(mosquitto.port) as hq,
                open(log_path, "w") as log,
                process(
                    [PMG, "-vv", "run", "-c", str(cfg)], stdout=subprocess.DEVNULL, stderr=log, env=env
                ) as daemon,
            ):
                wait_for(lambda: notify.seen("READY=1"), timeout=30, what="READY=1")
                wait_for(
                    lambda: _count(db, "SELECT COUNT(*) FROM readings WHERE outcome = 'charged'") >= 6,
                    timeout=30,
                    what="charged readings",
                )
                wait_for(lambda: notify.seen("WATCHDOG=1"), timeout=10, what="watchdog fed")
                wait_for(lambda: notify.seen("STATUS=polling"), timeout=15, what="STATUS line")

                # A second daemon on the same database: exit 3, one line, the first keeps running.
                second = subprocess.run(
                    [PMG, "run", "-c", str(cfg)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    cwd=REPO,
                    check=False,
                )
                assert second.returncode == 3, second.stderr
                assert second.stderr.strip().count("\n") == 0 and "already running" in second.stderr
                assert str(daemon.pid) in second.stderr

                # SIGHUP with a broken configuration: refused, old one kept, polling goes on.
                good = cfg.read_text()
                cfg.write_text(good.replace("poll_interval_s = 0.2", "poll_intervall_s = 0.2"))
                daemon.send_signal(signal.SIGHUP)
                wait_for(lambda: "reload refused" in log_path.read_text(), timeout=15, what="reload refused")
                before = _count(db, "SELECT COUNT(*) FROM readings")
                wait_for(
                    lambda: _count(db, "SELECT COUNT(*) FROM readings") >= before + 4,
                    timeout=15,
                    what="polls",
                )
                assert daemon.poll() is None

                # SIGHUP with a good new configuration (a third meter): applied.
                cfg.write_text(_config(tmp_path, sim_port, mosquitto.port, 3, 0.2))
                daemon.send_signal(signal.SIGHUP)
                wait_for(
                    lambda: (
                        _count(db, "SELECT COUNT(*) FROM readings WHERE meter_id = 'm3' AND quality = 'ok'")
                        >= 2
                    ),
                    timeout=20,
                    what="the new meter polled after reload",
                )

                # SIGTERM while a poll is in flight.
                wait_for(
                    lambda: _count(db, "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NOT NULL") > 0,
                    timeout=15,
                    what="some delivery",
                )
                started = time.monotonic()
                daemon.send_signal(signal.SIGTERM)
                assert daemon.wait(timeout=30) == 0
                stop_s = time.monotonic() - started
                wait_for(
                    lambda: hq.of("/status") and hq.of("/status")[-1]["state"] == "offline",
                    timeout=10,
                    what="offline status at the broker",
                )
            assert notify.seen("STOPPING=1")
        assert stop_s < 15
        print(f"graceful stop took {stop_s:.2f} s")

        verify = subprocess.run(
            [PMG, "ledger", "verify", "-c", str(cfg), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        conn = _db(db)
        try:
            orphan = conn.execute(
                "SELECT COUNT(*) FROM readings r WHERE r.outcome = 'charged' AND r.delta_wh > 0 AND NOT EXISTS "
                "(SELECT 1 FROM entries e WHERE e.reading_id = r.id AND e.kind = 'charge')"
            ).fetchone()[0]
            assert orphan == 0, "a charged reading without its ledger entry"
            for meter_id, last, charged in conn.execute(
                "SELECT m.id, m.last_register_wh, (SELECT COALESCE(SUM(energy_wh), 0) FROM entries e "
                "WHERE e.meter_id = m.id AND e.kind = 'charge') FROM meters m"
            ).fetchall():
                baseline = conn.execute(
                    "SELECT register_wh FROM readings WHERE meter_id = ? AND outcome = 'baseline' ORDER BY id LIMIT 1",
                    (meter_id,),
                ).fetchone()[0]
                assert charged == last - baseline, meter_id
            snap = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'status_json'").fetchone()[0])
            assert snap.get("stopped_at"), "a clean stop marks the status snapshot stopped"
        finally:
            conn.close()
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        assert lines and all(re.match(r"^ts=\S+ level=\w+ logger=\S+ msg=", line) for line in lines), lines[
            :5
        ]
        assert any(re.search(r" meter=m\d", line) for line in lines)
        # The frame in flight at SIGTERM was finished and its reading committed after "stopping".
        stopping = next(i for i, line in enumerate(lines) if 'msg=stopping ' in line)
        assert any('msg=reading meter=' in line for line in lines[stopping:]), lines[stopping:]
    finally:
        notify.close()
