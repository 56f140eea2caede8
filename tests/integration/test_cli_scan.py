"""``pmg scan`` end to end: a 20-meter DL/T 645 bus whose addresses it is not told and a mixed-profile
Modbus bus are found and identified, ``--write-config`` gives entries ``pmg run --check`` accepts, and
bad options or a bus that cannot be opened are one line with exit 2 or 1."""

from __future__ import annotations

import json
import random
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.gateway_harness import base_config, write_config

from drivers.modbus.profile import load_profile
from gateway.cli.main import cli
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.modbus import SimulatedModbusBus
from simulators.model import Fault, MeterModel


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="pmg")


def one_line(result: Result, status: int, needle: str) -> None:
    assert result.exit_code == status, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmg: error: ") and needle in lines[0], result.stderr


def twenty_addresses() -> list[str]:
    """17 addresses at random with different last digit pairs, and three more sharing the last pair of
    the first (two of them its last two pairs): the search splits below the wildcard at two levels,
    301 probes (the root, 100 for the last pair, 100 under it, 100 under the last two)."""
    rng = random.Random(645)
    out: list[str] = []
    while len(out) < 17:
        address = f"{rng.randrange(10**12):012d}"
        if all(a[-2:] != address[-2:] for a in out):
            out.append(address)
    first = out[0]
    out += [f"{rng.randrange(10**8):08d}{first[-4:]}" for _ in range(2)]
    out.append(f"{rng.randrange(10**8):08d}{(int(first[-4:-2]) + 1) % 100:02d}{first[-2:]}")
    assert len(set(out)) == 20
    return out


def check_config(tmp_path: Path, entries: str) -> Result:
    path = write_config(tmp_path / "gw.toml", base_config(tmp_path / "pmg.db") + "\n" + entries)
    return run("run", "--check", "-c", str(path))


@pytest.fixture
def dlt645_bus() -> Iterator[tuple[str, list[str]]]:
    addresses = twenty_addresses()
    models = [
        MeterModel(address=a, meter_number=a, asset_number=f"ASSET-{i:02d}") for i, a in enumerate(addresses)
    ]
    bus = SimulatedDlt645Bus(models, baud=115200, emulate_timing=False, response_delay_s=0.002)
    try:
        yield f"socket://127.0.0.1:{bus.start_tcp()}", addresses
    finally:
        bus.stop()


def test_scan_finds_twenty_dlt645_meters_it_was_not_told_and_writes_their_config(
    dlt645_bus: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, addresses = dlt645_bus
    written = run(
        "scan", "--protocol", "dlt645", "--port", url, "--baud", "115200", "--probe-timeout", "0.04",
        "--write-config", "--bus-id", "rs485-1", "--tariff", "tou-cn",
    )  # fmt: skip
    assert written.exit_code == 0, written.output + written.stderr
    config = tomllib.loads(written.output)
    assert sorted(m["address"] for m in config["meters"]) == sorted(addresses)
    assert config["buses"] == [
        {"id": "rs485-1", "protocol": "dlt645", "url": url, "baud": 115200, "parity": "E"}
    ]
    for i, address in enumerate(addresses):  # what each meter said of itself, beside its entry
        assert (
            f"# meter number {address}; asset number ASSET-{i:02d}; meter type not prepaid" in written.output
        )
    checked = check_config(tmp_path, written.output)
    assert checked.exit_code == 0, checked.output + checked.stderr


def test_scan_of_given_addresses_identifies_them_in_json(dlt645_bus: tuple[str, list[str]]) -> None:
    url, addresses = dlt645_bus
    asked = ",".join([addresses[3], addresses[5], "000000000000"])
    found = run(
        "scan", "--protocol", "dlt645", "--port", url, "--baud", "115200", "--addresses", asked, "--json"
    )
    assert found.exit_code == 0, found.output + found.stderr
    report = json.loads(found.output)
    assert report["found"] == [addresses[3], addresses[5]] and report["probes"] == 3
    assert report["meters"][0] == {
        "address": addresses[3],
        "meter_number": addresses[3],
        "asset_number": "ASSET-03",
        "model": None,
        "meter_type": "not prepaid",
        "notes": [],
    }


def test_scan_names_the_profile_of_each_unit_of_a_mixed_modbus_bus(tmp_path: Path) -> None:
    layout = {1: "sdm120", 4: "sdm630", 7: "ddsu666", 8: "dds238", 12: "dds238", 20: "sdm630"}
    bus = SimulatedModbusBus({u: (MeterModel(str(u)), load_profile(p)) for u, p in layout.items()})
    try:
        url = f"tcp://127.0.0.1:{bus.start_tcp()}"
        common = ("scan", "--protocol", "modbus", "--port", url, "--units", "1-30", "--probe-timeout", "0.05")
        found = run(*common, "--json")
        assert found.exit_code == 0, found.output + found.stderr
        report = json.loads(found.output)
        assert {u["unit"]: u["profile"] for u in report["units"]} == layout
        assert report["found"] == [str(u) for u in sorted(layout)]
        text = run(*common)
        assert text.exit_code == 0 and "sdm630" in text.output and "ddsu666" in text.output
        written = run(*common, "--write-config", "--bus-id", "lan-1")
        assert written.exit_code == 0, written.output + written.stderr
        assert written.output.count("[[meters]]") == 6 and 'profile = "ddsu666"' in written.output
    finally:
        bus.stop()
    checked = check_config(tmp_path, written.output)
    assert checked.exit_code == 0, checked.output + checked.stderr


def test_scan_refuses_bad_options_and_reports_a_bus_it_cannot_open(tmp_path: Path) -> None:
    tty = str(tmp_path / "no-such-tty")
    dlt = ("scan", "--protocol", "dlt645", "--port", tty)
    mb = ("scan", "--protocol", "modbus", "--port", tty)
    one_line(run(*dlt, "--units", "1-3"), 2, "--units apply to Modbus only")
    one_line(run(*mb, "--addresses", "1-3"), 2, "--addresses applies to DL/T 645 and DLMS only")
    one_line(run(*dlt, "--json", "--write-config"), 2, "exclusive")
    one_line(run(*dlt, "--bus-id", "bad id"), 2, "is not an id")
    one_line(run(*dlt, "--probe-timeout", "0"), 2, "--probe-timeout")
    one_line(run(*mb, "--units", "0-300"), 2, "outside 1-247")
    one_line(run(*mb, "--profile", "nope"), 2, "unknown meter profile 'nope'")
    one_line(run(*dlt), 1, "no-such-tty")
    one_line(run(*mb), 1, "no-such-tty")


def test_an_empty_line_is_exit_1_with_a_hint() -> None:
    bus = SimulatedDlt645Bus([MeterModel(address="000000000001")], emulate_timing=False)
    try:
        bus.models[0].faults.add(Fault.NO_ANSWER)
        url = f"socket://127.0.0.1:{bus.start_tcp()}"
        one_line(
            run("scan", "--protocol", "dlt645", "--port", url, "--probe-timeout", "0.05"),
            1,
            "no meter answered",
        )
    finally:
        bus.stop()
