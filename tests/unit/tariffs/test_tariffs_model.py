"""Tariff files: the examples load and round-trip; bad files fail with one line naming file and line."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from drivers.tomlsource import TomlError
from gateway.tariffs.build import with_version
from gateway.tariffs.model import Tariff, load_tariff, load_tariff_dir, tariff_from_dict, tariff_to_dict

CONFIG = Path(__file__).resolve().parents[3] / "gateway" / "tariffs" / "examples"
CST = timezone(timedelta(hours=8))

GOOD = """\
id = "t"
currency = "CNY"

[[versions]]
version = 1
effective_from = 2026-01-01T00:00:00+08:00
timezone = "Asia/Shanghai"

[versions.cycle]
kind = "monthly"
start_day = 15

[[versions.blocks]]
up_to_kwh = 200
prices = { peak = "0.6", valley = "0.3" }

[[versions.blocks]]
prices = { peak = "0.9", valley = "0.5" }

[versions.tou]
registers = { T1 = "peak", T2 = "valley" }

[[versions.tou.windows]]
days = ["workday", "weekend", "holiday"]
start = "08:00"
end = "22:00"
period = "peak"

[[versions.tou.windows]]
days = ["workday", "weekend", "holiday"]
start = "22:00"
end = "08:00"
period = "valley"
"""


def _write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(text: str, needle: str, nth: int = 1) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return lines[nth - 1]


def test_example_tariffs_load_and_round_trip_through_json() -> None:
    tariffs = load_tariff_dir(CONFIG)
    assert set(tariffs) >= {"flat-cn", "tou-cn", "zhejiang-residential", "uk-standard"}
    for tariff in tariffs.values():
        assert tariff_from_dict(tariff_to_dict(tariff), "mqtt") == tariff
    zj = tariffs["zhejiang-residential"]
    v1 = zj.versions[0]
    assert [b.up_to_wh for b in v1.blocks] == [2_760_000, 4_800_000, None]
    assert [v1.price(b, "peak") for b in (1, 2, 3)] == [Decimal("0.568"), Decimal("0.618"), Decimal("0.868")]
    assert [v1.price(b, "valley") for b in (1, 2, 3)] == [
        Decimal("0.288"),
        Decimal("0.338"),
        Decimal("0.588"),
    ]
    uk = tariffs["uk-standard"].versions[0]
    assert uk.price(1, None) == Decimal("0.2450")
    assert uk.standing_charge_per_day == Decimal("0.5300")
    assert tariffs["flat-cn"].versions[0].price(1, None) == Decimal("0.5283")
    assert tariffs["tou-cn"].versions[0].tou is not None
    assert tariffs["tou-cn"].versions[0].tou.register_map == {"T1": "peak", "T2": "flat", "T3": "valley"}


def test_good_file_with_monthly_blocks_and_tou_loads(tmp_path: Path) -> None:
    tariff = load_tariff(_write(tmp_path, GOOD))
    version = tariff.versions[0]
    assert version.cycle is not None and version.cycle.kind == "monthly" and version.cycle.start_day == 15
    assert version.tou is not None and version.tou.periods == ("peak", "valley")
    assert version.tou.period_at("holiday", 7 * 3_600_000_000) == "valley"
    assert version.tou.period_at("workday", 8 * 3_600_000_000) == "peak"


@pytest.mark.parametrize(
    ("old", "new", "needle", "nth", "reason"),
    [
        ("start_day = 15", "start_day = 15\nstrat = 1", "strat", 1, "unknown key 'strat'"),
        ('peak = "0.6"', "peak = 0.6", "peak = 0.6", 1, "a float is lossy"),
        (
            'start = "22:00"',
            'start = "21:00"',
            "[[versions.tou.windows]]",
            2,
            "overlaps window 0 on workday at 21:00",
        ),
        ('start = "22:00"', 'start = "23:00"', "[versions.tou]", 1, "no period covers workday from 22:00"),
        ("up_to_kwh = 200", "up_to_kwh = 0", "up_to_kwh = 0", 1, "blocks must increase"),
        ('start = "08:00"', 'start = "8am"', 'start = "8am"', 1, 'expected a local time "HH:MM"'),
        ('"Asia/Shanghai"', '"Asia/Shangai"', "timezone", 1, "unknown time zone 'Asia/Shangai'"),
        ("+08:00", "", "effective_from", 1, "needs a UTC offset"),
        ('valley = "0.5"', 'valley = "0.5", night = "0.1"', 'night = "0.1"', 1, "period 'night' is not used"),
        ('T2 = "valley"', 'T2 = "night"', "registers", 1, "register T2 maps to unknown period 'night'"),
        ('T2 = "valley"', 'T5 = "valley"', "registers", 1, "T5"),
        (
            'prices = { peak = "0.9", valley = "0.5" }',
            'prices = { peak = "0.9" }',
            'prices = { peak = "0.9" }',
            1,
            "no price for period(s) valley",
        ),
        ('kind = "monthly"', 'kind = "weekly"', 'kind = "weekly"', 1, "annual"),
        (
            'prices = { peak = "0.6", valley = "0.3" }',
            'prices = { peak = "-0.6", valley = "0.3" }',
            "-0.6",
            1,
            "must not be negative",
        ),
    ],
)
def test_bad_files_give_one_line_error_with_file_and_line(
    tmp_path: Path, old: str, new: str, needle: str, nth: int, reason: str
) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    path = _write(tmp_path, text)
    with pytest.raises(TomlError) as caught:
        load_tariff(path)
    message = str(caught.value)
    assert "\n" not in message
    assert reason in message
    assert message.startswith(f"{path}:{_line_of(text, needle, nth)}: "), message


def test_missing_versions_and_empty_versions_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, 'id = "t"\ncurrency = "CNY"\n')
    with pytest.raises(TomlError, match=r"t\.toml:\d*.*missing required key 'versions'"):
        load_tariff(path)
    path = _write(tmp_path, 'id = "t"\ncurrency = "CNY"\nversions = []\n')
    with pytest.raises(TomlError, match=r"t\.toml:3: versions: .*at least 1"):
        load_tariff(path)


def test_versions_must_increase_in_number_and_instant(tmp_path: Path) -> None:
    second = GOOD.split("[[versions]]", 1)[1]
    text = GOOD + "\n[[versions]]" + second
    path = _write(tmp_path, text)
    with pytest.raises(TomlError) as caught:
        load_tariff(path)
    assert str(caught.value) == (
        f"{path}:{_line_of(text, 'version = 1', 2)}: versions[1].version: version numbers must increase (after 1)"
    )
    text = GOOD + "\n[[versions]]" + second.replace("version = 1", "version = 2")
    path = _write(tmp_path, text)
    with pytest.raises(
        TomlError, match=r"t\.toml:\d+: versions\[1\]\.effective_from: must be after version 1"
    ):
        load_tariff(path)


def test_blocks_and_flat_price_shape_errors(tmp_path: Path) -> None:
    flat = GOOD.split("[versions.cycle]")[0] + 'price = "0.5"\n'
    tariff = load_tariff(_write(tmp_path, flat))
    assert tariff.versions[0].price(1, None) == Decimal("0.5")
    with pytest.raises(TomlError, match="needs a \\[tou\\] table"):
        load_tariff(_write(tmp_path, flat.replace('price = "0.5"', 'prices = { a = "0.5" }')))
    no_cycle = GOOD.replace('[versions.cycle]\nkind = "monthly"\nstart_day = 15\n', "")
    with pytest.raises(TomlError, match=r"inclining blocks need a \[versions\.cycle\]"):
        load_tariff(_write(tmp_path, no_cycle))
    last_bounded = GOOD.replace(
        '\n[[versions.blocks]]\nprices = { peak = "0.9"',
        '\n[[versions.blocks]]\nup_to_kwh = 300\nprices = { peak = "0.9"',
    )
    with pytest.raises(TomlError, match="the last block must have no 'up_to_kwh'"):
        load_tariff(_write(tmp_path, last_bounded))
    fractional = GOOD.replace("up_to_kwh = 200", 'up_to_kwh = "200.0005"')
    with pytest.raises(TomlError, match="whole number of Wh"):
        load_tariff(_write(tmp_path, fractional))
    assert (
        load_tariff(_write(tmp_path, GOOD.replace("up_to_kwh = 200", 'up_to_kwh = "200.5"')))
        .versions[0]
        .blocks[0]
        .up_to_wh
        == 200_500
    )


def test_duplicate_ids_in_a_directory_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, GOOD, "a.toml")
    _write(tmp_path, GOOD, "b.toml")
    with pytest.raises(TomlError, match=r"b\.toml: id: tariff id 't' is already defined in .*a\.toml"):
        load_tariff_dir(tmp_path)


def test_json_tariff_errors_are_one_line_and_name_the_source() -> None:
    data = tariff_to_dict(load_tariff(CONFIG / "flat-cn.toml"))
    data["versions"][0]["price"] = 0.5283
    with pytest.raises(TomlError) as caught:
        tariff_from_dict(data, "mqtt:tariff/flat-cn")
    assert str(caught.value).startswith("mqtt:tariff/flat-cn: versions[0].price: ")
    assert "float is lossy" in str(caught.value)
    data["versions"][0]["price"] = "0.5283"
    data["versions"][0]["colour"] = "red"
    with pytest.raises(TomlError, match="unknown key 'colour'"):
        tariff_from_dict(data, "mqtt")


def _flat() -> Tariff:
    return load_tariff(CONFIG / "flat-cn.toml")


def test_version_at_picks_the_version_in_force_and_refuses_before_the_first() -> None:
    tariff = _flat()
    v2 = replace(tariff.versions[0], version=2, effective_from=datetime(2026, 6, 1, tzinfo=CST))
    tariff = with_version(tariff, v2, now=datetime(2026, 5, 1, tzinfo=CST))
    assert tariff.version_at(datetime(2026, 5, 31, 23, 59, tzinfo=CST)).version == 1
    assert tariff.version_at(datetime(2026, 6, 1, tzinfo=CST)).version == 2
    assert tariff.version_at(datetime(2026, 5, 31, 16, tzinfo=UTC)).version == 2  # same instant in UTC
    with pytest.raises(
        LookupError, match="tariff flat-cn has no version in force at 2025-12-31T23:59:00\\+08:00"
    ):
        tariff.version_at(datetime(2025, 12, 31, 23, 59, tzinfo=CST))
    with pytest.raises(ValueError, match="no time zone"):
        tariff.version_at(datetime(2026, 7, 1))


def test_with_version_refuses_backdating() -> None:
    tariff = _flat()
    v1 = tariff.versions[0]
    now = datetime(2026, 5, 1, tzinfo=CST)
    before_now = replace(v1, version=2, effective_from=datetime(2026, 4, 30, tzinfo=CST))
    with pytest.raises(ValueError, match=r"is before now .*never backdated") as caught:
        with_version(tariff, before_now, now=now)
    assert "\n" not in str(caught.value)
    before_latest = replace(v1, version=2, effective_from=datetime(2025, 12, 1, tzinfo=CST))
    with pytest.raises(ValueError, match="is not after v1's"):
        with_version(tariff, before_latest, now=datetime(2025, 1, 1, tzinfo=CST))
    same_number = replace(v1, effective_from=datetime(2026, 6, 1, tzinfo=CST))
    with pytest.raises(ValueError, match="version 1 is not after the latest version 1"):
        with_version(tariff, same_number, now=now)
    broken = replace(v1, version=2, effective_from=datetime(2026, 6, 1, tzinfo=CST), timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="unknown time zone"):
        with_version(tariff, broken, now=now)
    with pytest.raises(ValueError, match=r"'now' .* has no time zone"):
        with_version(tariff, replace(v1, version=2, effective_from=now), now=datetime(2026, 5, 1))
    assert tariff.versions == (v1,)  # refused changes leave the tariff as it was
    added = with_version(tariff,
        replace(v1, version=2, effective_from=now), now=now
    )  # "now" itself is allowed
    assert [v.version for v in added.versions] == [1, 2]
