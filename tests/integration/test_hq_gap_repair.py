"""Gap repair end to end: a real gateway, a real Mosquitto, a real PostgreSQL and ``hq.ingest``.

The ingest's session loses messages at the broker after the broker's PUBACK to the gateway (its queued
messages are discarded, as a broker's offline-queue cap or a lost session would): the ingest sees the
gap in (gateway, epoch, seq), waits its delay, signs a ``resend``, and the gateway publishes the range
again; every seq ends up stored once and ``pmg hq gaps`` finds nothing missing.  Every message the
real gateway published passed the ingest's checks (the quarantine stays empty).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.broker import Mosquitto
from support.signed_commands import HQ_KEY, HQ_KEY_ID, Running, running_gateway
from support.waiting import async_wait_for

from gateway.store import outbox
from gateway.sync.signing import write_private_key
from hq.ingest.worker import IngestConfig, IngestWorker

pytestmark = [pytest.mark.broker, pytest.mark.postgres]


def _events(run: Running, n: int, tag: str) -> list[int]:
    seqs = []
    with run.store.tx() as conn:
        for i in range(n):
            now = datetime.now(UTC)
            seqs.append(outbox.put(conn, "events", {
                "schema": "pmg.event/1", "event_id": 10_000 + i, "at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "kind": "test_marker", "severity": "info", "account_id": None, "meter_id": None,
                "actor": "test", "detail": {"tag": tag, "i": i}}, now))
    assert run.gateway.mqtt is not None
    run.gateway.mqtt.notify()
    return seqs


def _forget_session(port: int, client_id: str) -> None:
    """What the broker queued for ``client_id`` is discarded: a clean start with no session expiry."""
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.loop_start()
    c.disconnect()
    c.loop_stop()


def _scalar(dsn: str, sql: str, *args: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchone()[0]


def test_a_gap_left_by_messages_lost_at_the_broker_is_repaired_by_resend(
    tmp_path: Path, mosquitto: Mosquitto, pg_dsn: str
) -> None:
    key_file = tmp_path / "hq.pem"
    write_private_key(key_file, HQ_KEY)
    config = IngestConfig(
        dsn=pg_dsn, host="127.0.0.1", port=mosquitto.port, tls=False, client_id="ingest-0",
        signing_key=key_file, signing_key_id=HQ_KEY_ID, gap_delay_s=1.0, gap_scan_s=0.3, resend_retry_s=30,
    )

    async def scenario() -> None:
        async with running_gateway(tmp_path, mosquitto.port, meters=1) as run:
            link = run.gateway.mqtt
            assert link is not None
            await async_wait_for(lambda: link.stats.subscribed, what="gateway subscribed")
            worker = IngestWorker(config).start()
            try:
                before = _events(run, 5, "before")
                await async_wait_for(
                    lambda: _scalar(pg_dsn, "SELECT count(*) FROM received WHERE seq = ANY(%s)", before) == 5,
                    timeout=20, what="the first five stored")
            finally:
                worker.stop()
            missed = _events(run, 40, "missed")
            await async_wait_for(
                lambda: run.store.scalar("SELECT COUNT(*) FROM outbox WHERE seq <= ? AND delivered_at IS NULL",
                                         missed[-1]) == 0,
                what="the broker acknowledged the 40 to the gateway")
            _forget_session(mosquitto.port, "ingest-0")  # ... and then lost them
            worker = IngestWorker(config).start()
            try:
                after = _events(run, 3, "after")
                await async_wait_for(
                    lambda: _scalar(pg_dsn, "SELECT count(*) FROM received WHERE seq = ANY(%s)", after) == 3,
                    timeout=20, what="the last three stored")
                assert _scalar(pg_dsn, "SELECT count(*) FROM received WHERE seq = ANY(%s)", missed) == 0
                await async_wait_for(
                    lambda: _scalar(pg_dsn, "SELECT count(*) FROM received WHERE seq = ANY(%s) AND resent",
                                    missed) == 40,
                    timeout=30, what="the missed range resent and stored")
                await async_wait_for(lambda: _scalar(pg_dsn, "SELECT count(*) FROM gaps") == 0, timeout=10,
                                     what="the gap closed")
                epoch = _scalar(pg_dsn, "SELECT epoch FROM received WHERE seq = %s", before[0])
                assert _scalar(pg_dsn, "SELECT count(*) FROM resends WHERE epoch = %s", epoch) >= 1
                await async_wait_for(
                    lambda: _scalar(pg_dsn, "SELECT count(ack) FROM resends WHERE epoch = %s", epoch), timeout=10,
                    what="the resend's ack stored with its request")
                ack = _scalar(pg_dsn, "SELECT ack FROM resends WHERE ack IS NOT NULL ORDER BY sent_at LIMIT 1")
                assert ack is not None and ack["status"] == "applied", ack
                assert worker.stats.resends >= 1
            finally:
                worker.stop()
        span = list(range(before[0], after[-1] + 1))
        assert _scalar(pg_dsn, "SELECT count(*) FROM received WHERE seq = ANY(%s)", span) == len(span)
        assert _scalar(pg_dsn, "SELECT count(*) FROM quarantine") == 0, _scalar(
            pg_dsn, "SELECT string_agg(reason || ' ' || topic, '; ') FROM quarantine")

    asyncio.run(scenario())
    r = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "hq", "gaps", "--dsn", pg_dsn],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert r.returncode == 0 and r.stdout.strip() == "nothing missing", r.stdout + r.stderr
