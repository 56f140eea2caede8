"""Doubtful readings: quarantined, not charged, then resolved by an audited technician decision."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.ledger_books import T0, TARIFFS, make_book, new_ledger, reading

from gateway.cli.main import cli
from gateway.config import load_config
from gateway.core.money import to_minor
from gateway.ledger.accounts import seed_from_config
from gateway.ledger.charging import record_reading
from gateway.ledger.quarantine import QuarantineError, accept_reading, replace_meter
from gateway.ledger.verify import verify
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


# --- readings that cannot be priced ---------------------------------------------------------------

UNPRICEABLE_TARIFFS = {
    # tou-cn with 费率 4 mapped too: the fix a technician makes when the meters count T4
    "tou-cn-t4": (TARIFFS / "tou-cn.toml").read_text().replace(
        'registers = { T1 = "peak", T2 = "flat", T3 = "valley" }',
        'registers = { T1 = "peak", T2 = "flat", T3 = "valley", T4 = "peak" }',
    ),
    "later": 'id = "later"\ncurrency = "CNY"\nminor_digits = 2\n[[versions]]\nversion = 1\n'
    'effective_from = 2026-06-01T00:00:00+08:00\ntimezone = "Asia/Shanghai"\nprice = "0.5283"\n',
    "earlier": 'id = "later"\ncurrency = "CNY"\nminor_digits = 2\n[[versions]]\nversion = 1\n'
    'effective_from = 2026-01-01T00:00:00+08:00\ntimezone = "Asia/Shanghai"\nprice = "0.5283"\n',
    "huge": 'id = "huge"\ncurrency = "CNY"\nminor_digits = 2\n[[versions]]\nversion = 1\n'
    'effective_from = 2026-01-01T00:00:00+08:00\ntimezone = "Asia/Shanghai"\nprice = "1E+20"\n',
}


def _tariff(tmp_path: Path, name: str, as_id: str | None = None) -> Any:
    from gateway.tariffs.model import load_tariff

    path = tmp_path / f"{name}.toml"
    path.write_text(UNPRICEABLE_TARIFFS[name])
    tariff = load_tariff(path)
    return tariff if as_id is None else replace(tariff, id=as_id)


def _tou_read(store: Any, book: Any, registers: tuple[int, int, int, int], at: Any) -> Any:
    from drivers.base import Quality, Reading

    r = Reading(
        "000000000001", at.astimezone(UTC), Quality.OK,
        energy_import_wh=sum(registers), energy_import_tariffs_wh=registers,
    )
    with store.tx() as conn:
        return record_reading(conn, "m1", r, book.pricer(conn), max_power_w=10_000)


def _held(store: Any) -> Any:
    return store.scalar("SELECT quarantined_reading_id FROM meters WHERE id = 'm1'")


def test_energy_in_an_unmapped_register_is_quarantined_then_charged_once_when_the_tariff_maps_it(
    tmp_path: Path,
) -> None:
    """It used to raise on every poll: no row, no event, the meter "100 % ok", the energy unbilled."""
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db", accounts=(("acc1", "tou-cn"),))
    start = T0 + 9 * H  # a workday peak hour
    assert _tou_read(store, book, (1_000, 0, 0, 0), start).outcome == "baseline"
    first = _tou_read(store, book, (1_500, 0, 0, 300), start + H)
    assert (first.outcome, first.delta_wh, first.charge_minor) == ("quarantined", 0, 0)
    assert "register T4 measured" in (first.reason or "")
    assert _held(store) == first.reading_id
    event = store.one("SELECT severity, detail_json FROM events WHERE kind = 'reading_quarantined'")
    detail = json.loads(event["detail_json"])
    assert event["severity"] == "alarm" and detail["kind"] == "unpriceable" and detail["delta_wh"] == 800
    row = store.one("SELECT outcome, delta_wh, detail FROM readings WHERE id = ?", first.reading_id)
    assert (row["outcome"], row["delta_wh"]) == ("quarantined", 800) and row["detail"].startswith("unpriceable: ")
    assert store.scalar("SELECT comms_ok FROM meters WHERE id = 'm1'") == 2  # it answered: comms are fine

    again = _tou_read(store, book, (1_700, 0, 0, 500), start + 2 * H)
    assert again.outcome == "ignored" and _held(store) == first.reading_id
    assert store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'reading_quarantined'") == 1  # one alarm
    assert _charged(store) == (0, 0)

    fixed = make_book(tmp_path)
    fixed.tariffs["tou-cn"] = _tariff(tmp_path, "tou-cn-t4", "tou-cn")  # the tariff now maps T4
    done = _tou_read(store, fixed, (1_800, 0, 0, 600), start + 3 * H)
    assert (done.outcome, done.delta_wh) == ("charged", 1_400)  # the whole interval since the baseline
    assert _held(store) is None
    peak = Decimal("0.7000")  # tou-cn peak price (gateway/tariffs/examples/tou-cn.toml)
    assert _charged(store) == (1_400, to_minor(1_400 * peak / 1000))
    assert store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'reading_quarantine_cleared'") == 1
    assert store.scalar("SELECT outcome FROM readings WHERE id = ?", first.reading_id) == "ignored"
    assert _tou_read(store, fixed, (1_900, 0, 0, 600), start + 4 * H).delta_wh == 100
    assert _charged(store)[0] == 1_500  # every Wh since the baseline, once
    assert verify(store) == []
    store.close()


def test_no_tariff_version_in_force_is_quarantined_and_accepting_charges_it_once(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    book.tariffs["later"] = _tariff(tmp_path, "later")
    store = new_ledger(tmp_path / "l.db", accounts=(("acc1", "later"),))
    assert _read(store, book, 1_000, T0) == "baseline"
    assert _read(store, book, 2_000, T0 + H) == "quarantined"
    assert "no version in force" in json.loads(
        store.scalar("SELECT detail_json FROM events WHERE kind = 'reading_quarantined'")
    )["reason"]
    with pytest.raises(QuarantineError, match="still cannot be priced: tariff later has no version"), store.tx() as conn:
        accept_reading(conn, "m1", "charge", book.pricer(conn), T0 + 2 * H, reason="checked", actor="t")
    assert _held(store) is not None and _charged(store) == (0, 0)  # nothing changed

    book.tariffs["later"] = _tariff(tmp_path, "earlier")  # the head office sends the missing version
    with store.tx() as conn:
        res = accept_reading(conn, "m1", "charge", book.pricer(conn), T0 + 2 * H, reason="tariff fixed", actor="t")
    assert res.delta_wh == 1_000
    assert _read(store, book, 2_500, T0 + 3 * H) == "charged"
    assert _charged(store) == (1_500, to_minor(1_500 * PRICE / 1000))
    assert verify(store) == []
    store.close()


def test_a_charge_too_large_for_the_ledger_is_quarantined_not_a_traceback(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    book.tariffs["huge"] = _tariff(tmp_path, "huge")
    store = new_ledger(tmp_path / "l.db", accounts=(("acc1", "huge"),))
    assert _read(store, book, 1_000, T0) == "baseline"
    assert _read(store, book, 2_000, T0 + H) == "quarantined"
    reason = json.loads(store.scalar("SELECT detail_json FROM events WHERE kind = 'reading_quarantined'"))["reason"]
    assert "beyond what the ledger can hold" in reason
    assert _charged(store) == (0, 0) and store.scalar("SELECT balance_minor FROM accounts") == 0
    assert verify(store) == []
    store.close()


def test_an_unpriceable_meter_is_shown_unhealthy_and_run_check_names_the_register(tmp_path: Path) -> None:
    """``pmg meters`` said "100 % ok" and ``pmg run --check`` said OK while no reading was billed."""
    tariffs = tmp_path / "tariffs"
    tariffs.mkdir()
    (tariffs / "tou-cn.toml").write_text((TARIFFS / "tou-cn.toml").read_text())
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(
        f'gateway_id = "gw"\ntimezone = "Asia/Shanghai"\ndatabase = "{tmp_path / "pmg.db"}"\n'
        f'tariff_dir = "{tariffs}"\n'
        '[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "/dev/null"\n'
        '[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "tou-cn"\n'
    )
    runner = CliRunner()
    check = runner.invoke(cli, ["run", "--check", "-c", str(cfg_path)])
    # A register the meter may never use is a warning (the map must match the meter's programming);
    # energy that does land there is quarantined and alarmed below.
    assert check.exit_code == 0, check.stderr
    assert check.stderr.strip().splitlines() == [
        f"pmg: warning: {cfg_path}: meter 'm1': tariff 'tou-cn' v1 maps registers T1, T2, T3 but the meter "
        "can count T1, T2, T3, T4; energy in T4 would be quarantined"
    ]
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, load_config(cfg_path), T0)
    from gateway.ledger.tariff_book import TariffBook

    book = TariffBook.load(tariffs, None, make_book(tmp_path).calendar)
    _tou_read(store, book, (1_000, 0, 0, 0), T0 + 9 * H)
    held = _tou_read(store, book, (1_200, 0, 0, 300), T0 + 10 * H)
    store.close()
    assert held.outcome == "quarantined"

    meters = json.loads(runner.invoke(cli, ["meters", "-c", str(cfg_path), "--json"]).output)
    assert meters[0]["healthy"] is False and meters[0]["reachable"] is True
    assert meters[0]["quarantine_detail"].startswith("unpriceable: register T4 measured 300 Wh")
    table = runner.invoke(cli, ["meters", "-c", str(cfg_path)]).output
    assert "QUARANTINED: unpriceable" in table
    status = runner.invoke(cli, ["status", "-c", str(cfg_path), "--json"])
    assert status.exit_code == 1
    assert [m["meter"] for m in json.loads(status.output)["meters_quarantined"]] == ["m1"]

    (tariffs / "tou-cn.toml").write_text(UNPRICEABLE_TARIFFS["tou-cn-t4"])
    fixed = runner.invoke(cli, ["run", "--check", "-c", str(cfg_path)])
    assert fixed.exit_code == 0 and "OK" in fixed.output, fixed.stderr
    ok = runner.invoke(
        cli, ["meter", "accept-reading", "-c", str(cfg_path), "m1", "--charge", "--reason", "T4 mapped", "--actor", "t", "--json"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["charged_wh"] == 500
    assert json.loads(runner.invoke(cli, ["meters", "-c", str(cfg_path), "--json"]).output)[0]["healthy"] is True
    assert runner.invoke(cli, ["ledger", "verify", "-c", str(cfg_path)]).exit_code == 0
