"""Reports: local-time periods (day, ISO week, 旬, month), per-account money, collection figures."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from click.testing import CliRunner
from support.ledger_books import CST, TARIFFS, make_book, reading

from gateway.cli.main import cli
from gateway.config import load_config
from gateway.core.timeutil import iso
from gateway.ledger import settlement
from gateway.ledger.accounts import seed_from_config
from gateway.ledger.charging import record_reading
from gateway.ledger.payments import apply_payment
from gateway.ledger.reports import (
    collection_report,
    next_period,
    period_label,
    period_start,
    periods,
    usage_report,
)
from gateway.store.db import Store, open_store
from gateway.store.events import record

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_dekads_split_months_at_the_10th_and_20th_and_end_with_the_month() -> None:
    assert [
        (s.isoformat(), e.isoformat()) for s, e in periods(date(2026, 2, 5), date(2026, 3, 2), "dekad")
    ] == [
        ("2026-02-01", "2026-02-11"),
        ("2026-02-11", "2026-02-21"),
        ("2026-02-21", "2026-03-01"),  # 下旬 of February has 8 days
        ("2026-03-01", "2026-03-11"),
    ]
    assert next_period(date(2026, 3, 21), "dekad") == date(2026, 4, 1)  # 11 days
    assert period_label(date(2026, 3, 21), "dekad") == "2026-03-D3"
    assert period_start(date(2026, 3, 8), "week") == date(2026, 3, 2)  # Monday
    assert period_label(date(2026, 3, 2), "week") == "2026-W10"
    assert next_period(date(2026, 12, 1), "month") == date(2027, 1, 1)


def _config(tmp_path: Path) -> Path:
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(
        f'gateway_id = "gw"\ntimezone = "Asia/Shanghai"\ndatabase = "{tmp_path / "pmg.db"}"\n'
        f'tariff_dir = "{TARIFFS}"\n'
        '[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "/dev/null"\n'
        '[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n'
        '[[meters]]\nid = "m2"\nbus = "b1"\naddress = "000000000002"\naccount = "acc2"\ntariff = "uk-standard"\n'
    )
    return cfg_path


def _ledger(tmp_path: Path) -> tuple[Path, Store]:
    """Ten local days (1–10 March 2026) of 3 kWh a day read at 23:30 local, a payment, standing charges."""
    cfg_path = _config(tmp_path)
    store = open_store(tmp_path / "pmg.db")
    start = datetime(2026, 3, 1, 0, 0, tzinfo=CST)
    seed_from_config(store, load_config(cfg_path), start)
    book = make_book(tmp_path)
    with store.tx() as conn:
        apply_payment(conn, "p1", "acc1", 5000, start + timedelta(hours=9), source="test")
        for meter in ("m1", "m2"):
            record_reading(conn, meter, reading(0, start), book.pricer(conn), max_power_w=30_000)
            for day in range(10):  # at 23:30 local, i.e. 15:30 UTC of the same date
                at = start + timedelta(days=day, hours=23, minutes=30)
                record_reading(
                    conn, meter, reading((day + 1) * 3000, at), book.pricer(conn), max_power_w=30_000
                )
        settlement.settle(conn, book, SHANGHAI, start + timedelta(days=10, minutes=1))
    return cfg_path, store


def test_usage_report_buckets_in_local_time_and_balances_carry_exactly(tmp_path: Path) -> None:
    _, store = _ledger(tmp_path)
    days = usage_report(store.conn, SHANGHAI, "day", date(2026, 3, 1), date(2026, 3, 11), "acc1")
    assert [r.energy_wh for r in days] == [3000] * 10 + [0]  # 23:30 local is still that local day
    assert days[0].payments_minor == 5000 and days[0].charges_minor == 158  # 3 kWh x 0.5283 = 1.5849
    assert sum(r.charges_minor for r in days) == 1585  # cumulative rounding: 30 kWh x 0.5283 = 15.849
    prev = 0
    for r in days:
        assert (
            r.closing_balance_minor
            == prev + r.payments_minor - r.charges_minor - r.standing_minor + r.other_minor
        )
        prev = r.closing_balance_minor
    assert prev == store.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc1'")
    dekads = usage_report(store.conn, SHANGHAI, "dekad", date(2026, 3, 1), date(2026, 3, 11), "acc1")
    assert [r.period for r in dekads] == ["2026-03-D1", "2026-03-D2"]
    assert dekads[0].energy_wh == 30_000 and dekads[0].charges_minor == 1585
    assert dekads[-1].closing_balance_minor == prev
    uk = usage_report(store.conn, SHANGHAI, "month", date(2026, 3, 1), date(2026, 3, 31), "acc2")[0]
    assert uk.standing_minor == 10 * 53  # standing charges of ten settled days
    store.close()


def test_collection_counts_cuts_reconnections_payments_and_the_median_time_to_power(tmp_path: Path) -> None:
    _, store = _ledger(tmp_path)
    now = datetime(2026, 3, 11, 12, tzinfo=UTC)
    with store.tx() as conn:
        for i, (action, secs) in enumerate(
            [
                ("trip", None),
                ("direct_close", 4.5),
                ("direct_close", 2.0),
                ("close_permitted", 30.25),
                ("trip", None),
            ]
        ):
            conn.execute(
                "INSERT INTO relay_commands(meter_id, action, status, reason, actor, created_at, updated_at) "
                "VALUES ('m1', ?, 'confirmed', 'test', 'policy', ?, ?)",
                (action, iso(now), iso(now + timedelta(minutes=i))),
            )
            detail: dict[str, Any] = {"action": action}
            if secs is not None:
                detail["payment_to_power_s"] = secs
            record(conn, "relay_confirmed", now + timedelta(minutes=i), meter_id="m1", detail=detail)
        conn.execute("UPDATE accounts SET policy_state = 'disconnected', risk_grade = 3 WHERE id = 'acc2'")
    c = collection_report(store.conn, None, None)
    assert (c.disconnections, c.reconnections) == (2, 3)
    assert str(c.median_payment_to_power_s) == "4.5" and c.payment_to_power_samples == 3
    assert c.by_policy_state == {"disconnected": 1, "normal": 1}
    assert c.arrears_accounts == 1  # acc2 has standing and energy charges and no payment
    assert c.payments == 1 and c.payments_minor == 5000
    later = collection_report(store.conn, now + timedelta(minutes=10), None)
    assert (later.disconnections, later.payments, later.median_payment_to_power_s) == (0, 0, None)
    store.close()


def test_cli_report_in_every_format_and_a_bad_range_is_one_line(tmp_path: Path) -> None:
    cfg_path, store = _ledger(tmp_path)
    store.close()
    runner = CliRunner()
    base = ["report", "-c", str(cfg_path), "--from", "2026-03-01", "--to", "2026-03-20"]
    out = runner.invoke(cli, [*base, "--period", "dekad", "--format", "csv"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.output)))
    assert [(r["account"], r["period"], r["energy kWh"]) for r in rows] == [  # newest period first
        ("acc1", "2026-03-D2", "0.000"),
        ("acc2", "2026-03-D2", "0.000"),
        ("acc1", "2026-03-D1", "30.000"),
        ("acc2", "2026-03-D1", "30.000"),
    ]
    js = runner.invoke(cli, [*base, "--period", "week", "--account", "acc1", "--format", "json"])
    assert js.exit_code == 0, js.output
    data = json.loads(js.output)
    assert data["timezone"] == "Asia/Shanghai" and data["rows"][-1]["period"] == "2026-W09"
    assert runner.invoke(cli, [*base, "--period", "month"]).exit_code == 0  # the table form
    bad = runner.invoke(cli, ["report", "-c", str(cfg_path), "--from", "2026-03-10", "--to", "2026-03-01"])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "after --to" in bad.output
    nobody = runner.invoke(cli, [*base, "--account", "ghost"])
    assert nobody.exit_code == 2 and "no account 'ghost'" in nobody.output
    col = runner.invoke(cli, ["report", "collection", "-c", str(cfg_path), "--format", "json"])
    assert col.exit_code == 0, col.output
    assert json.loads(col.output)["payments_received"] == "50.00"
