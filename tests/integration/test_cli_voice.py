"""One voice for the command line: every command's ``--json``, its instants and exit statuses, and
every table at 80 columns (docs/operations.md, "Reading pmg's output").

A small site is built with fixed instants (readings, a payment, events, a refused cut, an unreachable
meter) in Asia/Shanghai (+08:00), so that the output is the same on every run and the tables can be
compared with snapshots in ``snapshots/cli_80/``.  ``PMG_UPDATE_SNAPSHOTS=1`` rewrites them (then read
the diff: a snapshot is only as good as its review).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.cells import cell_len
from support.gateway_harness import base_config, write_config

from drivers.base import Quality, Reading, RelayAction
from gateway.cli.main import cli
from gateway.config import load_config
from gateway.ledger.accounts import seed_from_config
from gateway.ledger.charging import record_reading
from gateway.ledger.payments import apply_payment
from gateway.runtime.components import build_components
from gateway.store import events, relay_queue
from gateway.store.db import open_store

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots" / "cli_80"
T0 = datetime(2026, 12, 2, 15, 46, 30, 123456, tzinfo=UTC)  # 23:46:30 +08:00
JSON_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
LOOKS_LIKE_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
HUMAN_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{2}:\d{2}")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    body = base_config(tmp_path / "pmg.db") + (
        f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{tmp_path / "no-such-tty"}"\n'
        + "".join(
            f'\n[[meters]]\nid = "M-0{i}"\nbus = "b1"\naddress = "00000000000{i}"\naccount = "A-0{i}"\n'
            'tariff = "flat-cn"\n'
            for i in (1, 2, 3)
        )
    )
    path = write_config(tmp_path / "gw.toml", body)
    cfg = load_config(path)
    store = open_store(tmp_path / "pmg.db")
    try:
        seed_from_config(store, cfg, T0)
        book = build_components(cfg, path, store).book
        for i, (hours, wh) in enumerate(((0, 100_000), (1, 102_500), (2, 104_000))):
            reading = Reading("000000000001", T0 + timedelta(hours=hours), Quality.OK, energy_import_wh=wh)
            with store.tx() as conn:
                record_reading(conn, "M-01", replace(reading), book.pricer(conn), max_power_w=30_000)
            del i
        with store.tx() as conn:
            apply_payment(conn, "pay-1", "A-01", 5000, T0 + timedelta(hours=3), source="cli:ann")
            conn.execute(
                "UPDATE meters SET comms_ok = 9, comms_failed = 3, last_comms_error = 'timeout after 1.0 s' "
                "WHERE id = 'M-02'"
            )
            # A cut the meter refused: the policy says disconnected, the relay still reads closed.
            conn.execute("UPDATE accounts SET policy_state = 'disconnected' WHERE id = 'A-03'")
            conn.execute("UPDATE meters SET relay = 'closed', relay_at = ? WHERE id = 'M-03'", (T0.isoformat(),))
            cut_at = T0 + timedelta(hours=3, minutes=30)
            command = relay_queue.request(conn, "M-03", RelayAction.TRIP, cut_at, reason="credit exhausted", actor="policy")
            conn.execute(
                "UPDATE relay_commands SET status = 'failed', outcome = 'refused relay trip: other' WHERE id = ?",
                (command,),
            )
            events.record(
                conn,
                "relay_failed",
                cut_at + timedelta(minutes=5),
                severity="alarm",
                account_id="A-03",
                meter_id="M-03",
                detail={"command_id": command, "action": "trip", "error": "refused relay trip: other"},
            )
            events.record(
                conn,
                "meter_clock_drift",
                T0 + timedelta(hours=4),
                meter_id="M-01",
                detail={"bus": "b1", "drift_s": {"M-01": -316.7}},
            )
    finally:
        store.close()
    return path


def pmg(*args: str, columns: int = 80) -> Result:
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(cli, list(args), prog_name="pmg")


def instants(value: Any) -> list[str]:
    """Every string in ``value`` that looks like a date-time (whatever its form)."""
    if isinstance(value, str):
        return [value] if LOOKS_LIKE_INSTANT.match(value) else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in instants(v)]
    if isinstance(value, list):
        return [t for v in value for t in instants(v)]
    return []


# command, exit status, the JSON's top-level shape (a list's items: their keys)
READ_ONLY: list[tuple[tuple[str, ...], int, type, set[str]]] = [
    (("meters",), 0, list, {"id", "account_id", "balance", "state", "policy_state", "relay", "last_reading_at"}),
    (("meter", "show", "M-01"), 0, dict, {"id", "balance", "state", "readings", "events", "relay_commands_open"}),
    (("events",), 0, list, {"id", "at", "kind", "severity", "account_id", "meter_id", "actor", "detail"}),
    (("balance", "A-01"), 0, dict, {"account", "balance", "currency", "policy_state", "recent_entries"}),
    (("ledger", "verify"), 0, dict, {"ok", "accounts", "entries", "payments", "chain_head", "mismatches"}),
    (("ledger", "export"), 0, list, {"id", "created_at", "account_id", "kind", "amount", "detail"}),
    (("report", "--from", "2026-12-01", "--to", "2026-12-03"), 0, dict, {"period", "currency", "rows"}),
    (("report", "collection"), 0, dict, {"accounts", "arrears", "payments_received", "currency"}),
    (("audit", "export"), 0, list, {"id", "at", "kind", "actor", "rules", "detail"}),
    (("explain", "A-01", "--at", "2026-12-03T09:00"), 0, list, {"meter_id", "at", "state", "text"}),
    (("status",), 1, dict, {"daemon", "live", "snapshot_at", "meters_unreachable", "outbox", "time"}),
    (("doctor",), 1, dict, {"ok", "checks", "tables"}),
]


@pytest.mark.parametrize(("args", "status", "shape", "keys"), READ_ONLY, ids=[" ".join(c[0]) for c in READ_ONLY])
def test_every_read_command_prints_json_with_utc_instants(
    site: Path, args: tuple[str, ...], status: int, shape: type, keys: set[str]
) -> None:
    result = pmg(*args, "--json", "-c", str(site))
    assert result.exit_code == status, (result.stdout, result.stderr)
    data = json.loads(result.stdout)
    assert isinstance(data, shape)
    first = data[0] if isinstance(data, list) else data
    assert keys <= set(first), sorted(set(first))
    found = instants(data)
    assert found or args[:2] in (("ledger", "verify"), ("report", "--from"), ("report", "collection"), ("doctor",))
    bad = [t for t in found if not JSON_INSTANT.match(t)]
    assert not bad, f"instants not ISO 8601 UTC to the second: {bad[:5]}"
    # JSON values are JSON: no JSON text inside JSON.
    assert "detail_json" not in result.stdout and '"{' not in result.stdout


def test_writing_commands_print_json_too(site: Path) -> None:
    cfg = str(site)
    cases = [
        (("payment", "add", "A-02", "10.00", "--id", "p-2", "--actor", "ann"), {"payment_id", "balance", "supply"}),
        (("ledger", "adjust", "A-02", "-1.50", "--reason", "misread", "--actor", "ann"), {"applied", "balance"}),
        (("ledger", "debt", "A-02", "3.00", "--reason", "old bill", "--actor", "ann"), {"applied", "debt_outstanding"}),
        (("relay", "M-02", "close", "--reason", "test", "--actor", "ann"), {"command_id", "until", "daemon_running"}),
    ]
    for args, keys in cases:
        result = pmg(*args, "--json", "-c", cfg)
        assert result.exit_code == 0, (args, result.stderr)
        data = json.loads(result.stdout)
        assert keys <= set(data), (args, sorted(data))
        assert all(JSON_INSTANT.match(t) for t in instants(data)), (args, instants(data))


def test_json_wins_over_format_and_export_is_exact(site: Path) -> None:
    cfg = str(site)
    both = pmg("report", "--format", "csv", "--json", "--from", "2026-12-01", "--to", "2026-12-03", "-c", cfg)
    assert both.exit_code == 0 and json.loads(both.stdout)["currency"] == "CNY"
    audit = pmg("audit", "export", "--format", "csv", "--json", "-c", cfg)
    assert audit.exit_code == 0 and isinstance(json.loads(audit.stdout), list)
    exported = pmg("ledger", "export", "--csv", "--account", "A-01", "-c", cfg)
    assert exported.exit_code == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [r["kind"] for r in rows] == ["payment", "charge", "charge"]  # newest first
    assert rows[0]["amount"] == "50.00" and rows[0]["created_at"] == "2026-12-02T18:46:30Z"
    oldest = pmg("ledger", "export", "--json", "--reverse", "--account", "A-01", "-c", cfg)
    assert [r["kind"] for r in json.loads(oldest.stdout)] == ["charge", "charge", "payment"]
    window = pmg("ledger", "export", "--json", "--from", "2026-12-03T01:00", "--to", "2026-12-03T02:00", "-c", cfg)
    assert [r["kind"] for r in json.loads(window.stdout)] == ["charge"]  # local 01:46:30 +08:00


def test_events_detail_is_an_object_newest_first(site: Path) -> None:
    data = json.loads(pmg("events", "--json", "-c", str(site)).stdout)
    assert [e["id"] for e in data] == sorted((e["id"] for e in data), reverse=True)
    drift = next(e for e in data if e["kind"] == "meter_clock_drift")
    assert drift["detail"] == {"bus": "b1", "drift_s": {"M-01": -316.7}}
    oldest = json.loads(pmg("events", "--json", "--reverse", "-c", str(site)).stdout)
    assert [e["id"] for e in oldest] == sorted(e["id"] for e in data)


def test_human_times_are_local_with_offset_or_utc(site: Path) -> None:
    local = pmg("balance", "A-01", "-c", str(site)).stdout
    assert "2026-12-03 02:46:30 +08:00" in local  # the payment, T0 + 3 h, in Asia/Shanghai
    assert "T18:46" not in local and ".123456" not in local
    for args in (("--utc", "balance", "A-01"), ("balance", "A-01", "--utc")):
        utc = pmg(*args, "-c", str(site)).stdout
        assert "2026-12-02 18:46:30 +00:00" in utc and "+08:00" not in utc


UNKNOWN = [
    ("events", "--meter", "M-1"),
    ("events", "--account", "A-1"),
    ("meter", "show", "M-1"),
    ("meter", "read-now", "M-1"),
    ("balance", "A-1"),
    ("explain", "A-1"),
    ("relay", "M-1", "open", "--reason", "x", "--actor", "ann"),
    ("payment", "add", "A-1", "1.00", "--actor", "ann"),
    ("ledger", "adjust", "A-1", "1.00", "--reason", "x", "--actor", "ann"),
    ("ledger", "debt", "A-1", "1.00", "--reason", "x", "--actor", "ann"),
    ("ledger", "export", "--account", "A-1"),
    ("report", "--account", "A-1"),
    ("audit", "export", "--meter", "M-1"),
    ("notice", "deliver", "A-1", "--actor", "ann"),
    ("meter", "replace", "M-1", "--final-register", "1", "--new-address", "1", "--reason", "x", "--actor", "a"),
    ("meter", "accept-reading", "M-1", "--charge", "--reason", "x", "--actor", "ann"),
]


@pytest.mark.parametrize("args", UNKNOWN, ids=[" ".join(a[:2]) for a in UNKNOWN])
def test_an_unknown_meter_or_account_is_exit_2_with_close_matches_first(site: Path, args: tuple[str, ...]) -> None:
    before = row_counts(site.parent / "pmg.db")
    result = pmg(*args, "-c", str(site))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    (line,) = result.stderr.strip().splitlines()
    kind = "meter" if "M-1" in args else "account"
    assert f"did you mean {kind[0].upper()}-01" in line, line
    assert row_counts(site.parent / "pmg.db") == before, "bad input changed the database"


def row_counts(db: Path) -> dict[str, int]:
    store = open_store(db, readonly=True)
    try:
        # ``meta`` aside: any writing command pins the money unit there on its first open.
        tables = [r[0] for r in store.all("SELECT name FROM sqlite_master WHERE type = 'table' AND name != 'meta'")]
        return {t: int(store.scalar(f"SELECT COUNT(*) FROM {t}")) for t in tables}
    finally:
        store.close()


def test_a_refused_cut_shows_the_meter_as_it_is(site: Path) -> None:
    rows = {r["id"]: r for r in json.loads(pmg("meters", "--json", "-c", str(site)).stdout)}
    assert rows["M-03"]["policy_state"] == "disconnected" and rows["M-03"]["relay"] == "closed"
    assert rows["M-03"]["state"] == "cut failed"
    assert rows["M-01"]["state"] == rows["M-01"]["policy_state"]


def test_explain_speaks_the_configured_currency(site: Path) -> None:
    out = pmg("explain", "A-01", "--at", "2026-12-03T09:00", "-c", str(site)).stdout
    assert "XXX" not in out and " CNY" in out
    assert "At Thu 2026-12-03 09:00:00 +08:00" in out


def test_no_python_repr_reaches_a_person(site: Path) -> None:
    for args in (("status",), ("meters",), ("meter", "show", "M-02"), ("events",), ("doctor",)):
        out = pmg(*args, "-c", str(site)).stdout
        assert not re.search(r"\bNone\b|\{'|\bTrue\b|\bFalse\b", out), (args, out)


# -- tables at 80 columns ---------------------------------------------------------------------------
TABLES = {
    "meters": ("meters",),
    "meter_show": ("meter", "show", "M-01"),
    "balance": ("balance", "A-01"),
    "events": ("events",),
    "report": ("report", "--from", "2026-12-01", "--to", "2026-12-03"),
    "collection": ("report", "collection", "--from", "2026-12-01", "--to", "2026-12-03"),
}


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_table_at_80_columns_matches_its_snapshot(site: Path, name: str) -> None:
    result = pmg(*TABLES[name], "-c", str(site))
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    wide = [line for line in text.splitlines() if cell_len(line) > 80]
    assert not wide, f"lines wider than 80 columns: {wide}"
    assert HUMAN_INSTANT.search(text) or name in ("report", "collection")
    snapshot = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("PMG_UPDATE_SNAPSHOTS"):
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        snapshot.write_text(text, encoding="utf-8")
    assert text == snapshot.read_text(encoding="utf-8"), f"{name} differs from {snapshot.name}:\n{text}"


@pytest.mark.parametrize("args", [("status",), ("doctor",), ("meter", "show", "M-03")])
def test_live_tables_fit_80_columns(site: Path, args: tuple[str, ...]) -> None:
    """Outputs with live figures (ages, free disk) cannot be snapshots; they must still fit."""
    text = pmg(*args, "-c", str(site)).stdout
    wide = [line for line in text.splitlines() if cell_len(line) > 80]
    assert text and not wide, wide


def test_tables_use_the_width_they_are_given(site: Path) -> None:
    narrow = pmg("meter", "show", "M-03", "-c", str(site), columns=80).stdout
    wide = pmg("meter", "show", "M-03", "-c", str(site), columns=160).stdout
    assert max(cell_len(line) for line in wide.splitlines()) > 80
    assert len(wide.splitlines()) < len(narrow.splitlines())  # the events' details no longer fold
