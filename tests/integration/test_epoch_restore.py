"""A restored backup never publishes a seq the head office already holds with other content.

A real daemon publishes to a private Mosquitto; a backup is taken mid-run (SQLite's online backup, as
housekeeping takes them); the daemon goes on publishing, stops, the backup is restored over the
database, and the daemon starts again.  Every message the head office received is keyed by
(gateway_id, epoch, seq): no key may carry two contents, and the restored run's new messages are
under a new epoch (docs/mqtt.md, "Epochs").
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from support.broker import Mosquitto
from support.gateway_harness import subscriber
from support.signed_commands import Running, running_gateway
from support.waiting import async_wait_for

from gateway.store import outbox


def _put(run: Running, tag: str, n: int) -> int:
    with run.store.tx() as conn:
        for i in range(n):
            last = outbox.put(conn, "events", {"schema": "test/1", "tag": tag, "i": i}, datetime.now(UTC))
    assert run.gateway.mqtt is not None
    run.gateway.mqtt.notify()
    return last


async def _drained(run: Running, last: int) -> None:
    await async_wait_for(
        lambda: run.store.scalar("SELECT COUNT(*) FROM outbox WHERE seq <= ? AND delivered_at IS NULL", last) == 0,
        what="delivered",
    )


def test_a_restored_backup_publishes_under_a_new_epoch(tmp_path: Path, mosquitto: Mosquitto) -> None:
    db = tmp_path / "pmg.db"
    backup = tmp_path / "backup.db"
    with subscriber(mosquitto.port, "pmg/gw-test/events") as hq:

        async def first_run() -> None:
            async with running_gateway(tmp_path, mosquitto.port, meters=1) as run:
                await _drained(run, _put(run, "before-backup", 5))
                src = sqlite3.connect(db)
                dst = sqlite3.connect(backup)
                src.backup(dst)
                src.close()
                dst.close()
                await _drained(run, _put(run, "after-backup", 5))

        async def second_run() -> None:
            async with running_gateway(tmp_path, mosquitto.port, meters=1) as run:
                await _drained(run, _put(run, "restored", 5))
                await async_wait_for(lambda: len([b for b in hq.of("/events") if b.get("tag") == "restored"]) == 5,
                                     what="the restored run's messages")  # fmt: skip

        asyncio.run(first_run())
        first = {b["epoch"] for b in hq.of("/events")}
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        backup.rename(db)
        asyncio.run(second_run())
        bodies = hq.of("/events")

    assert len(first) == 1
    by_key: dict[tuple[str, int], str] = {}
    for body in bodies:
        key = (body["epoch"], body["seq"])
        text = json.dumps(body, sort_keys=True)
        assert by_key.setdefault(key, text) == text, f"{key} published with two contents"
    restored = [b for b in bodies if b.get("tag") == "restored"]
    after_backup = [b for b in bodies if b.get("tag") == "after-backup"]
    assert {b["epoch"] for b in restored}.isdisjoint(first)
    assert min(b["seq"] for b in restored) <= max(b["seq"] for b in after_backup)  # seqs did repeat
