"""The daemon publishes period reports on ``reports`` through its own scheduler (apscheduler) and clock.

A real gateway whose clock runs a day a second (the meters' too), a simulated meter on a pty, a private
Mosquitto: within seconds the scheduled job (run every second here) has queued the reports of the days
(and any week, dekad or month) that ended, each exactly once, validating against
gateway/contract/report.json.  And a process killed with SIGKILL while it queues reports loses and
doubles none.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from support.broker import Mosquitto
from support.gateway_harness import subscriber
from support.signed_commands import running_gateway
from support.waiting import async_wait_for

from gateway.runtime import jobs
from gateway.store import outbox
from gateway.store.db import open_store
from gateway.sync.contract import load_schema

REPO = Path(__file__).resolve().parents[2]


def test_the_running_gateway_publishes_each_ended_day_once(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the job every real second rather than every minute: at a day a second, a run a day
    monkeypatch.setattr(
        jobs, "JOBS", tuple((n, m, 1.0 if n == "reports" else i) for n, m, i in jobs.JOBS)
    )
    with subscriber(mosquitto.port, "pmg/gw-test/reports") as hq:

        async def scenario() -> None:
            async with running_gateway(tmp_path, mosquitto.port, meters=1, speed=86_400.0) as run:
                await async_wait_for(lambda: len(hq.of("/reports")) >= 2, timeout=30, what="two reports")
                queued = run.store.scalar("SELECT COUNT(*) FROM reports_published")
                await async_wait_for(
                    lambda: len(hq.of("/reports")) >= queued, timeout=10, what="every queued report"
                )

        asyncio.run(scenario())
        reports = hq.of("/reports")
    validator = jsonschema.Draft202012Validator(load_schema("report"))
    for body in reports:
        errors = list(validator.iter_errors(body))
        assert not errors, f"{errors[0].message} in {body}"
    periods = Counter((b["period"], b["period_start"]) for b in reports)
    assert periods and max(periods.values()) == 1, periods
    days = sorted(b["period_start"] for b in reports if b["period"] == "day")
    assert days, reports
    assert all(b["accounts"] and b["accounts"][0]["account_id"] == "acc1" for b in reports)
    assert len({b["epoch"] for b in reports}) == 1


_CHILD = """
import asyncio, sys
from datetime import timedelta
from zoneinfo import ZoneInfo
from support.ledger_books import T0
from gateway.store.db import open_store
from gateway.sync import report_publisher

store = open_store(sys.argv[1])
tz = ZoneInfo("Asia/Shanghai")
print("READY", flush=True)

async def main():
    for hour in range(24 * 75):  # an hour of the gateway's clock per step: 75 days
        await report_publisher.publish_due(store, tz, T0 + timedelta(hours=hour), currency="CNY", digits=2)
    print("DONE", flush=True)

asyncio.run(main())
"""


def test_kill_9_while_publishing_reports_loses_and_doubles_none(tmp_path: Path) -> None:
    """A process killed with SIGKILL at random moments while it queues reports, started again each time:
    every period that ended is queued exactly once, with its row."""
    import random
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from support.ledger_books import T0, make_book, new_ledger, reading

    from gateway.ledger.charging import record_reading

    db = tmp_path / "pmg.db"
    store = new_ledger(db)
    book = make_book(tmp_path)
    with store.tx() as conn:
        for hour in range(0, 24 * 75):
            record_reading(conn, "m1", reading(hour * 100, T0 + timedelta(hours=hour)), book.pricer(conn),
                           max_power_w=30_000)  # fmt: skip
    store.close()
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    kills, queued = 0, []
    for _ in range(10):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(db)], stdout=subprocess.PIPE, env=env)
        try:
            assert child.stdout is not None and child.stdout.readline().startswith(b"READY")
            time.sleep(rng.uniform(0.0, 0.25))  # the moment of the kill, not a wait for state
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                kills += 1
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(30)
        conn = sqlite3.connect(db)
        queued.append(conn.execute("SELECT COUNT(*) FROM reports_published").fetchone()[0])
        conn.close()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(db)], capture_output=True, text=True, env=env, timeout=300)
    assert "DONE" in done.stdout, done.stderr
    assert kills >= 3 and any(0 < q < 93 for q in queued), f"the kills must land while it works: {queued}"

    store = open_store(db)
    rows = store.all("SELECT period, period_start, seq FROM reports_published ORDER BY seq")
    bodies = {m.seq: json.loads(m.payload) for m in outbox.pending(store, 0, 100_000) if m.topic == "reports"}
    assert sorted(bodies) == [r["seq"] for r in rows]  # every row has its message, and no message lacks one
    labels = Counter((b["period"], b["label"]) for b in bodies.values())
    assert max(labels.values()) == 1
    by_period = Counter(p for p, _ in labels)
    # from 2 March 2026 (a Monday), 00:00 local, to 15 May 23:00: 74 days, 10 weeks, 7 dekads (from the
    # one containing 2 March), 2 months ended
    assert by_period == {"day": 74, "week": 10, "dekad": 7, "month": 2}, by_period
    store.close()
