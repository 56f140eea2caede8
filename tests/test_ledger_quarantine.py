"""Doubtful readings: quarantined, not charged, then resolved by an audited technician decision."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_ledger_support import T0, TARIFFS, make_book, new_ledger, reading

from gateway.cli.main import cli
from gateway.config import load_config
from gateway.ledger.accounts import seed_from_config
from gateway.ledger.charging import record_reading
from gateway.ledger.quarantine import QuarantineError, accept_reading, replace_meter
from gateway.ledger.verify import verify
from gateway.money import to_minor
from gateway.store.db import open_store

PRICE = Decimal("0.5283")  # flat-cn
H = timedelta(hours=1)


def _read(store: Any, book: Any, register: int, at: Any, **kw: Any) -> str:
    with store.tx() as conn:
        return record_reading(
            conn, "m1", reading(register, at), book.pricer(conn), max_power_w=10_000, **kw
        ).outcome


def _charged(store: Any) -> tuple[int, int]:
    row = store.one(
        "SELECT COALESCE(SUM(energy_wh), 0), COALESCE(-SUM(amount_minor), 0) FROM entries WHERE kind = 'charge'"
    )
    return int(row[0]), int(row[1])


def test_an_implausible_jump_waits_for_a_technician_then_is_charged_exactly_once(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db")
    assert _read(store, book, 1_000, T0) == "baseline"
    assert _read(store, book, 2_000, T0 + H) == "charged"
    assert _read(store, book, 60_000, T0 + 2 * H) == "quarantined"  # 58 kWh in an hour > 10 kW
    assert _read(store, book, 60_500, T0 + 3 * H) == "ignored"
    assert _charged(store) == (1_000, to_minor(1000 * PRICE / 1000))
    event = store.one("SELECT detail_json FROM events WHERE kind = 'reading_quarantined'")
    assert json.loads(event[0])["kind"] == "implausible_jump"

    with store.tx() as conn:
        res = accept_reading(
            conn, "m1", "charge", book.pricer(conn), T0 + 4 * H, reason="gateway was off", actor="tech-7"
        )
    assert (res.action, res.delta_wh) == ("charge", 58_000)
    assert _read(store, book, 61_000, T0 + 5 * H) == "charged"  # from the accepted 60,000
    assert _charged(store) == (60_000, to_minor(60_000 * PRICE / 1000))
    audit = store.one("SELECT actor, detail_json FROM events WHERE kind = 'reading_accepted'")
    assert audit["actor"] == "tech-7" and "gateway was off" in audit["detail_json"]
    assert verify(store) == []
    with pytest.raises(QuarantineError, match="no quarantined reading"), store.tx() as conn:
        accept_reading(conn, "m1", "charge", book.pricer(conn), T0 + 6 * H, reason="again", actor="tech-7")
    assert _charged(store) == (60_000, to_minor(60_000 * PRICE / 1000))
    store.close()


def test_a_reset_register_is_rebaselined_without_charging_the_gap(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db")
    _read(store, book, 50_000, T0)
    assert _read(store, book, 120, T0 + H) == "quarantined"  # backwards, not a plausible rollover
    kind = json.loads(store.scalar("SELECT detail_json FROM events WHERE kind = 'reading_quarantined'"))[
        "kind"
    ]
    assert kind == "register_backwards"
    with store.tx() as conn:
        accept_reading(
            conn, "m1", "rebaseline", book.pricer(conn), T0 + 2 * H, reason="firmware reset", actor="t"
        )
    assert _read(store, book, 1_120, T0 + 3 * H) == "charged"
    assert _charged(store) == (1_000, to_minor(1000 * PRICE / 1000))
    assert verify(store) == []
    store.close()


def test_rollover_is_charged_not_quarantined(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db")
    _read(store, book, 99_999_500, T0, register_modulus_wh=100_000_000)
    assert _read(store, book, 700, T0 + H, register_modulus_wh=100_000_000) == "charged"
    assert _charged(store)[0] == 1_200
    assert verify(store) == []
    store.close()


def test_meter_replacement_charges_the_final_register_and_starts_the_new_meter_from_a_baseline(
    tmp_path: Path,
) -> None:
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db")
    _read(store, book, 10_000, T0)
    _read(store, book, 11_000, T0 + H)
    assert _read(store, book, 40, T0 + 2 * H) == "quarantined"  # the new meter answered at the old address
    with pytest.raises(QuarantineError, match="below the last accepted"), store.tx() as conn:
        replace_meter(
            conn, "m1", 10_500, "000000000009", book.pricer(conn), T0 + 3 * H, reason="r", actor="t"
        )
    with store.tx() as conn:
        res = replace_meter(
            conn, "m1", 11_400, "000000000009", book.pricer(conn), T0 + 3 * H, reason="burnt", actor="t"
        )
    assert res.delta_wh == 400
    assert store.scalar("SELECT address FROM meters WHERE id = 'm1'") == "000000000009"
    assert _read(store, book, 60, T0 + 4 * H) == "baseline"
    assert _read(store, book, 560, T0 + 5 * H) == "charged"
    assert _charged(store)[0] == 1_000 + 400 + 500
    assert _charged(store)[1] == to_minor(1_900 * PRICE / 1000)
    assert store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'meter_replaced' AND actor = 't'") == 1
    assert verify(store) == []
    store.close()


def _cli_setup(tmp_path: Path) -> Path:
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(
        f'gateway_id = "gw"\ntimezone = "Asia/Shanghai"\ndatabase = "{tmp_path / "pmg.db"}"\n'
        f'tariff_dir = "{TARIFFS}"\n'
        '[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "/dev/null"\n'
        '[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n'
        "max_power_w = 10000\n"
    )
    cfg = load_config(cfg_path)
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, cfg, T0)
    book = make_book(tmp_path)
    _read(store, book, 1_000, T0)
    _read(store, book, 90_000, T0 + H)
    store.close()
    return cfg_path


def test_cli_accept_reading_is_audited_and_bad_use_is_one_line(tmp_path: Path) -> None:
    cfg_path = _cli_setup(tmp_path)
    runner = CliRunner()
    base = ["meter", "accept-reading", "-c", str(cfg_path), "m1"]
    missing = runner.invoke(cli, [*base, "--reason", "x", "--actor", "t"])
    assert missing.exit_code == 2 and "--charge or --rebaseline" in missing.output
    ok = runner.invoke(cli, [*base, "--charge", "--reason", "long outage", "--actor", "tech-1", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["charged_wh"] == 89_000
    again = runner.invoke(cli, [*base, "--rebaseline", "--reason", "x", "--actor", "t"])
    assert again.exit_code == 2
    assert again.output.strip().splitlines() == ["pmg: error: meter 'm1' has no quarantined reading"]
    verify_run = runner.invoke(cli, ["ledger", "verify", "-c", str(cfg_path)])
    assert verify_run.exit_code == 0 and verify_run.output.startswith("OK")


def test_cli_replace_and_debt_and_adjust(tmp_path: Path) -> None:
    cfg_path = _cli_setup(tmp_path)
    runner = CliRunner()
    res = runner.invoke(
        cli,
        [
            "meter",
            "replace",
            "-c",
            str(cfg_path),
            "m1",
            "--final-register",
            "1500",
            "--new-address",
            "000000000002",
            "--reason",
            "swap",
            "--actor",
            "tech",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["charged_wh"] == 500
    debt = runner.invoke(
        cli,
        [
            "ledger",
            "debt",
            "-c",
            str(cfg_path),
            "acc1",
            "20.00",
            "--id",
            "d1",
            "--share",
            "0.25",
            "--reason",
            "old arrears",
            "--actor",
            "office",
        ],
    )
    assert debt.exit_code == 0 and "outstanding 20.00" in debt.output
    pay = runner.invoke(
        cli, ["payment", "add", "-c", str(cfg_path), "acc1", "10.00", "--id", "p1", "--actor", "o"]
    )
    assert pay.exit_code == 0 and "debt recovery 2.43" in pay.output  # 25 % of what is left above zero
    adj = runner.invoke(
        cli, ["ledger", "adjust", "-c", str(cfg_path), "acc1", "1.5x", "--reason", "r", "--actor", "a"]
    )
    assert adj.exit_code == 2 and adj.output.count("\n") == 1
    assert runner.invoke(cli, ["ledger", "verify", "-c", str(cfg_path)]).exit_code == 0
