"""The IEC 62056-21 mode E opening over a real pty pair: the driver's link against the simulated meter
(``simulators.dlms_line``), which checks the line speed the client set from the pty's master side.

Opening + read works (sign-on at 300 baud, HDLC at the meter's 19200); HDLC without the opening is
ignored by such a meter; a meter silent to the sign-on is a timeout and one without mode E a typed
refusal saying so, each one line; ``opening`` is validated by ``run --check``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.gateway_harness import base_config, write_config

from drivers.base import BadFrame, MeterTimeout, Quality, Reading
from drivers.dlms.link import DlmsLink, Target
from drivers.dlms.meter import DlmsMeter
from drivers.dlms.opening import ModeENotOffered, parse_identification, with_parity
from drivers.dlms.profile import load_profile
from gateway.cli.main import cli
from simulators.dlms_line import DlmsLine
from simulators.dlms_meter import DlmsMeterModel


@pytest.fixture
def line(request: pytest.FixtureRequest) -> Iterator[DlmsLine]:
    opening, fault = getattr(request, "param", ("iec62056-21", None))
    sim = DlmsLine({17: DlmsMeterModel(power_w=Decimal(1000), fault=fault)}, opening=opening, baud=19200)
    sim.start_pty()
    yield sim
    sim.stop()


async def _read(url: str, opening: str, timeout_s: float = 0.3) -> tuple[DlmsLink, Reading]:
    link = DlmsLink(url, timeout_s=timeout_s, retries=0, opening=opening)
    async with link:
        reading = await DlmsMeter(link, Target(1, 17), load_profile("generic")).read()
    return link, reading


def test_opening_then_read(line: DlmsLine) -> None:
    link, reading = asyncio.run(_read(line.url, "iec62056-21"))
    assert reading.quality is Quality.OK, reading.error
    assert reading.relay is not None
    assert link.stats.openings == 1 and line.openings == 1
    assert line.ignored == 0  # every HDLC byte arrived at 19200 baud, the sign-on at 300
    assert line.state == "idle"  # the DISC ended the session: the port is back at the opening
    _, again = asyncio.run(_read(line.url, "iec62056-21"))
    assert again.quality is Quality.OK and line.openings == 2


def test_hdlc_without_the_opening_is_ignored(line: DlmsLine) -> None:
    _, reading = asyncio.run(_read(line.url, "none", timeout_s=0.2))
    assert reading.quality is Quality.TIMEOUT
    assert line.openings == 0 and line.ignored > 0


@pytest.mark.parametrize("line", [("iec62056-21", "silent")], indirect=True)
def test_meter_silent_to_the_sign_on(line: DlmsLine) -> None:
    async def go() -> None:
        async with DlmsLink(line.url, timeout_s=0.2, retries=0, opening="iec62056-21") as link:
            await link.converse(Target(1, 17), lambda s: None)

    with pytest.raises(MeterTimeout) as caught:
        asyncio.run(go())
    text = str(caught.value)
    assert "\n" not in text and "no identification" in text and "sign-on" in text


@pytest.mark.parametrize("line", [("mode-c", None)], indirect=True)
def test_meter_without_mode_e(line: DlmsLine) -> None:
    async def go() -> None:
        async with DlmsLink(line.url, timeout_s=0.2, retries=2, opening="iec62056-21") as link:
            await link.converse(Target(1, 17), lambda s: None)

    with pytest.raises(ModeENotOffered) as caught:
        asyncio.run(go())
    text = str(caught.value)
    assert "\n" not in text and "without mode E" in text and "/PMG6SIM00017" in text
    assert line.openings == 1  # a refusal is not retried


def test_identification_parsing() -> None:
    assert parse_identification(with_parity(b"/ABC5\\2MT382\r\n"), "m") == ("/ABC5\\2MT382", 9600, "5")
    assert parse_identification(with_parity(b"/ISk6\\W\\2ZMD\r\n"), "m")[1] == 19200
    with pytest.raises(ModeENotOffered):
        parse_identification(with_parity(b"/ABC5MT382\r\n"), "m")
    with pytest.raises(ModeENotOffered):
        parse_identification(with_parity(b"/ABCE\\2MT382\r\n"), "m")  # a mode B baud letter
    with pytest.raises(BadFrame, match="parity"):
        parse_identification(b"/ABC5\\2MT382\r\n", "m")  # '/' has an odd count of ones: bit 7 missing
    with pytest.raises(BadFrame, match="not an IEC 62056-21 identification"):
        parse_identification(with_parity(b"hello\r\n"), "m")


@pytest.mark.parametrize(
    ("bus_extra", "url", "reason"),
    [
        ('opening = "mode-e"\n', "/dev/ttyS9", "opening"),
        ('opening = "iec62056-21"\n', "tcp://127.0.0.1:4059", "not to the TCP wrapper"),
    ],
)
def test_run_check_validates_opening(tmp_path: Path, bus_extra: str, url: str, reason: str) -> None:
    body = base_config(tmp_path / "pmg.db")
    body += f'\n[[buses]]\nid = "d1"\nprotocol = "dlms"\nurl = "{url}"\n{bus_extra}'
    body += '\n[[meters]]\nid = "m1"\nbus = "d1"\naddress = "17"\naccount = "a1"\ntariff = "flat-cn"\n'
    body += '\n[[accounts]]\nid = "a1"\n'
    cfg = write_config(tmp_path / "gw.toml", body)
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--check"], prog_name="pmg")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and reason in lines[0], lines


def test_run_check_refuses_a_second_meter_behind_an_opening(tmp_path: Path) -> None:
    """The sign-on names no device: two meters on the line would both answer it."""
    body = base_config(tmp_path / "pmg.db")
    body += '\n[[buses]]\nid = "d1"\nprotocol = "dlms"\nurl = "/dev/ttyS9"\nopening = "iec62056-21"\n'
    for n in (1, 2):
        body += f'\n[[meters]]\nid = "m{n}"\nbus = "d1"\naddress = "{16 + n}"\naccount = "a{n}"\ntariff = "flat-cn"\n'
        body += f'\n[[accounts]]\nid = "a{n}"\n'
    cfg = write_config(tmp_path / "gw.toml", body)
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--check"], prog_name="pmg")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "one meter per such bus" in lines[0], lines


def test_run_check_accepts_opening(tmp_path: Path) -> None:
    body = base_config(tmp_path / "pmg.db")
    body += '\n[[buses]]\nid = "d1"\nprotocol = "dlms"\nurl = "/dev/ttyS9"\nopening = "iec62056-21"\n'
    body += '\n[[meters]]\nid = "m1"\nbus = "d1"\naddress = "17"\naccount = "a1"\ntariff = "flat-cn"\n'
    body += '\n[[accounts]]\nid = "a1"\n'
    cfg = write_config(tmp_path / "gw.toml", body)
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--check"], prog_name="pmg")
    assert result.exit_code == 0, result.output


def test_pmg_read_through_the_opening(line: DlmsLine) -> None:
    args = ["read", "--protocol", "dlms", "--port", line.url, "--address", "17", "--timeout", "0.3"]
    result = CliRunner().invoke(cli, [*args, "--opening", "iec62056-21", "--json"], prog_name="pmg")
    assert result.exit_code == 0, result.output
    assert line.openings == 1 and '"relay"' in result.stdout
    refused = CliRunner().invoke(cli, ["read", "--protocol", "modbus", "--port", line.url, "--opening", "iec62056-21"])
    assert refused.exit_code == 2 and "--opening applies to DLMS" in refused.output
