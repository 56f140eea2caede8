"""``protocol = "dlms"`` through the configuration and the CLI: ``run --check`` refuses a bad DLMS
profile or key file in one line with exit 2, accepts a good one; ``pmg read`` reads the peer."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.gateway_harness import base_config, write_config

from gateway.cli.main import cli
from gateway.config import load_config
from simulators.dlms_meter import DlmsMeterModel, DlmsTcpServer

KEYS = 'encryption_key = "000102030405060708090a0b0c0d0e0f"\nauthentication_key = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"\n'


def _config(tmp_path: Path, meter_extra: str = "", profile: str | None = None) -> Path:
    body = base_config(tmp_path / "pmg.db")
    body += '\n[[buses]]\nid = "d1"\nprotocol = "dlms"\nurl = "tcp://127.0.0.1:4059"\n'
    body += '\n[[meters]]\nid = "m1"\nbus = "d1"\naddress = "1"\naccount = "a1"\ntariff = "flat-cn"\n'
    if profile:
        body += f'profile = "{profile}"\n'
    body += meter_extra
    body += '\n[[accounts]]\nid = "a1"\n'
    return write_config(tmp_path / "gw.toml", body)


def _check(cfg: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--check"], prog_name="pmg")
    return result.exit_code, result.output.strip().splitlines()


def test_good_dlms_config_with_hls_keys(tmp_path: Path) -> None:
    (tmp_path / "meter.keys").write_text(KEYS)
    cfg = _config(tmp_path, '\n[meters.dlms]\nclient = 1\nauth = "hls-gmac"\nkey_file = "meter.keys"\n')
    code, lines = _check(cfg)
    assert code == 0, lines
    loaded = load_config(cfg)
    opts = loaded.meter_options(loaded.meters[0])
    assert opts["auth"] == "hls-gmac" and opts["key_file"] == str(tmp_path / "meter.keys")
    assert loaded.profile_file(loaded.meters[0]).endswith("generic.toml")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("extra", "keys", "profile_body", "reason"),
    [
        ('\n[meters.dlms]\nauth = "low"\nkey_file = "absent.keys"\n', None, None, "no such key file"),
        ('\n[meters.dlms]\nauth = "hls-gmac"\nkey_file = "meter.keys"\n',
         'encryption_key = "0001"\nauthentication_key = "0001"\n', None, "2 bytes, expected 16"),
        ("", None, '[meter]\nname = "x"\n[points.energy_import]\nobis = "1.0.99.8.0.255"\nclass = 3\n', "does not hold energy_import"),
        ("", None, '[meter]\nname = "x"\n[points.energy_import]\nobis = "1.0.1.8.0.255"\nclass = 9\n', "class 9 is not read"),
    ],
)
def test_run_check_refuses_in_one_line(
    tmp_path: Path, extra: str, keys: str | None, profile_body: str | None, reason: str
) -> None:
    if keys is not None:
        (tmp_path / "meter.keys").write_text(keys)
    profile = None
    if profile_body is not None:
        (tmp_path / "site.toml").write_text(profile_body)
        profile = "site.toml"
    code, lines = _check(_config(tmp_path, extra, profile))
    assert code == 2
    assert len(lines) == 1 and reason in lines[0], lines
    assert "0001" not in lines[0]


def test_pmg_read_dlms(tmp_path: Path) -> None:
    server = DlmsTcpServer(DlmsMeterModel(power_w=Decimal(500))).start()
    try:
        result = CliRunner().invoke(
            cli, ["read", "--protocol", "dlms", "--port", server.url, "--address", "1", "--json"], prog_name="pmg"
        )
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["quality"] == "ok" and data["relay"] == "closed" and data["voltage_v"] == "230.1"
    assert data["energy_import_tariffs_wh"] == [0, 0, 0, 0]
