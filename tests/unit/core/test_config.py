"""Configuration is strict: every mistake names file, line and key in one line, and nothing starts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.tomlsource import TomlError, locate
from gateway.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "gateway" / "examples" / "gateway.example.toml"

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


# --- configuration that cannot double-bill -------------------------------------------------------


def _run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_two_spellings_of_one_modbus_unit_on_one_bus_are_refused(tmp_path: Path) -> None:
    """ "1" and "01" are the same slave: both meters would read (and charge) one device."""
    second = GOOD + '\n[[meters]]\nid = "m3"\nbus = "b2"\naddress = "07"\nprofile = "sdm120"\naccount = "a3"\n'
    path = write(tmp_path, second + 'tariff = "flat-cn"\n')
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:33: meters[2].address: address 07 (unit 7) already used on bus b2")
    assert "meter 'm2'" in str(err.value)


@pytest.mark.parametrize(
    ("change", "line", "fragment"),
    [
        (('address = "000000000001"', 'address = "٠٠٠٠٠٠٠٠٠٠٠١"'), 18, "only the digits 0-9"),
        (('address = "7"', 'address = "７"'), 25, "only the digits 0-9"),
        (('database = "pmg.db"', 'database = "pmg.db"\n[metrics]\nlisten = "127.0.0.1:99999"'), 5, "metrics.listen"),
        (
            ('tariff = "flat-cn"\n\n[[meters]]', 'tariff = "flat-cn"\n[[accounts]]\nid = "a1"\nemergency_credit = "5.001"\n\n[[meters]]'),
            23,
            "accounts[0].emergency_credit: '5.001' has more than minor_digits = 2 decimal places",
        ),
        (
            ('tariff = "flat-cn"\n\n[[meters]]', 'tariff = "flat-cn"\n[[accounts]]\nid = "a1"\nemergency_credit = "-5.00"\n\n[[meters]]'),
            23,
            "accounts[0].emergency_credit: money must be a non-negative decimal",
        ),
    ],
)
def test_what_run_would_refuse_or_misstore_is_refused_at_load(
    tmp_path: Path, change: tuple[str, str], line: int, fragment: str
) -> None:
    """``run --check`` and ``run`` share ``load_config``: these used to pass it and fail (or store −500) later."""
    assert change[0] in GOOD
    path = write(tmp_path, GOOD.replace(change[0], change[1], 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:{line}: "), str(err.value)
    assert fragment in str(err.value)


def test_run_check_refuses_what_run_refuses(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('address = "7"', 'address = "٧"', 1))
    done = _run_cli(tmp_path, "run", "--check", "--config", str(path))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"pmg: error: {path}:25: meters[1].address: Modbus unit id must be 1–247")
    assert not (tmp_path / "pmg.db").exists()


def _db_with(tmp_path: Path, digits: int, currency: str = "CNY") -> Path:
    from gateway.store.db import open_store
    from gateway.store.pins import check_money_pins

    store = open_store(tmp_path / "pmg.db")
    check_money_pins(store, currency, digits)
    store.close()
    return tmp_path / "pmg.db"


@pytest.mark.parametrize(("setting", "text"), [("minor_digits", "minor_digits = 0"), ("currency", 'currency = "EUR"')])
def test_money_settings_are_pinned_in_the_database(tmp_path: Path, setting: str, text: str) -> None:
    """49.76 CNY is 4976 minor units; read with minor_digits = 0 it became "4976 CNY"."""
    from gateway.store.db import open_store
    from gateway.store.pins import PinnedSettingMismatch, check_money_pins

    _db_with(tmp_path, 2)
    store = open_store(tmp_path / "pmg.db")
    try:
        check_money_pins(store, "CNY", 2)  # the same settings: fine, again and again
        with pytest.raises(PinnedSettingMismatch, match=f"configuration {setting} = .* but the database was created with"):
            check_money_pins(store, "EUR" if setting == "currency" else "CNY", 0 if setting == "minor_digits" else 2)
    finally:
        store.close()
    tariffs = REPO / "gateway" / "tariffs" / "examples"
    path = write(tmp_path, GOOD.replace('database = "pmg.db"', f'database = "pmg.db"\ntariff_dir = "{tariffs}"\n{text}', 1))
    for args in (("balance", "a1"), ("run", "--check"), ("run",)):
        done = _run_cli(tmp_path, *args, "--config", str(path))
        assert done.returncode != 0, args
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "but the database was created with" in lines[0], done.stderr


def test_a_tariff_in_another_currency_is_refused(tmp_path: Path) -> None:
    from gateway.runtime.components import build_components

    path = write(tmp_path, GOOD.replace('database = "pmg.db"', 'database = "pmg.db"\ncurrency = "GBP"', 1))
    (tmp_path / "config").mkdir()
    cfg = load_config(path)
    cfg = cfg.model_copy(update={"tariff_dir": str(REPO / "gateway" / "tariffs" / "examples")})
    with pytest.raises(ValueError, match="meter 'm1': tariff 'flat-cn' is in CNY, the gateway keeps accounts in GBP"):
        build_components(cfg, path, None)


def test_a_bare_number_is_not_a_notice_period(tmp_path: Path) -> None:
    """``period = 7`` used to be read as 7 seconds of notice before a cut."""
    from gateway.policy.rules import RulesError, load_preset

    with pytest.raises(RulesError, match=r'notice\.period: a duration needs a unit: .*"P7D"'):
        load_preset("generic", {"notice": {"period": 7}})
    assert load_preset("generic", {"notice": {"period": "P7D"}}).notice.period.days == 7


def test_every_commented_key_of_the_example_configuration_exists(tmp_path: Path) -> None:
    """Uncommenting any example line must give a valid configuration (``period_hours`` did not exist)."""
    from gateway.policy.rules import load_preset

    lines = EXAMPLE.read_text().splitlines()
    key_line = re.compile(r"^# ?([A-Za-z0-9_-]+ = .*)$")
    header = re.compile(r"^# ?(\[[A-Za-z0-9_.]+\])\s*$")
    tried = 0
    for i, raw in enumerate(lines):
        m = key_line.match(raw)
        if not m:
            continue
        edited = list(lines)
        edited[i] = m.group(1)
        j = i - 1
        while j >= 0 and lines[j].startswith("#"):  # a commented table header this key belongs to
            h = header.match(lines[j])
            if h:
                edited[j] = h.group(1)
                break
            j -= 1
        path = tmp_path / f"example-{i}.toml"
        path.write_text("\n".join(edited) + "\n")
        cfg = load_config(path)
        load_preset(cfg.policy.preset, cfg.policy.overrides)
        tried += 1
    assert tried >= 2
