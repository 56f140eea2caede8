"""DLMS values, profiles and key files: exact scaler-unit, strict OBIS, secrets never shown."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from dlms_cosem import dlms_data

from drivers.base import Point
from drivers.dlms import values as v
from drivers.dlms.keys import KeyFileError, load_security
from drivers.dlms.profile import find_profile, load_profile, parse_obis
from drivers.tomlsource import TomlError


def su(scaler: int, unit: int) -> bytes:
    return bytes([0x02, 0x02, 0x0F, scaler & 0xFF, 0x16, unit])


@pytest.mark.parametrize(
    ("raw", "scaler", "expected"),
    [(123456, 0, 123456), (123456, -1, 12346), (123455, -1, 12346), (123465, -1, 12346), (12, 3, 12000), (7, -3, 0)],
)
def test_energy_scaler_is_an_exact_exponent_shift(raw: int, scaler: int, expected: int) -> None:
    value = v.raw_number(dlms_data.DoubleLongUnsignedData(raw).to_bytes())
    wh = v.to_wh(v.in_unit(value, v.scaler_unit(su(scaler, 30)), "energy"))
    assert wh == expected  # half-even at the Wh: 12345.5 -> 12346, 12346.5 -> 12346


def test_voltage_keeps_its_decimals_exactly() -> None:
    value = v.in_unit(Decimal(2301), v.scaler_unit(su(-1, 35)), "voltage")
    assert value == Decimal("230.1") and str(value) == "230.1"


def test_wrong_unit_is_a_value_problem() -> None:
    with pytest.raises(v.ValueProblem, match="unit is V, expected Wh"):
        v.in_unit(Decimal(1), v.scaler_unit(su(0, 35)), "energy")


@pytest.mark.parametrize("data", [b"", b"\x02\x02\x0f", b"\xff\x00", su(0, 30)[:4], b"\x09\x05abc"])
def test_garbage_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(v.ValueProblem):
        v.scaler_unit(data)


def test_clock_round_trip_is_utc() -> None:
    when = datetime(2027, 3, 1, 12, 30, 5, tzinfo=UTC)
    encoded = dlms_data.OctetStringData(v.clock_bytes(when)).to_bytes()
    shanghai = ZoneInfo("Asia/Shanghai")
    assert v.clock_time(encoded, shanghai) == when  # deviation 0 is UTC, whatever the meters' zone


def test_clock_deviation_and_local_time() -> None:
    local = bytes.fromhex("07eb0301ff0c1e0500") + (-480).to_bytes(2, "big", signed=True) + b"\x00"  # UTC+8
    assert v.clock_time(dlms_data.OctetStringData(local).to_bytes()) == datetime(2027, 3, 1, 4, 30, 5, tzinfo=UTC)
    unspecified = bytes.fromhex("07eb0301ff0c1e0500") + b"\x80\x00\x00"
    got = v.clock_time(dlms_data.OctetStringData(unspecified).to_bytes(), ZoneInfo("Asia/Shanghai"))
    assert got == datetime(2027, 3, 1, 4, 30, 5, tzinfo=UTC)


def test_shipped_profile_offers_the_billing_points() -> None:
    p = load_profile("generic")
    assert {Point.ENERGY_IMPORT, Point.ENERGY_IMPORT_TARIFFS, Point.RELAY, Point.METER_TIME} <= set(p.offered())
    assert p.points.energy_import_tariffs is not None
    assert p.points.energy_import_tariffs.obis == [f"1.0.1.8.{i}.255" for i in range(1, 5)]
    assert find_profile("generic").parent.name == "profiles"


def test_obis_spellings() -> None:
    assert parse_obis("1-0:1.8.0") == (1, 0, 1, 8, 0, 255)
    assert parse_obis("0.0.96.3.10.255") == (0, 0, 96, 3, 10, 255)
    with pytest.raises(ValueError, match="not an OBIS code"):
        parse_obis("1.8.0")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('[points.voltage]\nobis = "1.0.1.8.0.255"\nclass = 3\n', "does not hold voltage"),
        ('[points.energy_import]\nobis = "1.0.1.8.0.255"\nclass = 7\n', "class 7 is not read"),
        ('[relay]\nobis = "0.0.96.3.10.255"\nclass = 3\n', "relay.class"),
        ('[points.energy_import]\nobis = "1.0.1.8.1.255"\nclass = 3\n', "tariff register"),
        ('[points.energy_import]\nobis = "1.0.1.8.0.256"\nclass = 3\n', "0–255"),
    ],
)
def test_bad_profile_is_one_line(tmp_path: Path, body: str, reason: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[meter]\nname = "x"\n' + body)
    with pytest.raises(TomlError) as err:
        load_profile(str(f))
    assert reason in str(err.value) and "\n" not in str(err.value)


def test_key_file_hls(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text('encryption_key = "000102030405060708090a0b0c0d0e0f"\nauthentication_key = "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"\n')
    sec = load_security("hls-gmac", 1, f)
    assert sec.encryption_key == bytes(range(16))
    assert "0001" not in repr(sec) and "d0d1" not in repr(sec)


@pytest.mark.parametrize(
    ("auth", "body", "reason"),
    [
        ("hls-gmac", 'encryption_key = "0001"\nauthentication_key = "0001"\n', "2 bytes, expected 16"),
        ("hls-gmac", 'encryption_key = "zz"\n', "not hexadecimal"),
        ("low", "", "password: missing"),
        ("low", 'pasword = "x"\n', "unknown key 'pasword'"),
    ],
)
def test_bad_key_file_names_the_key_never_the_value(tmp_path: Path, auth: str, body: str, reason: str) -> None:
    f = tmp_path / "k.toml"
    f.write_text(body)
    with pytest.raises(KeyFileError) as err:
        load_security(auth, 1, f)  # type: ignore[arg-type]
    assert reason in str(err.value) and "0001" not in str(err.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        load_security("low", 1, tmp_path / "absent.toml")
