"""Payment to power from another process (docs/enforcement.md, "Payment to power").

The daemon is a real ``pmg run`` child process; the payment is a real ``pmg payment add`` child
process, so it is written by another SQLite connection in another process, as at an office counter.
The paid meter is a DL/T 645 simulator on TCP; nineteen more meters sit on a bus that cannot open and
sort before it, so the daemon's safety-net sweep (one meter per 30 s tick, every meter within
``POLICY_SWEEP_S`` = 600 s) would reach the paid account only after ten minutes: a close within
``BOUND_S`` can only come from the payment itself.

- while the daemon runs, the payment leads to a confirmed close within ``BOUND_S``;
- a payment taken while the daemon is stopped is decided at its start;
- a daemon killed between the payment's commit and its decision (frozen with SIGSTOP, then SIGKILL)
  loses nothing: the mark survives, and the next start closes the relay, for that payment, once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.gateway_harness import base_config, write_config
from support.waiting import wait_for

from gateway.store.db import open_store
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 10.0  # far below the 600 s sweep; the daemon's own figure is well under 1 s (bench/README.md)
OFFLINE = 19  # meters m00..m18 sort before m99: with 20 meters the sweep re-decides one per 30 s tick

pytestmark = pytest.mark.slow


def pmg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


@dataclass
class Rig:
    cfg: Path
    db: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli.main", "run", "-c", str(self.cfg)],
                cwd=REPO,
                stdout=out,
                stderr=out,
            )

    def terminate(self) -> None:
        assert self.proc is not None
        self.proc.terminate()
        assert self.proc.wait(20) == 0, self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        if not self.db.exists():  # the daemon has not created it yet
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return list(conn.execute(sql, params).fetchall())
        except sqlite3.OperationalError:  # ... nor its tables
            return []
        finally:
            conn.close()

    def relay(self, action: str, payment_id: str | None = None) -> list[tuple[object, ...]]:
        sql = "SELECT id FROM relay_commands WHERE meter_id = 'm99' AND action = ? AND status = 'confirmed'"
        if payment_id is None:
            return self.query(sql, action)
        return self.query(sql + " AND payment_id = ?", action, payment_id)

    def cut(self) -> None:
        """Start the daemon and wait for the first poll to cut the unpaid meter (zero credit)."""
        self.start()
        wait_for(lambda: self.relay("trip"), timeout=30, what="m99 cut", interval=0.05)

    def pay(self, payment_id: str) -> float:
        """``pmg payment add`` in its own process; returns the monotonic time it had committed by."""
        done = pmg("payment", "add", "-c", str(self.cfg), "a99", "10.00", "--id", payment_id, "--actor", "counter")
        committed = time.monotonic()
        assert done.returncode == 0, done.stderr
        return committed

    def closed_within(self, payment_id: str, since: float) -> float:
        wait_for(
            lambda: self.relay("direct_close", payment_id),
            timeout=BOUND_S,
            interval=0.02,
            what=f"m99 closed for {payment_id} (daemon log: {self.log})",
        )
        return time.monotonic() - since


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    model = MeterModel("000000000001", profile=LoadProfile((2000,)))
    sim = SimulatedDlt645Bus([model], baud=115200, response_delay_s=0.002)
    daemon: Rig | None = None
    try:
        port = sim.start_tcp()
        db = tmp_path / "pmg.db"
        body = base_config(db)
        body += (
            f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "socket://127.0.0.1:{port}"\nbaud = 115200\n'
            "poll_interval_s = 0.2\ntimeout_s = 0.5\nretries = 1\n"
            '\n[[meters]]\nid = "m99"\nbus = "b1"\naddress = "000000000001"\naccount = "a99"\ntariff = "flat-cn"\n'
            f'\n[[buses]]\nid = "b2"\nprotocol = "dlt645"\nurl = "{tmp_path / "no-such-port"}"\n'
        )
        for i in range(OFFLINE):
            body += (
                f'\n[[meters]]\nid = "m{i:02d}"\nbus = "b2"\naddress = "{i + 2:012d}"\naccount = "a{i:02d}"\n'
                'tariff = "flat-cn"\n'
            )
        daemon = Rig(write_config(tmp_path / "gw.toml", body), db, tmp_path / "daemon.log")
        yield daemon
    finally:
        if daemon is not None:
            daemon.kill()
        sim.stop()


def test_a_payment_from_another_process_closes_the_relay_long_before_the_sweep(rig: Rig) -> None:
    rig.cut()
    committed = rig.pay("cash-1")
    elapsed = rig.closed_within("cash-1", committed)
    assert elapsed < BOUND_S
    assert rig.query("SELECT COUNT(*) FROM policy_inbox") == [(0,)]  # the mark went with the decision
    rig.terminate()


def test_a_payment_taken_while_the_daemon_is_stopped_is_decided_at_start(rig: Rig) -> None:
    rig.cut()
    rig.terminate()
    rig.pay("cash-offline")
    started = time.monotonic()
    rig.start()
    rig.closed_within("cash-offline", started)
    assert rig.query("SELECT COUNT(*) FROM policy_inbox") == [(0,)]
    rig.terminate()


def _write_lock_free(db: Path) -> bool:
    """Whether a writer could start now (a daemon frozen inside its transaction would hold the lock)."""
    conn = sqlite3.connect(db, timeout=0.2, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()


def test_a_daemon_killed_between_the_commit_and_the_decision_loses_nothing(rig: Rig) -> None:
    rig.cut()
    assert rig.proc is not None
    pid = rig.proc.pid

    def frozen_outside_a_transaction() -> bool:
        os.kill(pid, signal.SIGSTOP)
        if _write_lock_free(rig.db):
            return True
        os.kill(pid, signal.SIGCONT)  # stopped mid-commit: let it finish and freeze it again
        time.sleep(0.05)
        return False

    wait_for(frozen_outside_a_transaction, timeout=10, what="the daemon frozen between transactions")
    rig.pay("cash-crash")  # committed while the daemon cannot decide ...
    rig.kill()  # ... and it dies without having decided
    assert rig.query("SELECT account_id, payment_id FROM policy_inbox") == [("a99", "cash-crash")]
    assert rig.query("SELECT COUNT(*) FROM relay_commands WHERE payment_id = 'cash-crash'") == [(0,)]
    started = time.monotonic()
    rig.start()
    rig.closed_within("cash-crash", started)
    rig.terminate()
    store = open_store(rig.db)
    try:
        assert store.scalar("SELECT COUNT(*) FROM payments WHERE payment_id = 'cash-crash'") == 1
        assert store.scalar("SELECT COUNT(*) FROM entries WHERE kind = 'payment' AND external_id = 'cash-crash'") == 1
        assert store.scalar("SELECT COUNT(*) FROM relay_commands WHERE payment_id = 'cash-crash'") == 1
        assert store.scalar("SELECT COUNT(*) FROM policy_inbox") == 0
    finally:
        store.close()
