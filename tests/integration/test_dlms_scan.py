"""``pmg scan --protocol dlms``: simulated DLMS meters sharing one HDLC line (``simulators.dlms_line``)
over TCP (as a serial device server carries it) and on a pty with the mode E opening are found by
HDLC physical address, silent addresses skipped, a meter that refuses the public client listed as
such; ``--write-config`` gives entries ``pmg run --check`` accepts; bad options are one line, exit 2."""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support.gateway_harness import base_config, write_config

from gateway.cli.main import cli
from simulators.dlms_line import DlmsLine
from simulators.dlms_meter import DlmsMeterModel


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="pmg")


def one_line(result: Result, status: int, needle: str) -> None:
    assert result.exit_code == status, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmg: error: ") and needle in lines[0], result.stderr


@pytest.fixture
def line() -> Iterator[DlmsLine]:
    models = {17: DlmsMeterModel(), 20: DlmsMeterModel(power_w=Decimal(300)), 23: DlmsMeterModel()}
    sim = DlmsLine(models, passwords={23: b"12345678"})  # 23 refuses the public client
    sim.start_tcp()
    yield sim
    sim.stop()


def test_scan_finds_the_meters_of_a_line_and_skips_silent_addresses(line: DlmsLine, tmp_path: Path) -> None:
    common = ("scan", "--protocol", "dlms", "--port", line.url, "--addresses", "16-24", "--probe-timeout", "0.1")
    started = time.monotonic()
    result = run(*common, "--json")
    took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["found"] == ["17", "20", "23"]
    assert [m["association"] for m in report["meters"]] == ["accepted", "accepted", "refused"]
    assert report["probes"] == 9 and report["opening"] == "none"
    assert took < 9 * 0.1 + 6  # silent addresses cost the probe timeout (at the bus default of 1 s: over 9 s)

    table = run(*common)
    assert table.exit_code == 0 and "3 meter(s)" in table.stdout and "refused" in table.stdout

    written = run(*common, "--write-config", "--bus-id", "hdlc-1")
    assert written.exit_code == 0, written.output
    parsed = tomllib.loads(written.stdout)
    assert parsed["buses"][0]["protocol"] == "dlms" and parsed["buses"][0]["url"] == line.url
    assert [m["address"] for m in parsed["meters"]] == ["17", "20", "23"]
    assert "set [meters.dlms]" in written.stdout  # the meter that refused the public client
    cfg = write_config(tmp_path / "gw.toml", base_config(tmp_path / "pmg.db") + "\n" + written.stdout)
    check = run("run", "--check", "-c", str(cfg))
    assert check.exit_code == 0, check.output


def test_scan_with_the_mode_e_opening_on_a_pty() -> None:
    sim = DlmsLine({42: DlmsMeterModel()}, opening="iec62056-21", baud=19200)
    try:
        url = sim.start_pty()
        args = ("scan", "--protocol", "dlms", "--port", url, "--addresses", "41-42", "--probe-timeout", "0.1")
        result = run(*args, "--opening", "iec62056-21", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["found"] == ["42"] and sim.openings == 2
        written = run(*args, "--opening", "iec62056-21", "--write-config")
        assert 'opening = "iec62056-21"' in written.stdout
    finally:
        sim.stop()


def test_scan_of_a_port_without_mode_e_is_one_line() -> None:
    sim = DlmsLine({42: DlmsMeterModel()}, opening="mode-c")
    try:
        url = sim.start_pty()
        one_line(
            run("scan", "--protocol", "dlms", "--port", url, "--addresses", "40-42", "--opening", "iec62056-21"),
            1,
            "without mode E",
        )
    finally:
        sim.stop()


def test_a_port_silent_to_the_sign_on_stops_the_scan_at_once() -> None:
    """No probe on the optical head: the sign-on names no meter, so its silence is the port's, and a
    scan of 110 addresses must not wait two seconds at each (about 4 minutes) to say so."""
    sim = DlmsLine({42: DlmsMeterModel(fault="silent")}, opening="iec62056-21")
    try:
        url = sim.start_pty()
        t0 = time.monotonic()
        one_line(run("scan", "--protocol", "dlms", "--port", url, "--opening", "iec62056-21"), 1, "no identification")
        assert time.monotonic() - t0 < 15  # one sign-on's wait, not 110
    finally:
        sim.stop()


def test_dlms_scan_refuses_bad_options(tmp_path: Path) -> None:
    tty = str(tmp_path / "no-such-tty")
    dlms = ("scan", "--protocol", "dlms", "--port", tty)
    one_line(run(*dlms, "--addresses", "16-20000"), 2, "not within 16-125 or 128-16381")
    for station_less in ("0", "127", "126", "16383", "5-20"):  # no station, calling, all stations, reserved
        one_line(run(*dlms, "--addresses", station_less), 2, "a single station's HDLC address")
    one_line(run(*dlms, "--addresses", "16-"), 2, "not an HDLC address")
    one_line(run(*dlms, "--addresses", "x"), 2, "not an HDLC address")
    one_line(run(*dlms, "--units", "1-3"), 2, "--units apply to Modbus only")
    one_line(run(*dlms, "--opening", "mode-e"), 2, "--opening")
    one_line(run("scan", "--protocol", "dlt645", "--port", tty, "--opening", "iec62056-21"), 2, "DLMS only")
    one_line(run("scan", "--protocol", "dlms", "--port", "tcp://127.0.0.1:4059"), 2, "TCP wrapper")
    one_line(run(*dlms), 1, "no-such-tty")


def test_an_empty_dlms_line_is_exit_1_with_a_hint() -> None:
    sim = DlmsLine({17: DlmsMeterModel(fault="silent")})
    try:
        sim.start_tcp()
        one_line(
            run("scan", "--protocol", "dlms", "--port", sim.url, "--addresses", "16-18", "--probe-timeout", "0.05"),
            1,
            "no DLMS meter answered",
        )
    finally:
        sim.stop()
