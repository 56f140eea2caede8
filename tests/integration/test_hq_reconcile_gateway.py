"""Reconciliation against a real gateway: its own reports agree with what the ingest replicated.

A real gateway whose clock runs a day a second (its meter's too) publishes usage, events and the
reports of the days that ended; ``hq.ingest`` stores them in a real PostgreSQL; ``pmg hq reconcile``
finds the head office's energy, charges, payments and closing balances equal to every report's, and the
chain heads of its status consistent.  A figure altered at the head office is then reported, exit 1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support.broker import Mosquitto
from support.signed_commands import running_gateway
from support.waiting import async_wait_for

from gateway.runtime import jobs
from hq.ingest.worker import IngestConfig, IngestWorker

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


def _scalar(dsn: str, sql: str) -> Any:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchone()[0]


def _reconcile(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "hq", "reconcile", "--dsn", dsn], capture_output=True,
        text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


def test_the_replicated_ledger_agrees_with_the_gateways_reports(
    tmp_path: Path, mosquitto: Mosquitto, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs, "JOBS", tuple((n, m, 1.0 if n == "reports" else i) for n, m, i in jobs.JOBS))
    config = IngestConfig(dsn=pg_dsn, host="127.0.0.1", port=mosquitto.port, tls=False, client_id="rec-0",
                          gap_delay_s=3600)
    worker = IngestWorker(config).start()
    try:
        async def scenario() -> None:
            async with running_gateway(tmp_path, mosquitto.port, meters=1, speed=86_400.0, poll_s=600) as run:
                await async_wait_for(lambda: _scalar(pg_dsn, "SELECT count(*) FROM received WHERE kind = 'report' "
                                                     "AND body->>'period' = 'day'") >= 3,
                                     timeout=60, what="three daily reports stored")
                link = run.gateway.mqtt
                assert link is not None
                await async_wait_for(lambda: link.stats.subscribed, what="link up")
            # the gateway stopped: let the ingest take what it had sent
            await async_wait_for(lambda: worker._inbox.empty(), timeout=10, what="ingest idle")

        asyncio.run(scenario())
    finally:
        worker.stop()
    assert _scalar(pg_dsn, "SELECT count(*) FROM quarantine") == 0
    assert _scalar(pg_dsn, "SELECT count(*) FROM usage") > 0
    r = _reconcile(pg_dsn)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 mismatch(es)" in r.stdout and "chain head" in r.stdout, r.stdout
    # One usage row altered at the head office: found.  The row must lie in a reported day: the first
    # usage message (the baseline) can fall before the first day a report covers, depending on the
    # hour of the day the test starts at.
    with psycopg.connect(pg_dsn) as conn:
        altered = conn.execute(
            "UPDATE usage SET charge = charge + 0.01 WHERE (gateway_id, epoch, seq) = "
            "(SELECT u.gateway_id, u.epoch, min(u.seq) FROM usage u JOIN received r ON r.kind = 'report' "
            "AND r.body->>'period' = 'day' AND u.interval_end >= (r.body->>'period_start')::timestamptz "
            "AND u.interval_end < (r.body->>'period_end')::timestamptz GROUP BY 1, 2 LIMIT 1)"
        ).rowcount
    assert altered == 1
    r = _reconcile(pg_dsn)
    assert r.returncode == 1 and ": charges report " in r.stdout and "head office" in r.stdout, r.stdout
