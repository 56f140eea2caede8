"""Configuration is strict: every mistake names file, line and key in one line, and nothing starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drivers.tomlsource import TomlError, locate
from gateway.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "gateway.example.toml"

GOOD = """gateway_id = "gw-1"
timezone = "Asia/Shanghai"
database = "pmg.db"

[[buses]]
id = "b1"
protocol = "dlt645"
url = "/dev/ttyUSB0"

[[buses]]
id = "b2"
protocol = "modbus"
url = "tcp://127.0.0.1:502"

[[meters]]
id = "m1"
bus = "b1"
address = "000000000001"
account = "a1"
tariff = "flat-cn"

[[meters]]
id = "m2"
bus = "b2"
address = "7"
profile = "sdm120"
account = "a2"
tariff = "flat-cn"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_the_example_configuration_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.gateway_id == "gw-example-01"
    assert {b.protocol for b in cfg.buses} == {"dlt645", "modbus"}


def test_a_good_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert [m.id for m in cfg.meters_on("b1")] == ["m1"]
    assert (cfg.bus("b1").line_baud, cfg.bus("b1").line_parity) == (2400, "E")  # DL/T 645 default 8E1
    assert (cfg.bus("b2").line_baud, cfg.bus("b2").line_parity) == (9600, "N")


@pytest.mark.parametrize(
    ("change", "line", "fragment"),
    [
        (
            ('protocol = "dlt645"\nurl', 'protocol = "dlt645"\nbaud_rate = 2400\nurl'),
            8,
            "buses[0].baud_rate: unknown key 'baud_rate'",
        ),
        (('bus = "b1"', 'bus = "b9"'), 17, "meters[0].bus: no bus 'b9'"),
        (
            ('address = "000000000001"', 'address = "12345"'),
            18,
            "meters[0].address: DL/T 645 address must be 12 digits",
        ),
        (('address = "7"', 'address = "300"'), 25, "meters[1].address: Modbus unit id must be 1–247"),
        (
            ('timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus"'),
            2,
            "timezone: unknown time zone 'Mars/Olympus'",
        ),
        (('id = "m2"', 'id = "m1"'), 23, "meters[1].id: duplicate meter id 'm1'"),
        (
            ('url = "/dev/ttyUSB0"', 'url = "/dev/ttyUSB0"\nbaud = "fast"'),
            9,
            "buses[0].baud: Input should be a valid integer",
        ),
        (
            (
                'account = "a2"\ntariff = "flat-cn"\n',
                'account = "a2"\ntariff = "flat-cn"\n[mqtt]\nhost = "x"\ntls = false\n',
            ),
            29,
            "mqtt: tls = false needs allow_plaintext = true",
        ),
        (('profile = "sdm120"\n', ""), 22, "meters[1]: a Modbus meter needs a profile"),
        (
            (
                'account = "a2"\ntariff = "flat-cn"\n',
                'account = "a2"\ntariff = "flat-cn"\n[mqtt]\nhost = "x"\n[mqtt.command_keys]\nhq-1 = "AAAA"\n',
            ),
            32,
            "mqtt.command_keys.hq-1: 3 bytes, an Ed25519 public key has 32",
        ),
        (('[[meters]]\nid = "m1"', '[[meters]\nid = "m1"'), 15, "TOML syntax error"),
    ],
)
def test_each_mistake_names_file_line_and_key(
    tmp_path: Path, change: tuple[str, str], line: int, fragment: str
) -> None:
    assert change[0] in GOOD
    path = write(tmp_path, GOOD.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message


def test_pmg_run_refuses_a_typo_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('protocol = "dlt645"\n', 'protocol = "dlt645"\nparty = "E"\n', 1))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"pmg: error: {path}:8: buses[0].party: unknown key 'party'"
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "pmg.db").exists(), "the daemon must not start (nor create its database)"


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TomlError, match=r"^.*nope.toml: cannot read file"):
        load_config(tmp_path / "nope.toml")


def test_locate_follows_arrays_nested_in_arrays() -> None:
    text = (
        '[[versions]]\nversion = 1\n[[versions.blocks]]\nprice = "1"\n[[versions.blocks]]\nprice = "2"\n'
        '[[versions]]\nversion = 2\n[versions.cycle]\nkind = "annual"\n[[versions.blocks]]\nprice = "3"\n'
    )
    assert locate(text, ("versions", 0, "blocks", 1, "price")) == 6
    assert locate(text, ("versions", 1, "blocks", 0, "price")) == 12
    assert locate(text, ("versions", 1, "cycle", "kind")) == 10
    assert locate(text, ("versions", 1, "missing")) == 7
