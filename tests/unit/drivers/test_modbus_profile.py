"""Profiles: the shipped register maps load, and a bad file says file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.base import Point
from drivers.modbus.codec import DataType
from drivers.modbus.profile import builtin_dir, find_profile, list_profiles, load_profile
from drivers.tomlsource import TomlError

GOOD = """\
[meter]
name = "test meter"

[points.energy_import]
register = 0x0000
function = 3
type = "u32"
scale = "0.01"
unit = "kWh"
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_shipped_profiles_are_listed_and_load() -> None:
    assert {"sdm120", "sdm630", "ddsu666", "dds238"} <= set(list_profiles())
    for name in list_profiles():
        prof = load_profile(name)
        assert prof.name == name
        assert prof.point(Point.ENERGY_IMPORT) is not None, name


def test_facts_from_protocols_md() -> None:
    sdm120 = load_profile("sdm120")
    energy = sdm120.point(Point.ENERGY_IMPORT)
    assert energy is not None and (energy.address, energy.function, energy.type) == (0x48, 4, DataType.FLOAT32)
    assert sdm120.meter.baud == 2400 and sdm120.relay is None
    dds = load_profile("dds238")
    assert dds.relay is not None
    assert (dds.relay.command.address, dds.relay.command.function) == (0x1A, 16)  # FC06 is refused
    ddsu = load_profile("ddsu666")
    power = ddsu.point(Point.POWER)
    assert power is not None and (power.address, power.unit) == (0x2004, "kW")


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown meter profile 'sdm999' \(known: .*dds238.*sdm120") as err:
        load_profile("sdm999")
    assert "\n" not in str(err.value)


def test_misspelt_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('unit = "kWh"', 'unit = "kWh"\nword_ordr = "big"'))
    with pytest.raises(TomlError) as err:
        load_profile(path)
    assert str(err.value) == f"{path}:10: points.energy_import.word_ordr: unknown key 'word_ordr'"


def test_float_scale_is_rejected_as_inexact(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('scale = "0.01"', "scale = 0.01"))
    with pytest.raises(TomlError, match=r"p.toml:8: points.energy_import.scale: .*as a string"):
        load_profile(path)


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ('unit = "kWh"', 'unit = "kVAh"', "points.energy_import"),
        ("function = 3", "function = 6", "points.energy_import.function"),
        ('type = "u32"', 'type = "u24"', "points.energy_import.type"),
        ("register = 0x0000", "register = 70000", "points.energy_import.register"),
    ],
)
def test_bad_values_are_located(tmp_path: Path, old: str, new: str, where: str) -> None:
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(TomlError, match=rf"p.toml:\d+: {where.replace('.', '[.]')}: ") as err:
        load_profile(path)
    assert err.value.line is not None


def test_float_point_needs_decimals(tmp_path: Path) -> None:
    text = GOOD + '[points.voltage]\nregister = 0x0010\nfunction = 3\ntype = "float32"\nunit = "V"\n'
    with pytest.raises(TomlError, match=r"points.voltage: .*give 'decimals'"):
        load_profile(write(tmp_path, text))


def test_relay_values_must_differ(tmp_path: Path) -> None:
    text = GOOD + "[relay.state]\nfunction = 3\nregister = 1\n[relay.command]\nfunction = 5\nregister = 1\nclose = 1\ntrip = 1\n"
    with pytest.raises(TomlError, match=r"relay.command: .*close and trip must differ"):
        load_profile(write(tmp_path, text))


def test_extra_directories_add_profiles_and_come_first(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "mine.toml")
    write(tmp_path, GOOD, "sdm120.toml")  # a site's corrected map of a shipped model
    assert {"mine", "sdm120", "dds238"} <= set(list_profiles([tmp_path]))
    assert load_profile("mine", [tmp_path]).meter.name == "test meter"
    assert find_profile("sdm120", [tmp_path]) == tmp_path / "sdm120.toml"
    assert find_profile("sdm120") == builtin_dir() / "sdm120.toml"
    assert "mine" not in list_profiles()


def test_an_unknown_name_is_one_line_naming_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown meter profile 'nope'") as err:
        load_profile("nope", [tmp_path])
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_shipped_profiles_are_package_data_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert builtin_dir().parts[-3:] == ("drivers", "modbus", "profiles")
    assert (builtin_dir() / "sdm120.toml").is_file()
    assert load_profile("sdm120").name == "sdm120"
