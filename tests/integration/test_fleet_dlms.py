"""The fleet with ``protocol = "dlms"`` buses (HDLC on a pty and over TCP): the written gateway
configuration passes ``pmg run --check``, a real gateway polls the DLMS meters through it, and a
scheduled ``no_answer`` makes one DLMS meter time out; a fault DLMS meters cannot show is one line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.waiting import async_wait_for

from drivers.tomlsource import TomlError
from gateway.cli.main import cli
from gateway.config import load_config
from gateway.ledger.verify import verify
from gateway.runtime.daemon import Gateway
from simulators.fleet import Fleet, gateway_toml, load_fleet

FLEET = """
speed = 60.0
[gateway]
gateway_id = "gw-fleet-dlms"
[[buses]]
id = "h1"
protocol = "dlms"
serve = "pty"
start_address = 17
meters = 2
poll_interval_s = 0.3
timeout_s = 0.3
retries = 0
[[buses]]
id = "h2"
protocol = "dlms"
serve = "tcp"
parity = "N"
start_address = 40
meters = 2
poll_interval_s = 0.3
timeout_s = 0.3
retries = 0
[[faults]]
at_s = 0
bus = "h2"
meter = "41"
fault = "no_answer"
duration_s = 3600
"""


def test_dlms_fleet_serves_a_real_gateway(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.toml"
    fleet_file.write_text(FLEET)
    cfg = load_fleet(fleet_file)
    with Fleet(cfg) as fleet:
        endpoints = fleet.start()
        assert endpoints["h2"].startswith("socket://127.0.0.1:") and endpoints["h1"].startswith("/dev/")
        out = tmp_path / "gw.toml"
        out.write_text(gateway_toml(cfg, endpoints, base_dir=tmp_path, database=str(tmp_path / "gw.db")))
        check = CliRunner().invoke(cli, ["run", "--check", "-c", str(out)], prog_name="pmg")
        assert check.exit_code == 0, check.output
        gw_cfg = load_config(out)
        assert {m.address for m in gw_cfg.meters} == {"17", "18", "40", "41"}
        assert {b.line_parity for b in gw_cfg.buses} == {"N"}  # the DLMS default, not DL/T 645's E

        async def scenario() -> None:
            gateway = Gateway(out, gw_cfg)
            await gateway.start()
            try:
                def polled(meter: str) -> bool:
                    return bool(
                        gateway.store.scalar("SELECT last_register_wh IS NOT NULL FROM meters WHERE id = ?", meter)
                    )

                for meter in ("h1-0017", "h1-0018", "h2-0040"):
                    await async_wait_for(lambda m=meter: polled(m), timeout=20, what=f"{meter} polled")  # type: ignore[misc]
                await async_wait_for(
                    lambda: gateway.store.scalar(
                        "SELECT COUNT(*) FROM readings WHERE meter_id = 'h2-0041' AND quality = 'timeout'"
                    ),
                    what="the silent DLMS meter's timeouts recorded",
                )
                assert not polled("h2-0041")
                assert verify(gateway.store) == []
            finally:
                await gateway.stop()

        asyncio.run(scenario())


def test_a_fault_dlms_meters_cannot_show_is_one_line(tmp_path: Path) -> None:
    bad = FLEET.replace('fault = "no_answer"', 'fault = "wrong_unit"')
    path = tmp_path / "fleet.toml"
    path.write_text(bad)
    with pytest.raises(TomlError) as caught:
        load_fleet(path)
    assert "not simulated on DLMS buses" in str(caught.value) and "\n" not in str(caught.value)
