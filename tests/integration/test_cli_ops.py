"""Technician commands: ``pmg meters``, ``meter show``, ``events [--follow]``, ``status``, ``doctor``.

Each command is run through the real click entry point against a real (seeded) database; each has a
malformed-argument case checking the one-line error and the exit status (2 = bad input).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.gateway_harness import base_config, write_config

from gateway.cli.main import cli
from gateway.config import load_config
from gateway.core.timeutil import iso
from gateway.ledger.accounts import seed_from_config
from gateway.runtime.service import InstanceLock
from gateway.runtime.status import META_STATUS
from gateway.store import events
from gateway.store.db import Store, dumps, open_store

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    body = base_config(tmp_path / "pmg.db") + (
        f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{tmp_path / "no-such-tty"}"\n'
        + "".join(
            f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "00000000000{i}"\naccount = "a{i}"\n'
            'tariff = "flat-cn"\n'
            for i in (1, 2)
        )
    )
    path = write_config(tmp_path / "gw.toml", body)
    store = open_store(tmp_path / "pmg.db")
    try:
        seed_from_config(store, load_config(path), NOW)
        with store.tx() as conn:
            conn.execute("UPDATE meters SET comms_ok = 9, comms_failed = 1 WHERE id = 'm1'")
            conn.execute(
                "UPDATE meters SET comms_failed = 4, last_comms_error = 'timeout after 1.0 s' WHERE id = 'm2'"
            )
            events.record(conn, "relay_confirmed", NOW, meter_id="m1", account_id="a1", detail={"x": 1})
    finally:
        store.close()
    return path


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="pmg")


def _one_line_error(result: Result, status: int, needle: str) -> None:
    assert result.exit_code == status, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmg: error: "), result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.output + result.stderr


def test_meters_show_comms_health(cfg_path: Path) -> None:
    result = _run("meters", "-c", str(cfg_path), "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["id"]: r for r in json.loads(result.stdout)}
    assert rows["m1"]["comms"] == "90% ok" and rows["m1"]["reachable"] is True
    assert rows["m2"]["comms"] == "UNREACHABLE (0% ok)" and rows["m2"]["reachable"] is False
    table = _run("meters", "-c", str(cfg_path))
    assert "UNREACHABLE" in table.stdout and table.exit_code == 0


def test_meters_with_a_missing_config_is_one_line(tmp_path: Path) -> None:
    _one_line_error(_run("meters", "-c", str(tmp_path / "nope.toml")), 2, "nope.toml")


def test_meter_show(cfg_path: Path) -> None:
    result = _run("meter", "show", "m1", "-c", str(cfg_path), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["id"] == "m1" and data["account_id"] == "a1"
    assert [e["kind"] for e in data["events"]] == ["relay_confirmed"]
    assert "m1" in _run("meter", "show", "m1", "-c", str(cfg_path)).stdout


def test_meter_show_rejects_malformed_and_unknown_ids(cfg_path: Path) -> None:
    _one_line_error(_run("meter", "show", "m 1;drop", "-c", str(cfg_path)), 2, "not a meter id")
    _one_line_error(_run("meter", "show", "m9", "-c", str(cfg_path)), 2, "no meter 'm9' (meters: m1, m2)")
    _one_line_error(
        _run("meter", "show", "m11", "-c", str(cfg_path)), 2, "no meter 'm11' (did you mean m1? meters: m1, m2)"
    )
    _one_line_error(_run("meter", "show", "m1", "-c", str(cfg_path), "--readings", "-3"), 2, "--readings")


def test_events_filters_and_bad_limit(cfg_path: Path) -> None:
    result = _run("events", "-c", str(cfg_path), "--json", "--meter", "m1")
    assert result.exit_code == 0
    assert [e["kind"] for e in json.loads(result.stdout)] == ["relay_confirmed"]
    assert json.loads(_run("events", "-c", str(cfg_path), "--json", "--meter", "m2").stdout) == []
    _one_line_error(_run("events", "-c", str(cfg_path), "--limit", "0"), 2, "--limit")
    _one_line_error(_run("events", "-c", str(cfg_path), "--meter", "bad id"), 2, "not a meter id")


def test_events_follow_prints_new_events_as_they_are_committed(cfg_path: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "events", "-c", str(cfg_path), "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["kind"] == "relay_confirmed"
        store = open_store(tmp_path / "pmg.db")
        try:
            with store.tx() as conn:
                events.record(conn, "comms_lost", NOW, meter_id="m2", severity="warning")
        finally:
            store.close()
        line = proc.stdout.readline()  # blocks until the follower prints it (the test timeout bounds it)
        assert json.loads(line)["kind"] == "comms_lost"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def _snapshot(store: Store, written: datetime, *, stopped: bool = False) -> None:
    snap = {
        "written_at": iso(written),
        "interval_s": 10.0,
        "buses": {
            "b1": {
                "meters": 2,
                "polls_ok": 9,
                "polls_failed": 5,
                "error_rate": 0.3571,
                "failed_by_kind": {"timeout": 5},
                "last_latency_ms": 120.0,
                "heartbeat_age_s": 0.4,
            }
        },
        "broker": {"connected": False, "last_error": "connection refused"},
    }
    if stopped:
        snap["stopped_at"] = iso(written)
    with store.tx():
        store.meta_set(META_STATUS, dumps(snap))


def test_status_reports_daemon_buses_outbox_and_unreachable_meters(cfg_path: Path, tmp_path: Path) -> None:
    never = _run("status", "-c", str(cfg_path), "--json")
    assert never.exit_code == 1 and json.loads(never.stdout)["daemon"] == "never ran"
    store = open_store(tmp_path / "pmg.db")
    try:
        _snapshot(store, datetime.now(UTC))
    finally:
        store.close()
    lock = InstanceLock(tmp_path / "pmg.db")  # what a running daemon holds
    lock.acquire()
    try:
        result = _run("status", "-c", str(cfg_path), "--json")
        human = _run("status", "-c", str(cfg_path))
    finally:
        lock.release()
    data = json.loads(result.stdout)
    assert data["daemon"] == "running"
    assert data["live"]["buses"]["b1"]["error_rate"] == 0.3571
    assert [m["meter"] for m in data["meters_unreachable"]] == ["m2"]
    assert data["outbox"]["messages"] >= 1  # the event queued for the head office
    assert data["accounts_by_state"] == {"normal": 2}
    assert result.exit_code == 1  # a meter is unreachable
    assert "DISCONNECTED" in human.stdout and "unreachable meters" in human.stdout
    assert "None" not in human.stdout


def test_status_of_a_killed_daemon_says_stopped_and_shows_no_live_broker(cfg_path: Path, tmp_path: Path) -> None:
    """A fresh snapshot whose writer is gone (kill -9: nobody holds the instance lock) is history."""
    store = open_store(tmp_path / "pmg.db")
    try:
        snap_at = datetime.now(UTC)
        _snapshot(store, snap_at)
    finally:
        store.close()
    result = _run("status", "-c", str(cfg_path), "--json")
    data = json.loads(result.stdout)
    assert result.exit_code == 1
    assert data["daemon"] == "stopped" and data["live"] is None
    assert data["snapshot_at"] == snap_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    human = _run("status", "-c", str(cfg_path)).stdout
    assert human.startswith("daemon: STOPPED (last seen ") and "broker" not in human


def test_status_says_when_the_snapshot_is_stale(cfg_path: Path, tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    try:
        _snapshot(store, datetime(2020, 1, 1, tzinfo=UTC))
    finally:
        store.close()
    lock = InstanceLock(tmp_path / "pmg.db")  # a daemon that holds its lock but writes nothing: stuck
    lock.acquire()
    try:
        data = json.loads(_run("status", "-c", str(cfg_path), "--json").stdout)
    finally:
        lock.release()
    assert data["daemon"] == "not responding" and data["live"] is None


def test_status_bad_option_and_missing_database(cfg_path: Path, tmp_path: Path) -> None:
    _one_line_error(_run("status", "-c", str(cfg_path), "--jsn"), 2, "--jsn")
    (tmp_path / "pmg.db").unlink()
    _one_line_error(_run("status", "-c", str(cfg_path)), 1, "no database")


def test_doctor_finds_the_missing_serial_device(cfg_path: Path) -> None:
    result = _run("doctor", "-c", str(cfg_path), "--json")
    assert result.exit_code == 1, result.stderr
    data = json.loads(result.stdout)
    assert data["ok"] is False
    checks = {c["name"]: c for c in data["checks"]}
    assert {"table": "meters", "rows": 2} in data["tables"]
    assert checks["database"]["status"] == "ok"
    assert checks["serial b1"]["status"] == "fail" and "does not exist" in checks["serial b1"]["detail"]
    assert checks["bus b1"]["status"] == "fail"
    assert checks["broker"]["status"] == "skip"
    assert checks["disk"]["status"] in ("ok", "warn")
    assert checks["clock"]["status"] in ("ok", "warn", "fail")


def test_doctor_detects_a_corrupt_database(cfg_path: Path, tmp_path: Path) -> None:
    db = tmp_path / "pmg.db"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    data = bytearray(db.read_bytes())
    data[4096 : 4096 + 512] = os.urandom(512)  # damage a page past the header
    db.write_bytes(bytes(data))
    result = _run("doctor", "-c", str(cfg_path), "--json")
    assert result.exit_code == 1, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["database"]["status"] == "fail", checks["database"]
    assert checks["disk"]["status"] in ("ok", "warn")  # the other checks still ran


def test_doctor_bad_option(cfg_path: Path) -> None:
    _one_line_error(_run("doctor", "-c", str(cfg_path), "--verbose-please"), 2, "--verbose-please")
