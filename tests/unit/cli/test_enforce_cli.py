"""``pmg explain``, ``pmg relay`` and ``pmg audit export`` against a real configuration and database.

The last test runs a real gateway on a simulated DL/T 645 meter and gives it a technician's order
from the CLI (a separate SQLite connection, as a second process would): the running daemon's enforcer
picks it up from the table and the relay follows, confirmed by read-back.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.gateway_harness import base_config, write_config
from support.waiting import async_wait_for

from gateway.cli.main import cli
from gateway.config import load_config
from gateway.ledger.accounts import seed_from_config
from gateway.runtime.daemon import Gateway
from gateway.store import events
from gateway.store.db import Store, open_store
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import LoadProfile, MeterModel

METERS = (
    '\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "/dev/null"\n'
    '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n'
    '\n[[meters]]\nid = "m2"\nbus = "b1"\naddress = "000000000002"\naccount = "acc2"\ntariff = "flat-cn"\n'
    '\n[[accounts]]\nid = "acc2"\nprotected = true\nprotected_category = "medical_equipment"\n'
)


@pytest.fixture
def uk_site(tmp_path: Path) -> Iterator[tuple[Path, Store]]:
    cfg_path = write_config(
        tmp_path / "gw.toml",
        base_config(tmp_path / "pmg.db", timezone="Europe/London", policy='[policy]\npreset = "uk"\n')
        + METERS,
    )
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, load_config(cfg_path), datetime(2026, 11, 1, tzinfo=UTC))
    store.close()
    yield cfg_path, store


def pmg(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def counts(db: Path) -> tuple[int, ...]:
    store = open_store(db)
    try:
        return tuple(
            store.scalar(f"SELECT COUNT(*) FROM {t}")
            for t in ("events", "relay_commands", "overrides", "outbox")
        )
    finally:
        store.close()


def test_explain_says_why_the_cut_waits_for_monday(uk_site: tuple[Path, Store]) -> None:
    cfg_path, _ = uk_site
    db = cfg_path.parent / "pmg.db"
    before = counts(db)
    code, out, err = pmg("explain", "acc1", "--at", "2026-11-27T19:00", "--config", str(cfg_path))
    assert code == 0, err
    assert "Account acc1, meter m1, rules 'uk'" in out
    assert "At Fri 2026-11-27 19:00:00 +00:00" in out
    assert "Blocked: disconnect (trip) by windows.hours" in out
    assert "allowed from Mon 2026-11-30 10:00:00 +00:00" in out
    assert " CNY" in out and "XXX" not in out and "GBP" not in out  # the configured currency
    assert counts(db) == before, "explain wrote to the database"

    code, out, _ = pmg("explain", "acc1", "--at", "2026-11-30T10:05", "--json", "--config", str(cfg_path))
    assert code == 0
    (decision,) = json.loads(out)
    assert "disconnect" in decision["actions"], "after the window the cut is due"


def test_explain_unknown_account_and_bad_time_are_one_line_errors(uk_site: tuple[Path, Store]) -> None:
    cfg_path, _ = uk_site
    code, _, err = pmg("explain", "nobody", "--config", str(cfg_path))
    assert code == 2 and err.strip() == "pmg: error: no account or meter 'nobody' (accounts: acc1, acc2)"
    code, _, err = pmg("explain", "acc1", "--at", "friday", "--config", str(cfg_path))
    assert code == 2 and "'friday' is not an ISO 8601 date or time" in err


def test_relay_refuses_a_protected_customer_and_changes_nothing(uk_site: tuple[Path, Store]) -> None:
    cfg_path, _ = uk_site
    db = cfg_path.parent / "pmg.db"
    before = counts(db)
    code, _, err = pmg(
        "relay", "m2", "open", "--reason", "tamper", "--actor", "ann", "--config", str(cfg_path)
    )
    assert code == 1
    assert err.count("\n") == 1 and "refusing to open: the customer is protected (medical_equipment)" in err
    assert counts(db) == before


def test_relay_open_with_allow_protected_is_queued_and_traced(uk_site: tuple[Path, Store]) -> None:
    cfg_path, _ = uk_site
    code, out, err = pmg(
        "relay",
        "m2",
        "open",
        "--reason",
        "fire risk",
        "--actor",
        "ann",
        "--allow-protected",
        "--json",
        "--config",
        str(cfg_path),
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["daemon_running"] is False
    store = open_store(cfg_path.parent / "pmg.db")
    try:
        cmd = store.one("SELECT * FROM relay_commands WHERE id = ?", result["command_id"])
        assert cmd is not None and (cmd["action"], cmd["status"], cmd["actor"]) == (
            "trip",
            "pending",
            "technician:ann",
        )
        rules = {t["rule"]: t["passed"] for t in json.loads(cmd["trace_json"])}
        assert rules == {
            "override.manual": True,
            "protected.customer": False,
            "keep_power": True,
            "override.allow_protected": True,
        }
        ov = store.one("SELECT * FROM overrides WHERE id = ?", result["override_id"])
        assert ov is not None and (ov["action"], ov["allow_protected"], ov["actor"]) == (
            "disconnect",
            1,
            "technician:ann",
        )
        kinds = [r[0] for r in store.all("SELECT kind FROM events ORDER BY id")]
        assert kinds[-2:] == ["relay_command_queued", "override_set"]
    finally:
        store.close()

    # A later close supersedes: the open order is cleared and the pending trip cancelled.
    code, _, err = pmg(
        "relay", "m2", "close", "--reason", "fixed", "--actor", "ann", "--config", str(cfg_path)
    )
    assert code == 0, err
    store = open_store(cfg_path.parent / "pmg.db")
    try:
        statuses = [tuple(r) for r in store.all("SELECT action, status FROM relay_commands ORDER BY id")]
        assert statuses == [("trip", "cancelled"), ("direct_close", "pending")]
        assert store.scalar("SELECT COUNT(*) FROM overrides WHERE cleared_at IS NULL") == 1
    finally:
        store.close()


def _cut_after_emergency_credit(cfg_path: Path) -> None:
    """acc1 as the policy leaves it once £5 of emergency credit and 12p more were used: cut, relay open."""
    from gateway.ledger.credit import post_adjustment

    store = open_store(cfg_path.parent / "pmg.db")
    try:
        with store.tx() as conn:
            post_adjustment(conn, "used", "acc1", -512, datetime.now(UTC), reason="consumption", actor="test")
            conn.execute(
                "UPDATE accounts SET emergency_credit_minor = 500, policy_state = 'disconnected', alerts_json = ? "
                "WHERE id = 'acc1'",
                (json.dumps({"emergency_credit.offer": "2026-12-01T11:00:00Z",
                             "emergency_credit.used_up": "2026-12-01T12:00:00Z"}),),
            )
            conn.execute("UPDATE meters SET relay = 'open' WHERE id = 'm1'")
    finally:
        store.close()


def test_payment_add_says_whether_supply_returns_and_how_much_more_is_needed(uk_site: tuple[Path, Store]) -> None:
    cfg_path, _ = uk_site
    _cut_after_emergency_credit(cfg_path)
    code, out, err = pmg("payment", "add", "acc1", "3.00", "--id", "p1", "--actor", "clerk", "--json",
                         "--config", str(cfg_path))
    assert code == 0, err
    result = json.loads(out)
    assert result["balance"] == "-2.12"
    assert result["supply"] == {"on": False, "reason": "below_reconnect_threshold", "shortfall": "3.12",
                                "meter_id": "m1"}
    code, out, err = pmg("payment", "add", "acc1", "3.12", "--id", "p2", "--actor", "clerk", "--config", str(cfg_path))
    assert code == 0, err
    assert "supply: will be restored" in out and "(restored)" in out and "more needed" not in out
    code, out, _ = pmg("relay", "m1", "open", "--reason", "tamper", "--actor", "ann", "--config", str(cfg_path))
    assert code == 0
    code, out, err = pmg("payment", "add", "acc1", "1.00", "--id", "p3", "--actor", "clerk", "--config", str(cfg_path))
    assert code == 0, err
    assert "supply: stays off: a manual disconnect order is in force (manual_disconnect_order)" in out


def test_audit_export_range_formats_and_traces(uk_site: tuple[Path, Store]) -> None:
    cfg_path, _ = uk_site
    store = open_store(cfg_path.parent / "pmg.db")
    trace = [{"rule": "windows.hours", "passed": False, "detail": "19:00 inside 18:00-10:00"}]
    try:
        with store.tx() as conn:
            for at, kind in (
                (datetime(2026, 11, 27, 18, 59, 59, 500_000, tzinfo=UTC), "policy_blocked"),
                (datetime(2026, 11, 27, 19, 0, tzinfo=UTC), "policy_blocked"),
                (datetime(2026, 11, 27, 19, 0, 0, 250_000, tzinfo=UTC), "relay_confirmed"),
                (datetime(2026, 11, 30, 10, 0, tzinfo=UTC), "policy_disconnect"),
            ):
                events.record(
                    conn, kind, at, account_id="acc1", meter_id="m1", actor="policy", detail={"trace": trace}
                )
    finally:
        store.close()
    code, out, err = pmg(
        "audit", "export", "--from", "2026-11-27T19:00", "--to", "2026-11-30T10:00", "--config", str(cfg_path)
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    # Newest first, instants in UTC to the second (the id keeps the order within a second).
    assert [(r["at"], r["kind"]) for r in rows if r["kind"] != "payment_applied"] == [
        ("2026-11-27T19:00:00Z", "relay_confirmed"),
        ("2026-11-27T19:00:00Z", "policy_blocked"),
    ]
    assert rows[-1]["rules"] == "windows.hours=NO" and rows[-1]["actor"] == "policy"
    assert json.loads(rows[-1]["detail"])["trace"] == trace

    code, out, _ = pmg("audit", "export", "--format", "json", "--kind", "policy_*", "--config", str(cfg_path))
    assert code == 0
    assert [r["kind"] for r in json.loads(out)] == ["policy_disconnect", "policy_blocked", "policy_blocked"]
    code, out2, _ = pmg("audit", "export", "--json", "--reverse", "--kind", "policy_*", "--config", str(cfg_path))
    assert code == 0  # --json is accepted beside --format, and wins
    assert [r["kind"] for r in json.loads(out2)] == ["policy_blocked", "policy_blocked", "policy_disconnect"]

    code, _, err = pmg(
        "audit", "export", "--from", "2026-12-01", "--to", "2026-11-01", "--config", str(cfg_path)
    )
    assert code == 2 and "is not after --from" in err


def test_technician_order_reaches_the_meter_through_the_running_daemon(tmp_path: Path) -> None:
    model = MeterModel("000000000001", profile=LoadProfile((500,)))
    sim = SimulatedDlt645Bus([model], baud=9600, response_delay_s=0.005)
    try:
        port = sim.start_pty()
        cfg_path = write_config(
            tmp_path / "gw.toml",
            base_config(tmp_path / "pmg.db")
            + f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{port}"\nbaud = 9600\npoll_interval_s = 5\n'
            + '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n',
        )

        async def scenario() -> None:
            gateway = Gateway(
                cfg_path,
                load_config(cfg_path),
            )
            await gateway.start()
            try:
                gateway.apply_payment("p1", "acc1", 10_000, source="test")
                await async_wait_for(
                    lambda: gateway.store.scalar("SELECT relay FROM meters") == "closed", what="first reading"
                )
                code, out, err = await asyncio.to_thread(
                    pmg,
                    "relay",
                    "m1",
                    "open",
                    "--reason",
                    "meter swap",
                    "--actor",
                    "bob",
                    "--config",
                    str(cfg_path),
                )
                assert code == 0, err
                assert "the running daemon executes it" in out
                await async_wait_for(lambda: not model.relay_closed, timeout=5, what="relay opened")
                await async_wait_for(
                    lambda: (
                        gateway.store.scalar("SELECT status FROM relay_commands WHERE action = 'trip'")
                        == "confirmed"
                    ),
                    what="trip confirmed",
                )
                assert (
                    gateway.store.scalar("SELECT actor FROM relay_commands WHERE action = 'trip'")
                    == "technician:bob"
                )
                # The policy does not undo a manual order while it lasts (the account is in credit).
                await gateway.review_policy()
                assert not model.relay_closed
                code, _, err = await asyncio.to_thread(
                    pmg,
                    "relay",
                    "m1",
                    "close",
                    "--reason",
                    "done",
                    "--actor",
                    "bob",
                    "--config",
                    str(cfg_path),
                )
                assert code == 0, err
                await async_wait_for(lambda: model.relay_closed, timeout=5, what="relay closed")
            finally:
                await gateway.stop()

        asyncio.run(scenario())
    finally:
        sim.stop()
