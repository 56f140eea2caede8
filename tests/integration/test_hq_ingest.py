"""``pmg hq ingest`` for real: a private PostgreSQL and a private Mosquitto, workers as subprocesses.

Exactly once through a worker's SIGKILL; bad messages quarantined while the stream goes on; one line and
exit 1 when the broker or the database cannot be reached.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support.broker import UNCAPPED_OFFLINE_QUEUE, Mosquitto, free_port
from support.waiting import wait_for

pytestmark = [pytest.mark.broker, pytest.mark.postgres]
PMG = [sys.executable, "-m", "gateway.cli.main"]  # this checkout's pmg (PYTHONPATH below)
EPOCH = "a" * 32
T0 = datetime(2027, 3, 1, tzinfo=UTC)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def ingest(dsn: str, broker: Mosquitto, client_id: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PMG, "hq", "ingest", "--dsn", dsn, "--host", broker.host,
         "--port", str(broker.port), "--plaintext", "--client-id", client_id, "--batch-size", "100", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )


def wait_started(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "consuming" in line, line + (proc.stderr.read() if proc.poll() is not None else "")


def usage(gw: str, seq: int) -> str:
    end = (T0 + timedelta(minutes=seq)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"schema": "pmg.usage/1", "meter_id": "m1", "account_id": "a1", "interval_start": None,
                       "interval_end": end, "register_wh": seq, "energy_wh": 1, "charge": "0.01",
                       "balance": "1.00", "gateway_id": gw, "seq": seq, "epoch": EPOCH})


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker", extra="allow_anonymous true\n" + UNCAPPED_OFFLINE_QUEUE
                  + "max_inflight_messages 1000\n").start()
    try:
        yield b
    finally:
        b.stop()


def publisher(broker: Mosquitto) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="fake-gateways", protocol=paho.MQTTv5)
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(sql).fetchone()[0])


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    return err


def test_two_workers_one_killed_mid_stream_every_message_stored_once(pg_dsn: str, broker: Mosquitto) -> None:
    a, b = ingest(pg_dsn, broker, "w-a"), ingest(pg_dsn, broker, "w-b")
    try:
        wait_started(a)
        wait_started(b)
        pub = publisher(broker)
        gateways, per = [f"gw{i}" for i in range(4)], 1500
        sent = []
        for seq in range(1, per + 1):
            for gw in gateways:
                sent.append(pub.publish(f"pmg/{gw}/meters/m1/usage", usage(gw, seq), qos=1))
            if seq == 200:  # garbage in the middle of the stream
                pub.publish("pmg/gw0/meters/m1/usage", b"{broken", qos=1)
                pub.publish("pmg/gw0/events", json.dumps({"schema": "pmg.event/1", "seq": 3}), qos=1)
            if seq == per // 3:
                wait_for(lambda: count(pg_dsn, "SELECT count(*) FROM received") > 100, 30, what="progress")
                a.send_signal(signal.SIGKILL)
                a.wait(10)
            if seq == 2 * per // 3:
                a = ingest(pg_dsn, broker, "w-a")  # same client id: its session, with what it had not acked
                wait_started(a)
        for info in sent:
            info.wait_for_publish(30)
        total = len(gateways) * per
        wait_for(lambda: count(pg_dsn, "SELECT count(*) FROM received") == total, 90, 0.2, what="all stored")
        assert count(pg_dsn, "SELECT count(*) FROM usage") == total
        assert count(pg_dsn, "SELECT count(DISTINCT (gateway_id, seq)) FROM usage") == total
        assert count(pg_dsn, "SELECT count(*) FROM ledger WHERE kind = 'charge'") == total
        assert count(pg_dsn, "SELECT count(*) FROM quarantine") == 2
        with psycopg.connect(pg_dsn) as conn:
            reasons = sorted(r[0] for r in conn.execute("SELECT reason FROM quarantine"))
        assert reasons == ["gateway_id: does not match the topic's gateway", "not JSON"]
        pub.loop_stop()
        pub.disconnect()
        # both share the load: each stored some
        stats = [json.loads(stop(p).strip().splitlines()[-1]) for p in (a, b)]
        assert all(s["stored"] > 0 for s in stats), stats
        print("worker figures after the kill:", stats)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_ingest_fails_with_one_line_when_it_cannot_connect(pg_dsn: str, broker: Mosquitto) -> None:
    dead_pg = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    r = subprocess.run([*PMG, "hq", "ingest", "--dsn", dead_pg, "--host", broker.host, "--port", str(broker.port), "--plaintext"],
                       capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "cannot connect to PostgreSQL" in r.stderr, r.stderr
    for args in (["--port", str(free_port()), "--plaintext"],  # refused
                 ["--port", str(broker.port)],  # TLS to a plaintext port
                 ["--host", "no-such-host.invalid", "--plaintext"]):
        cmd = [*PMG, "hq", "ingest", "--dsn", pg_dsn, "--host", broker.host, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "cannot connect to the broker" in r.stderr, r.stderr
    for sub in ("gaps", "reconcile", "quarantine"):
        r = subprocess.run([*PMG, "hq", sub, "--dsn", dead_pg],
                           capture_output=True, text=True, env=_env(), timeout=60)
        assert r.returncode == 1 and "cannot connect to PostgreSQL" in r.stderr and r.stderr.count("\n") == 1
