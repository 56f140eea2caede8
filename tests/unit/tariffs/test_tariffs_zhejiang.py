"""A year of the Zhejiang residential block + peak/valley tariff against a figure worked by hand.

Tariff numbers: docs/sources/tariffs.md (Zhejiang residential), see
gateway/tariffs/examples/zhejiang-residential.toml.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from gateway.tariffs.model import load_tariff
from gateway.tariffs.pricing import ChargeLine, cycle_start, price_interval

CONFIG = Path(__file__).resolve().parents[3] / "gateway" / "tariffs" / "examples"
CST = timezone(timedelta(hours=8))

# Synthetic load: 1 kWh in every hour 08:00–22:00 (peak, 14 h = 14 kWh), 0.5 kWh in every other hour
# (valley, 10 h = 5 kWh): 19 kWh a day, 365 days of 2026 = 6,935 kWh, annual cycle from 1 January.
#
# Block 1 (first 2,760 kWh): 145 days = 2,755 kWh (to 25 May).  26 May: 00–08 valley 4 kWh -> 2,759,
#   08–09 peak 1 kWh -> exactly 2,760 at 09:00.   peak 145*14 + 1 = 2,031   valley 145*5 + 4 = 729
# Block 2 (next 2,040 kWh, to 4,800): rest of 26 May peak 13, valley 1 -> 2,774; 106 more days
#   (27 May–9 Sep) = 2,014 -> 4,788; 10 Sep 00–08 valley 4 -> 4,792, 08–16 peak 8 -> exactly 4,800 at 16:00.
#   peak 13 + 106*14 + 8 = 1,505   valley 1 + 106*5 + 4 = 535   (2,040)
# Block 3 (the remaining 2,135 kWh): rest of 10 Sep peak 6, valley 1; 112 days (11 Sep–31 Dec) = 2,128.
#   peak 6 + 112*14 = 1,574   valley 1 + 112*5 = 561   (2,135)
# Amounts (CNY):
#   block 1: 2,031 * 0.568 = 1,153.608   729 * 0.288 = 209.952   -> 1,363.560
#   block 2: 1,505 * 0.618 =   930.090   535 * 0.338 = 180.830   -> 1,110.920
#   block 3: 1,574 * 0.868 = 1,366.232   561 * 0.588 = 329.868   -> 1,696.100
#   year:                                                           4,170.580
EXPECTED_TOTAL = Decimal("4170.580")
EXPECTED_WH = {
    (1, "peak"): 2_031_000,
    (1, "valley"): 729_000,
    (2, "peak"): 1_505_000,
    (2, "valley"): 535_000,
    (3, "peak"): 1_574_000,
    (3, "valley"): 561_000,
}


def _year(register_split: bool) -> list[ChargeLine]:
    tariff = load_tariff(CONFIG / "zhejiang-residential.toml")
    lines: list[ChargeLine] = []
    cycle = None
    used = 0
    hour = datetime(2026, 1, 1, tzinfo=CST)
    while hour.year == 2026:
        nxt = hour + timedelta(hours=1)
        peak = 8 <= hour.hour < 22
        energy = 1000 if peak else 500
        # what the ledger does: usage in the cycle containing `start`, summed from its own lines
        here = cycle_start(tariff.version_at(hour), hour)
        if here != cycle:
            cycle, used = here, 0
        registers = ({"T1": energy, "T2": 0} if peak else {"T1": 0, "T2": energy}) if register_split else None
        got = price_interval(
            tariff,
            hour,
            nxt,
            energy,
            day_type=lambda d: "workday",
            cycle_usage_wh=used,
            register_split_wh=registers,
        )
        assert sum(line.energy_wh for line in got) == energy
        used += energy
        lines.extend(got)
        hour = nxt
    return lines


def _check(lines: list[ChargeLine]) -> None:
    by_key: dict[tuple[int | None, str | None], int] = defaultdict(int)
    for line in lines:
        by_key[(line.block, line.period)] += line.energy_wh
    assert dict(by_key) == EXPECTED_WH
    assert sum(line.amount for line in lines) == EXPECTED_TOTAL
    # the thresholds fall exactly on hour boundaries: 26 May 09:00 and 10 Sep 16:00 local
    first_block2 = min(line.start for line in lines if line.block == 2)
    first_block3 = min(line.start for line in lines if line.block == 3)
    assert first_block2 == datetime(2026, 5, 26, 9, tzinfo=CST)
    assert first_block3 == datetime(2026, 9, 10, 16, tzinfo=CST)
    assert date(2026, 1, 1) + timedelta(days=145) == date(2026, 5, 26)


def test_zhejiang_year_of_hourly_readings_matches_hand_computed_total() -> None:
    _check(_year(register_split=False))


def test_zhejiang_year_with_meter_registers_gives_the_same_total() -> None:
    _check(_year(register_split=True))
