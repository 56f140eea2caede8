"""Pricing of single intervals: periods, DST, version changes, registers, cycles and standing charges."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.tariffs.build import with_version
from gateway.tariffs.model import Tariff, load_tariff, tariff_from_dict
from gateway.tariffs.pricing import ChargeLine, cycle_start, price_interval, standing_charge

CONFIG = Path(__file__).resolve().parents[3] / "gateway" / "tariffs" / "examples"
CST = timezone(timedelta(hours=8))


def workday(_: date) -> str:
    return "workday"


def weekday_calendar(day: date) -> str:
    return "weekend" if day.weekday() >= 5 else "workday"


def _summary(lines: list[ChargeLine]) -> list[tuple[str | None, int | None, int, Decimal]]:
    return [(line.period, line.block, line.energy_wh, line.amount) for line in lines]


def _uk_tou() -> Tariff:
    """A UK three-rate tariff whose edges sit inside both DST changes (01:30 is skipped in March, doubled in October)."""

    def window(start: str, end: str, period: str) -> dict[str, Any]:
        return {"days": ["workday", "weekend", "holiday"], "start": start, "end": end, "period": period}

    return tariff_from_dict(
        {
            "id": "uk-tou",
            "currency": "GBP",
            "versions": [
                {
                    "version": 1,
                    "effective_from": "2026-01-01T00:00:00+00:00",
                    "timezone": "Europe/London",
                    "prices": {"late": "0.20", "night": "0.10", "day": "0.30"},
                    "tou": {
                        "windows": [
                            window("00:00", "01:30", "late"),
                            window("01:30", "07:00", "night"),
                            window("07:00", "24:00", "day"),
                        ]
                    },
                }
            ],
        },
        "test",
    )


def test_flat_tariff_prices_energy_exactly() -> None:
    flat = load_tariff(CONFIG / "flat-cn.toml")
    lines = price_interval(
        flat,
        datetime(2026, 3, 1, 10, tzinfo=CST),
        datetime(2026, 3, 1, 10, 15, tzinfo=CST),
        1237,
        day_type=workday,
    )
    # 1237 Wh x 0.5283 CNY/kWh = 0.6535071 CNY exactly (no rounding here; the ledger rounds totals)
    assert _summary(lines) == [(None, None, 1237, Decimal("0.6535071"))]
    assert lines[0].start == datetime(2026, 3, 1, 2, tzinfo=UTC) and lines[0].start.tzinfo is UTC
    assert price_interval(flat, lines[0].start, lines[0].end, 0, day_type=workday) == []


def test_tou_splits_an_interval_across_a_period_boundary_by_time() -> None:
    tou = load_tariff(CONFIG / "tou-cn.toml")
    # Monday 2026-03-02 10:30–11:30 local: 30 min peak (0.70) then 30 min flat (0.50); 1001 Wh -> 501 / 500
    lines = price_interval(
        tou,
        datetime(2026, 3, 2, 10, 30, tzinfo=CST),
        datetime(2026, 3, 2, 11, 30, tzinfo=CST),
        1001,
        day_type=weekday_calendar,
    )
    assert _summary(lines) == [("peak", None, 501, Decimal("0.3507")), ("flat", None, 500, Decimal("0.25"))]
    assert lines[0].end == lines[1].start == datetime(2026, 3, 2, 3, tzinfo=UTC)
    # the same hours on Saturday 2026-03-07 are all flat
    saturday = price_interval(
        tou,
        datetime(2026, 3, 7, 10, 30, tzinfo=CST),
        datetime(2026, 3, 7, 11, 30, tzinfo=CST),
        1001,
        day_type=weekday_calendar,
    )
    assert _summary(saturday) == [("flat", None, 1001, Decimal("0.5005"))]


def test_tou_valley_wraps_midnight_and_day_type_is_per_local_date() -> None:
    tou = load_tariff(CONFIG / "tou-cn.toml")
    # Friday 22:00 to Saturday 08:00 local: Friday peak 22–23, valley 23–07 (across midnight), Saturday flat 07–08
    lines = price_interval(
        tou,
        datetime(2026, 3, 6, 22, tzinfo=CST),
        datetime(2026, 3, 7, 8, tzinfo=CST),
        10_000,
        day_type=weekday_calendar,
    )
    assert _summary(lines) == [
        ("peak", None, 1000, Decimal("0.7")),
        ("valley", None, 8000, Decimal("2.4")),
        ("flat", None, 1000, Decimal("0.5")),
    ]


def test_uk_tou_follows_local_wall_time_over_the_march_change() -> None:
    tariff = _uk_tou()
    # 2026-03-29: clocks go 01:00 GMT -> 02:00 BST at 01:00 UTC, so wall 01:30 never happens.
    # "late" 00:00–01:30 wall lasts 00:00–01:00 UTC; "night" runs from the jump (02:00 BST) to 07:00 BST
    # = 06:00 UTC; "day" from 06:00 UTC.  7 h, 7000 Wh -> 1000 / 5000 / 1000.
    lines = price_interval(
        tariff,
        datetime(2026, 3, 29, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 7, tzinfo=UTC),
        7000,
        day_type=workday,
    )
    assert _summary(lines) == [
        ("late", None, 1000, Decimal("0.2")),
        ("night", None, 5000, Decimal("0.5")),
        ("day", None, 1000, Decimal("0.3")),
    ]
    assert [line.start.hour for line in lines] == [0, 1, 6]
    # the day before (GMT all day) "day" starts at 07:00 UTC
    before = price_interval(
        tariff,
        datetime(2026, 3, 28, 6, tzinfo=UTC),
        datetime(2026, 3, 28, 8, tzinfo=UTC),
        2000,
        day_type=workday,
    )
    assert _summary(before) == [("night", None, 1000, Decimal("0.1")), ("day", None, 1000, Decimal("0.3"))]


def test_uk_tou_follows_local_wall_time_over_the_october_change() -> None:
    tariff = _uk_tou()
    # 2026-10-25: clocks go 02:00 BST -> 01:00 GMT at 01:00 UTC, so wall 01:00–02:00 happens twice.
    # From 23:00 UTC on the 24th (00:00 BST): late to wall 01:30 BST = 00:30 UTC (1.5 h); night to the
    # change at 01:00 UTC (0.5 h); the clock then reads 01:00 again, so late until 01:30 GMT (0.5 h);
    # night until 07:00 GMT = 07:00 UTC (5.5 h); day until 08:00 UTC (1 h).  9 h, 9000 Wh.
    lines = price_interval(
        tariff,
        datetime(2026, 10, 24, 23, tzinfo=UTC),
        datetime(2026, 10, 25, 8, tzinfo=UTC),
        9000,
        day_type=workday,
    )
    assert _summary(lines) == [
        ("late", None, 1500, Decimal("0.3")),
        ("night", None, 500, Decimal("0.05")),
        ("late", None, 500, Decimal("0.1")),
        ("night", None, 5500, Decimal("0.55")),
        ("day", None, 1000, Decimal("0.3")),
    ]
    assert [line.start.strftime("%H:%M") for line in lines] == ["23:00", "00:30", "01:00", "01:30", "07:00"]


def test_a_tariff_change_mid_interval_splits_at_the_instant() -> None:
    flat = load_tariff(CONFIG / "flat-cn.toml")
    change = datetime(2026, 6, 1, tzinfo=CST)
    v2 = replace(
        flat.versions[0],
        version=2,
        effective_from=change,
        blocks=(replace(flat.versions[0].blocks[0], prices=((None, Decimal("0.6000")),)),),
    )
    tariff = with_version(flat, v2, now=datetime(2026, 5, 1, tzinfo=CST))
    # 23:00–00:40 local across the change: 60 min at v1, 40 min at v2; 1000 Wh -> 600 / 400
    lines = price_interval(
        tariff,
        datetime(2026, 5, 31, 23, tzinfo=CST),
        datetime(2026, 6, 1, 0, 40, tzinfo=CST),
        1000,
        day_type=workday,
    )
    assert [(line.version, line.energy_wh, line.amount) for line in lines] == [
        (1, 600, Decimal("0.31698")),
        (2, 400, Decimal("0.24")),
    ]
    assert lines[0].end == lines[1].start == change


def test_blocks_restart_when_the_interval_crosses_into_a_new_cycle() -> None:
    zj = load_tariff(CONFIG / "zhejiang-residential.toml")
    # 31 Dec 2026 23:00 to 1 Jan 2027 01:00 local, all valley; 5,000 kWh used this year -> block 3 before
    # midnight, block 1 after it (cycle restarts on 1 January).
    lines = price_interval(
        zj,
        datetime(2026, 12, 31, 23, tzinfo=CST),
        datetime(2027, 1, 1, 1, tzinfo=CST),
        2000,
        day_type=workday,
        cycle_usage_wh=5_000_000,
    )
    assert _summary(lines) == [("valley", 3, 1000, Decimal("0.588")), ("valley", 1, 1000, Decimal("0.288"))]
    assert cycle_start(zj.versions[0], lines[1].start) == datetime(2026, 12, 31, 16, tzinfo=UTC)


def test_cycle_start_annual_and_monthly() -> None:
    zj = load_tariff(CONFIG / "zhejiang-residential.toml")
    v = zj.versions[0]
    assert cycle_start(v, datetime(2026, 7, 9, 12, tzinfo=CST)) == datetime(2026, 1, 1, tzinfo=CST)
    assert cycle_start(v, datetime(2026, 12, 31, 16, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=CST)
    assert cycle_start(v, datetime(2026, 12, 31, 15, 59, tzinfo=UTC)) == datetime(2026, 1, 1, tzinfo=CST)
    monthly = replace(v, cycle=replace(v.cycle, kind="monthly", start_day=15)) if v.cycle else v
    assert cycle_start(monthly, datetime(2026, 3, 15, tzinfo=CST)) == datetime(2026, 3, 15, tzinfo=CST)
    assert cycle_start(monthly, datetime(2026, 3, 14, 23, 59, tzinfo=CST)) == datetime(
        2026, 2, 15, tzinfo=CST
    )
    assert cycle_start(monthly, datetime(2026, 1, 3, tzinfo=CST)) == datetime(2025, 12, 15, tzinfo=CST)
    assert (
        cycle_start(load_tariff(CONFIG / "flat-cn.toml").versions[0], datetime(2026, 3, 1, tzinfo=CST))
        is None
    )


def test_meter_registers_decide_the_period_split() -> None:
    tou = load_tariff(CONFIG / "tou-cn.toml")
    start, end = (
        datetime(2026, 3, 2, 10, tzinfo=CST),
        datetime(2026, 3, 2, 12, tzinfo=CST),
    )  # peak 10–11, flat 11–12
    # The meter counted 1500 Wh on T1 (peak) and 490 Wh on T2 (flat) but 2000 Wh in total (registers are
    # rounded separately).  Scaled by share: quotas 1507.54 / 492.46 -> 1508 / 492.
    lines = price_interval(tou, start, end, 2000, day_type=workday, register_split_wh={"T1": 1500, "T2": 490})
    assert _summary(lines) == [("peak", None, 1508, Decimal("1.0556")), ("flat", None, 492, Decimal("0.246"))]
    # time alone would have split 1000 / 1000
    assert [line.energy_wh for line in price_interval(tou, start, end, 2000, day_type=workday)] == [
        1000,
        1000,
    ]
    # a period our clock never saw in the interval (meter clock differs): the meter is believed and the
    # line spans the whole interval
    odd = price_interval(tou, start, end, 2000, day_type=workday, register_split_wh={"T1": 1800, "T3": 200})
    assert _summary(odd) == [("valley", None, 200, Decimal("0.06")), ("peak", None, 1800, Decimal("1.26"))]
    assert (odd[0].start, odd[0].end) == (start.astimezone(UTC), end.astimezone(UTC))
    # all registers zero: fall back to time
    zero = price_interval(tou, start, end, 2000, day_type=workday, register_split_wh={"T1": 0, "T2": 0})
    assert [line.energy_wh for line in zero] == [1000, 1000]


def test_register_errors_are_refused() -> None:
    tou = load_tariff(CONFIG / "tou-cn.toml")
    start, end = datetime(2026, 3, 2, 10, tzinfo=CST), datetime(2026, 3, 2, 12, tzinfo=CST)
    with pytest.raises(
        ValueError, match="register T4 measured 5 Wh but tariff tou-cn v1 maps only T1, T2, T3"
    ):
        price_interval(tou, start, end, 100, day_type=workday, register_split_wh={"T1": 95, "T4": 5})
    with pytest.raises(ValueError, match="unknown register"):
        price_interval(tou, start, end, 100, day_type=workday, register_split_wh={"X9": 100})
    with pytest.raises(ValueError, match="must not be negative"):
        price_interval(tou, start, end, 100, day_type=workday, register_split_wh={"T1": -1})


def test_bad_arguments_are_refused_with_one_line() -> None:
    flat = load_tariff(CONFIG / "flat-cn.toml")
    t0 = datetime(2026, 3, 1, 10, tzinfo=CST)
    with pytest.raises(ValueError, match="is not after start"):
        price_interval(flat, t0, t0, 5, day_type=workday)
    with pytest.raises(ValueError, match="start must be an aware datetime"):
        price_interval(flat, datetime(2026, 3, 1), t0, 5, day_type=workday)
    with pytest.raises(ValueError, match="energy_wh must be an integer"):
        price_interval(flat, t0, t0 + timedelta(hours=1), 5.0, day_type=workday)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="energy_wh must not be negative"):
        price_interval(flat, t0, t0 + timedelta(hours=1), -5, day_type=workday)
    with pytest.raises(LookupError, match="no version in force"):
        price_interval(
            flat, t0.replace(year=2025), t0.replace(year=2025) + timedelta(hours=1), 5, day_type=workday
        )
    tou = load_tariff(CONFIG / "tou-cn.toml")
    with pytest.raises(ValueError, match="unknown day type 'Weekday'"):
        price_interval(tou, t0, t0 + timedelta(hours=1), 5, day_type=lambda d: "Weekday")


def test_standing_charge_per_local_day_including_dst_days() -> None:
    uk = load_tariff(CONFIG / "uk-standard.toml")
    march = standing_charge(uk, date(2026, 3, 29))
    assert march is not None
    assert (march.kind, march.amount, march.energy_wh) == ("standing", Decimal("0.5300"), 0)
    assert march.end - march.start == timedelta(hours=23)
    october = standing_charge(uk, date(2026, 10, 25))
    assert october is not None and october.end - october.start == timedelta(hours=25)
    assert standing_charge(load_tariff(CONFIG / "flat-cn.toml"), date(2026, 3, 1)) is None
    with pytest.raises(LookupError, match="no version in force at the start of 2025-12-31"):
        standing_charge(uk, date(2025, 12, 31))
    # a new version from 12:00 on a day applies from the next day
    v2 = replace(
        uk.versions[0],
        version=2,
        effective_from=datetime(2026, 4, 1, 12, tzinfo=UTC),
        standing_charge_per_day=Decimal("0.6000"),
    )
    uk2 = with_version(uk, v2, now=datetime(2026, 3, 1, tzinfo=UTC))
    first = standing_charge(uk2, date(2026, 4, 1))
    second = standing_charge(uk2, date(2026, 4, 2))
    assert first is not None and second is not None
    assert (first.version, first.amount, second.version, second.amount) == (
        1,
        Decimal("0.53"),
        2,
        Decimal("0.6"),
    )
