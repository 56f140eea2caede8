"""kill -9 during a burst of payments and readings: nothing lost, nothing doubled, verify clean.

A writer subprocess applies payments and charges readings in a loop, each in its own transaction,
and appends the id of each to a side file only after its commit returned.  The test kills it with
SIGKILL at random instants several times (restarting it on the same database), then checks that
every id the writer saw committed is in the ledger exactly once, that replaying every payment after
the restarts applies nothing, that the charged energy is exactly the register advance, and that
``verify`` finds nothing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.ledger_books import REPO, new_ledger

from gateway.ledger.payments import apply_payment
from gateway.ledger.verify import verify
from gateway.store.db import open_store

WRITER = r"""
import os, sys
from datetime import datetime, timedelta, timezone
from drivers.base import Quality, Reading
from gateway.core.calendar import WorkCalendar
from gateway.ledger.charging import record_reading
from gateway.ledger.payments import apply_payment
from gateway.ledger.tariff_book import TariffBook
from gateway.store.db import open_store
from gateway.tariffs.model import load_tariff_dir

db, side, tariffs = sys.argv[1], sys.argv[2], sys.argv[3]
book = TariffBook(load_tariff_dir(tariffs), WorkCalendar("Asia/Shanghai", "CN"))
store = open_store(db)
fd = os.open(side, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
t0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
n = store.scalar("SELECT COUNT(*) FROM readings")
register = store.scalar("SELECT last_register_wh FROM meters WHERE id = 'm1'") or 0
os.write(fd, b"started\n")
while True:
    n += 1
    pid = f"pay-{os.getpid()}-{n}"
    with store.tx() as conn:
        apply_payment(conn, pid, "acc1", 100 + n % 7, t0 + timedelta(minutes=n), source="crash")
    os.write(fd, f"pay {pid} {100 + n % 7}\n".encode())
    register += 97
    at = t0 + timedelta(minutes=n, seconds=30)
    with store.tx() as conn:
        out = record_reading(conn, "m1", Reading("1", at, Quality.OK, energy_import_wh=register),
                             book.pricer(conn), max_power_w=30_000)
    os.write(fd, f"read {out.reading_id} {register}\n".encode())
"""


def _lines(side: Path) -> list[str]:
    return side.read_text().splitlines() if side.exists() else []


@pytest.mark.campaign
def test_kill_9_during_a_burst_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    db, side, script = tmp_path / "l.db", tmp_path / "committed.txt", tmp_path / "writer.py"
    new_ledger(db).close()
    script.write_text(WRITER)
    rng = random.Random(20261129)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    kills = 6
    for _ in range(kills):
        before = len(_lines(side))
        proc = subprocess.Popen(
            [sys.executable, str(script), str(db), str(side), str(REPO / "gateway" / "tariffs" / "examples")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            target = before + 1 + rng.randint(10, 120)
            deadline = time.monotonic() + 60
            while len(_lines(side)) < target:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "writer died"
                assert time.monotonic() < deadline, "writer made no progress"
                time.sleep(0.005)  # polling the side file; the kill instant is whatever the writer is doing
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
            if proc.stderr:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL

    lines = _lines(side)
    payments = [line.split() for line in lines if line.startswith("pay ")]
    reads = [line.split() for line in lines if line.startswith("read ")]
    assert lines.count("started") == kills and len(payments) > kills * 5
    store = open_store(db)
    try:
        # nothing lost
        for _, pid, amount in payments:
            row = store.one("SELECT amount_minor FROM payments WHERE payment_id = ?", pid)
            assert row is not None and row[0] == int(amount), pid
        for _, rid, register in reads:
            row = store.one("SELECT outcome, register_wh FROM readings WHERE id = ?", int(rid))
            assert row is not None and row[1] == int(register) and row[0] in ("baseline", "charged")
        # nothing doubled
        assert store.scalar("SELECT COUNT(*) FROM entries WHERE kind = 'payment'") == store.scalar(
            "SELECT COUNT(*) FROM payments"
        )
        total_paid = store.scalar("SELECT SUM(amount_minor) FROM payments")
        charged = store.scalar("SELECT COALESCE(-SUM(amount_minor), 0) FROM entries WHERE kind = 'charge'")
        assert store.scalar("SELECT balance_minor FROM accounts") == total_paid - charged
        first = store.scalar("SELECT register_wh FROM readings WHERE outcome = 'baseline'")
        last = store.scalar("SELECT last_register_wh FROM meters")
        assert store.scalar("SELECT SUM(energy_wh) FROM entries WHERE kind = 'charge'") == last - first
        assert store.scalar("SELECT COUNT(*) FROM readings WHERE outcome NOT IN ('baseline', 'charged')") == 0
        assert verify(store) == []
        # a replay of every payment after the restarts applies nothing
        snapshot = [tuple(r) for r in store.all("SELECT id, amount_minor FROM entries ORDER BY id")]
        with store.tx() as conn:
            for pid, amount in conn.execute("SELECT payment_id, amount_minor FROM payments").fetchall():
                assert apply_payment(conn, pid, "acc1", amount, datetime.now(UTC), source="replay").replayed
        assert [tuple(r) for r in store.all("SELECT id, amount_minor FROM entries ORDER BY id")] == snapshot
    finally:
        store.close()
