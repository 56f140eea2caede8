"""The tariff book's remembered cycle start (``TariffBook.cycle_of``) is the tariff engine's own answer.

The book remembers, per tariff version, the block-cycle start of the local day it last priced, and
serves it to every instant of that day; a day whose UTC offset changes is never remembered.  Walking
instants in the order readings arrive, across cycle starts and both daylight-saving changes of a zone
that has them, every answer must equal ``cycle_start`` worked out afresh, and its text ``iso`` of it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.core.calendar import WorkCalendar
from gateway.core.timeutil import iso
from gateway.ledger.tariff_book import TariffBook
from gateway.tariffs.pricing import cycle_start
from gateway.tariffs.timeline import wall_to_instant
from gateway.tariffs.values import Block, BlockCycle, Tariff, TariffVersion


def _tariff(zone: str, cycle: BlockCycle) -> Tariff:
    price = ((None, Decimal("0.20")),)
    version = TariffVersion(
        version=1,
        effective_from=datetime(2025, 12, 1, tzinfo=UTC),
        timezone=zone,
        blocks=(Block(100_000, price), Block(None, price)),
        cycle=cycle,
    )
    return Tariff("t", "GBP", (version,))


@pytest.mark.parametrize(
    ("zone", "cycle", "first", "last"),
    [
        # both DST changes of 2026 in London, and the monthly cycle starting on the 1st of each month
        ("Europe/London", BlockCycle("monthly", start_day=1), datetime(2026, 3, 27), datetime(2026, 4, 2)),
        ("Europe/London", BlockCycle("monthly", start_day=1), datetime(2026, 10, 23), datetime(2026, 11, 2)),
        # Santiago changes its clocks at midnight: 00:00 becomes 23:00 of the day before (April), and
        # 00:00 is skipped (September); on the 4th of the month a cycle starts at such a midnight
        ("America/Santiago", BlockCycle("monthly", start_day=5), datetime(2026, 4, 2), datetime(2026, 4, 8)),
        ("America/Santiago", BlockCycle("monthly", start_day=6), datetime(2026, 9, 3), datetime(2026, 9, 9)),
        # an annual cycle from 1 January in a zone without DST (the Zhejiang tariff's)
        ("Asia/Shanghai", BlockCycle("annual", start_month=1, start_day=1), datetime(2026, 12, 30), datetime(2027, 1, 2)),
    ],
)
def test_the_remembered_cycle_start_is_cycle_start_at_every_instant(
    zone: str, cycle: BlockCycle, first: datetime, last: datetime
) -> None:
    tariff = _tariff(zone, cycle)
    version = tariff.versions[0]
    book = TariffBook({"t": tariff}, WorkCalendar(zone, "CN"))  # the calendar is not asked
    at = first.replace(tzinfo=UTC)
    seen = set()
    while at < last.replace(tzinfo=UTC):
        expected = cycle_start(version, at)
        assert expected is not None
        assert book.cycle_of(version, at) == (expected, iso(expected)), at
        seen.add(expected)
        at += timedelta(minutes=7)  # not a divisor of an hour: instants all over the day
    assert len(seen) == 2  # the walk crossed a cycle start
    day = first.date()
    while day <= last.date():  # each local midnight itself, and the instant before it
        midnight = wall_to_instant(day, 0, version.zone)
        for instant in (midnight - timedelta(microseconds=1), midnight, midnight + timedelta(microseconds=1)):
            expected = cycle_start(version, instant)
            assert expected is not None
            assert book.cycle_of(version, instant) == (expected, iso(expected)), instant
        day += timedelta(days=1)
