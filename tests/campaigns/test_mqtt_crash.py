"""kill -9 the gateway while it publishes, restart it: the head office ends up with every seq.

Everything is a separate process, as in production: simulated DL/T 645 meters served over TCP by
``pmg sim dlt645``, the daemon ``pmg run``, a private Mosquitto with a persistent store; the head
office is the reference consumer with its SQLite store.  After the restart the database's outbox and
the consumer's store are compared seq by seq.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import UNCAPPED_OFFLINE_QUEUE, Mosquitto, free_port
from support.gateway_harness import TARIFFS
from support.waiting import wait_for

from hq.consumer import HqConsumer, MessageStore

PMG = str(Path(sys.executable).parent / "pmg")


class Procs:
    """Processes started by this test, each stopped (and reaped) at the end whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _db_seqs(db: Path) -> tuple[int, int]:
    """(last seq, undelivered count) read from the gateway's database without disturbing it."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        pending = conn.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]
        return int(last), int(pending)
    finally:
        conn.close()


@pytest.mark.slow
def test_kill_9_mid_publish_then_restart_loses_nothing(tmp_path: Path, procs: Procs) -> None:
    store_dir = tmp_path / "broker-store"
    store_dir.mkdir()
    broker = Mosquitto(
        tmp_path / "broker",
        extra=f"allow_anonymous true\npersistence true\npersistence_location {store_dir}/\n{UNCAPPED_OFFLINE_QUEUE}",
    ).start()
    hq: HqConsumer | None = None
    try:
        sim_port = free_port()
        procs.start(
            [
                PMG,
                "sim",
                "dlt645",
                "--meters",
                "3",
                "--tcp",
                str(sim_port),
                "--no-timing",
                "--speed",
                "100",
                "--power-w",
                "5000",
            ],
            tmp_path / "sim.log",
        )
        wait_for(lambda: _listening(sim_port), what="simulator listening")
        db = tmp_path / "pmg.db"
        cfg = tmp_path / "gw.toml"
        body = (
            f'gateway_id = "gw-crash"\ntimezone = "Asia/Shanghai"\ndatabase = "{db}"\ntariff_dir = "{TARIFFS}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntls = false\nallow_plaintext = true\n'
            f'[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "socket://127.0.0.1:{sim_port}"\n'
            "baud = 9600\npoll_interval_s = 0.05\ntimeout_s = 0.5\n"
        )
        for i in range(1, 4):
            body += f'[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "{i:012d}"\naccount = "acc{i}"\ntariff = "flat-cn"\n'
            # keep_power: no trip stops the flow; 5 kW at 100x is 500 kW, made plausible for this test
            body += "keep_power = true\nmax_power_w = 5000000\n"
        cfg.write_text(body)

        hq = HqConsumer(
            "127.0.0.1",
            broker.port,
            tls=None,
            client_id="hq-crash",
            store=MessageStore(tmp_path / "hq.sqlite"),
        )
        hq.tracker.start_at("gw-crash", 1)
        hq.start()
        assert hq.subscribed.wait(10)

        gw = procs.start([PMG, "run", "-c", str(cfg)], tmp_path / "gw.log")
        wait_for(lambda: hq.tracker.highest("gw-crash") >= 60, timeout=30, what="messages flowing")
        gw.send_signal(signal.SIGKILL)  # 1: while publishing normally
        gw.wait(10)
        first_kill = _db_seqs(db)

        gw = procs.start([PMG, "run", "-c", str(cfg)], tmp_path / "gw.log")
        wait_for(lambda: hq.tracker.highest("gw-crash") > first_kill[0], timeout=30, what="publishing again")
        broker.stop()
        wait_for(lambda: _db_seqs(db)[1] >= 20, timeout=30, what="a backlog while the broker is down")
        gw.send_signal(signal.SIGKILL)  # 2: with unacknowledged messages in the outbox
        gw.wait(10)
        second_kill = _db_seqs(db)
        assert second_kill[1] >= 20
        broker.start()

        gw = procs.start([PMG, "run", "-c", str(cfg)], tmp_path / "gw.log")
        wait_for(lambda: _db_seqs(db)[0] > second_kill[0] + 30, timeout=30, what="new messages after restart")
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0, (tmp_path / "gw.log").read_text()[-2000:]
        last, pending = _db_seqs(db)
        assert pending == 0, "a clean stop flushes the outbox to a reachable broker"
        wait_for(lambda: hq.tracker.highest("gw-crash") >= last, timeout=30, what="head office caught up")
        assert hq.tracker.gaps("gw-crash") == []
        assert hq.store is not None
        stored = {key: seqs for key, seqs in hq.store.seqs().items() if key[0] == "gw-crash"}
        assert len(stored) == 1, f"kill -9 must not start a new epoch: {sorted(stored)}"
        assert next(iter(stored.values())) == list(range(1, last + 1))
        print(
            f"kill 1 at (seq, undelivered) {first_kill}; kill 2 at {second_kill}; final seq {last}; "
            f"duplicates seen {hq.tracker.duplicates.get('gw-crash', 0)}"
        )
    finally:
        if hq is not None:
            hq.stop()
            if hq.store is not None:
                hq.store.close()
        broker.stop()
