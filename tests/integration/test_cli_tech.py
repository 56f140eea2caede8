"""The lead's commands (``read``, ``scan``, ``payment add``, ``balance``, ``ledger verify``, ``run``): every
mistake is one line on stderr with a meaningful exit status, and changes nothing."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.gateway_harness import base_config, write_config

from gateway.cli.main import cli
from gateway.config import load_config
from gateway.ledger.accounts import seed_from_config
from gateway.store.db import open_store
from simulators.dlt645 import SimulatedDlt645Bus, make_models
from simulators.model import Fault


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    body = base_config(tmp_path / "pmg.db") + (
        f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{tmp_path / "tty"}"\n'
        '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "a1"\ntariff = "flat-cn"\n'
    )
    path = write_config(tmp_path / "gw.toml", body)
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, load_config(path), datetime.now(UTC))
    store.close()
    return path


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="pmg")


def one_line(result: Result, status: int, needle: str) -> None:
    assert result.exit_code == status, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmg: error: "), result.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output + result.stderr


def money_rows(cfg_path: Path) -> list[tuple[object, ...]]:
    store = open_store(cfg_path.parent / "pmg.db", readonly=True)
    try:
        return [tuple(r) for r in store.all("SELECT * FROM entries")] + [
            tuple(r) for r in store.all("SELECT id, balance_minor FROM accounts")
        ]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("amount", "needle"),
    [
        ("12.345", "more than 2 decimal places"),
        ("1e3", "not a decimal amount"),
        ("0.00", "must be positive"),
        ("abc", "not a decimal amount"),
    ],
)
def test_payment_add_refuses_bad_amounts_and_changes_nothing(
    cfg_path: Path, amount: str, needle: str
) -> None:
    before = money_rows(cfg_path)
    one_line(run("payment", "add", "-c", str(cfg_path), "a1", amount, "--actor", "clerk"), 2, needle)
    assert money_rows(cfg_path) == before


def test_payment_add_applies_once_per_id(cfg_path: Path) -> None:
    first = run("payment", "add", "-c", str(cfg_path), "a1", "10.00", "--id", "cash-1", "--actor", "clerk")
    again = run("payment", "add", "-c", str(cfg_path), "a1", "10.00", "--id", "cash-1", "--actor", "clerk")
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert "already applied" in again.output
    balance = run("balance", "-c", str(cfg_path), "a1", "--json")
    assert '"balance": "10.00"' in balance.output
    one_line(
        run("payment", "add", "-c", str(cfg_path), "a1", "11.00", "--id", "cash-1", "--actor", "clerk"),
        2,
        "was already used for 10.00",
    )
    one_line(
        run("payment", "add", "-c", str(cfg_path), "nobody", "1.00", "--actor", "clerk"),
        2,
        "no account 'nobody'",
    )


@pytest.mark.parametrize("given", ["", "   "])
def test_payment_add_refuses_an_empty_id_and_changes_nothing(cfg_path: Path, given: str) -> None:
    """An empty ``--id`` used to become a new UUID each time: the retry applied the money twice."""
    before = money_rows(cfg_path)
    for _ in range(2):
        one_line(
            run("payment", "add", "-c", str(cfg_path), "a1", "5.00", "--id", given, "--actor", "clerk"),
            2,
            "--id",
        )
    assert money_rows(cfg_path) == before


def test_read_succeeds_with_the_good_fields_and_names_each_bad_one() -> None:
    """An independent DL/T 645 implementation (the ``dlt645`` package) answers the date DI with
    ``00 00 00 00``: ``pmg read`` used to fail whole; now the energy and good fields arrive."""
    import json

    from dlt645 import MeterServerService

    from drivers.dlt645.frame import address_to_bytes

    svc = MeterServerService.new_tcp_server("127.0.0.1", 0, timeout=0.3)
    svc.set_address(address_to_bytes("000000000161"))
    assert svc.set_00(0x00010000, 112280.26)
    assert svc.server.start()
    try:
        args = ["read", "--protocol", "dlt645", "--port", f"socket://127.0.0.1:{svc.server.port}"]
        args += ["--address", "000000000161"]
        as_json = run(*args, "--json")
        text = run(*args)
    finally:
        svc.server.stop()
    assert as_json.exit_code == 0, as_json.output + as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["quality"] == "ok" and data["energy_import_wh"] == 112_280_260
    assert data["meter_time"] is None and data["relay"] == "closed"
    assert list(data["errors"]) == ["meter_time"] and "invalid date/time 00 00 00 00" in data["errors"]["meter_time"]
    assert text.exit_code == 0, text.output + text.stderr
    bad_lines = [line for line in text.stdout.splitlines() if ": error: " in line]
    assert len(bad_lines) == 1 and bad_lines[0].startswith("meter_time: error: DI 04000101: invalid date/time")
    assert "112280260" in text.stdout


def test_balance_and_verify_report_missing_things_in_one_line(cfg_path: Path, tmp_path: Path) -> None:
    one_line(run("balance", "-c", str(cfg_path), "ghost"), 2, "no account 'ghost'")
    assert run("ledger", "verify", "-c", str(cfg_path)).exit_code == 0
    one_line(run("ledger", "verify", "-c", str(tmp_path / "none.toml")), 2, "cannot read file")


def test_read_and_scan_refuse_bad_arguments(tmp_path: Path) -> None:
    one_line(run("read", "--protocol", "dlt645", "--port", "/dev/null"), 2, "--address is required")
    one_line(
        run("read", "--protocol", "dlt645", "--port", "/dev/null", "--address", "12"), 2, "12 decimal digits"
    )
    one_line(
        run("read", "--protocol", "modbus", "--port", "tcp://127.0.0.1:1", "--unit", "3"),
        2,
        "--unit and --profile are required",
    )
    one_line(
        run("scan", "--protocol", "modbus", "--port", "tcp://127.0.0.1:1", "--units", "0-300"),
        2,
        "outside 1-247",
    )
    one_line(
        run("read", "--protocol", "dlt645", "--port", str(tmp_path / "no-tty"), "--address", "000000000001"),
        1,
        "no-tty",
    )


def test_read_and_scan_a_live_simulated_meter() -> None:
    models = make_models(2)
    sim = SimulatedDlt645Bus(models, baud=9600, response_delay_s=0.002)
    try:
        url = f"socket://127.0.0.1:{sim.start_tcp()}"
        result = run(
            "read",
            "--protocol",
            "dlt645",
            "--port",
            url,
            "--baud",
            "9600",
            "--address",
            "000000000002",
            "--json",
        )
        assert result.exit_code == 0, result.output + result.stderr
        assert '"address": "000000000002"' in result.output and '"relay": "closed"' in result.output
        read_json = json.loads(result.output)  # instants in ISO 8601 UTC to the second
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", read_json["taken_at"]), read_json["taken_at"]
        human = run("--utc", "read", "--protocol", "dlt645", "--port", url, "--baud", "9600", "--address", "000000000002")
        assert re.search(r"taken_at +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+00:00", human.output), human.output
        found = run(
            "scan", "--protocol", "dlt645", "--port", url, "--baud", "9600", "--addresses", "1-4", "--json"
        )
        assert found.exit_code == 0 and '"000000000001"' in found.output and '"000000000002"' in found.output
        models[1].faults.add(Fault.NO_ANSWER)
        one_line(
            run(
                "read",
                "--protocol",
                "dlt645",
                "--port",
                url,
                "--baud",
                "9600",
                "--timeout",
                "0.1",
                "--address",
                "000000000002",
            ),
            1,
            "timeout",
        )
    finally:
        sim.stop()


def test_read_and_scan_a_live_modbus_meter() -> None:
    from drivers.modbus.profile import load_profile
    from simulators.modbus import SimulatedModbusBus
    from simulators.model import MeterModel

    bus = SimulatedModbusBus(
        {3: (MeterModel("3"), load_profile("dds238")), 5: (MeterModel("5"), load_profile("dds238"))}
    )
    try:
        url = f"tcp://127.0.0.1:{bus.start_tcp()}"
        result = run(
            "read", "--protocol", "modbus", "--profile", "dds238", "--port", url, "--unit", "3", "--json"
        )
        assert result.exit_code == 0, result.output + result.stderr
        assert '"address": "3"' in result.output and '"relay": "closed"' in result.output
        assert '"energy_import_wh": 0' in result.output
        found = run(
            "scan", "--protocol", "modbus", "--port", url, "--units", "1-6", "--profile", "dds238", "--json"
        )
        assert found.exit_code == 0, found.output + found.stderr
        assert '"found": [\n    "3",\n    "5"\n  ]' in found.output
    finally:
        bus.stop()
