"""Readings of all buses are charged in one transaction per moment, one savepoint per reading."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.gateway_harness import offline_config
from support.waiting import async_wait_for

from drivers.base import Quality, Reading, RelayState
from gateway.config import load_config
from gateway.runtime.daemon import Gateway


def _gateway(tmp_path: Path, meters: int) -> Gateway:
    # A bus that cannot open: only the readings this test hands over reach the ledger.
    cfg_path = offline_config(tmp_path, meters)
    return Gateway(cfg_path, load_config(cfg_path))


def _reading(wh: int) -> Reading:
    return Reading("x", datetime(2026, 3, 2, 1, 0, tzinfo=UTC), Quality.OK, energy_import_wh=wh, relay=RelayState.CLOSED)


def test_readings_of_a_moment_share_one_commit_and_a_bad_one_spoils_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = _gateway(tmp_path, 3)

    async def scenario() -> None:
        await gateway.start()
        store = gateway.store
        statements: list[str] = []
        try:
            # m1's row is gone (as if removed behind the daemon's back): its reading cannot be recorded
            store.conn.execute("DELETE FROM meters WHERE id = 'm1'")
            store.conn.set_trace_callback(statements.append)
            for i in range(3):
                gateway._on_reading(f"m{i}", _reading(1000), 0.01)
            assert store.scalar("SELECT COUNT(*) FROM readings") == 0, "nothing is charged before the batch commits"
            await async_wait_for(lambda: store.scalar("SELECT COUNT(*) FROM readings") == 2, what="the batch")
            store.conn.set_trace_callback(None)
            inserts = [i for i, sql in enumerate(statements) if sql.lstrip().startswith("INSERT INTO readings")]
            commits = [i for i, sql in enumerate(statements) if sql.strip() == "COMMIT"]
            assert len(inserts) == 2
            assert not [c for c in commits if inserts[0] < c < inserts[-1]], "one transaction for the batch"
            assert [r[0] for r in store.all("SELECT meter_id FROM readings ORDER BY id")] == ["m0", "m2"]
            assert any(
                getattr(r, "pmg_fields", {}).get("meter") == "m1" and r.levelno >= logging.ERROR for r in caplog.records
            )
        finally:
            await gateway.stop()

    asyncio.run(scenario())


def test_readings_still_queued_at_stop_are_charged_before_the_store_closes(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path, 2)

    async def scenario() -> None:
        await gateway.start()
        for i in range(2):
            gateway._on_reading(f"m{i}", _reading(500), 0.01)
        await gateway.stop()

    asyncio.run(scenario())
    from gateway.store.db import open_store

    store = open_store(tmp_path / "pmg.db")
    try:
        assert store.scalar("SELECT COUNT(*) FROM readings WHERE outcome = 'baseline'") == 2
    finally:
        store.close()
