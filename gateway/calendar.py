"""Work calendar: local time, weekends, public holidays and China's adjusted working days.

Protected windows ("no cut on a public holiday", "friendly-credit hours") are defined in local
time, so the policy asks this calendar, never the system clock or the host time zone.  Holidays
come from the ``holidays`` package; the table for a year is built once and cached, so a decision
costs a dictionary lookup.

China moves working days around public holidays (调休).  ``holidays`` lists the day off as
"Day off (substituted from MM/DD/YYYY)" but has no category for the weekend day that becomes a
working day; the date inside that name *is* that working day, so it is parsed out of the names.
Names are requested in ``en_US`` so the pattern does not depend on the package's default language.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

_SUBSTITUTED = re.compile(r"substituted from (\d{2})/(\d{2})/(\d{4})")


class DayType(enum.StrEnum):
    """What kind of day a local date is; compares equal to the plain strings."""

    WORKDAY = "workday"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"


class CalendarError(ValueError):
    """The calendar cannot be built (unknown time zone, country or region); one line."""


@dataclass(frozen=True)
class _Year:
    names: dict[date, str]
    adjusted_workdays: frozenset[date]


class WorkCalendar:
    """One jurisdiction's calendar in one time zone.

    ``country`` is an ISO 3166 code known to ``holidays`` (``CN``, ``GB``, ``US``) or ``None`` for
    a calendar with weekends only; ``subdiv`` selects a region (``ENG``, ``TX``).
    """

    def __init__(self, tz: str, country: str | None, subdiv: str | None = None) -> None:
        try:
            self.tz = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise CalendarError(f"calendar: unknown time zone {tz!r}") from None
        self.tz_name = tz
        self.country = country
        self.subdiv = subdiv
        self._years: dict[int, _Year] = {}
        self._weekend: frozenset[int] = frozenset({5, 6})
        if country is not None:
            # Build one year now so a wrong country or region fails at start-up, not mid-decision.
            probe = self._load(2000)
            self._years[2000] = probe

    def _load(self, year: int) -> _Year:
        if self.country is None:
            return _Year({}, frozenset())
        try:
            table = holidays.country_holidays(self.country, subdiv=self.subdiv, years=year, language="en_US")
        except NotImplementedError as exc:
            raise CalendarError(f"calendar: {exc}") from None
        self._weekend = frozenset(table.weekend)
        names = {d: str(n) for d, n in table.items()}
        adjusted = set()
        for name in names.values():
            for month, day, yr in _SUBSTITUTED.findall(name):
                adjusted.add(date(int(yr), int(month), int(day)))
        return _Year(names, frozenset(adjusted))

    def _year(self, year: int) -> _Year:
        found = self._years.get(year)
        if found is None:
            found = self._years[year] = self._load(year)
        return found

    def local(self, now: datetime) -> datetime:
        """``now`` (an aware instant) as local wall time in this calendar's zone."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"calendar: naive datetime {now.isoformat()} (an aware UTC instant is required)")
        return now.astimezone(self.tz)

    def holiday_name(self, d: date) -> str | None:
        return self._year(d.year).names.get(d)

    def is_public_holiday(self, d: date) -> bool:
        """True on public holidays, including substituted days off."""
        return d in self._year(d.year).names

    def is_adjusted_workday(self, d: date) -> bool:
        """True on a weekend day that the official calendar makes a working day (CN 调休)."""
        # A substituted day off late in December can name a working day in the next year and
        # vice versa, so both neighbouring years are consulted.
        return any(d in self._year(y).adjusted_workdays for y in (d.year - 1, d.year, d.year + 1))

    def day_type(self, d: date) -> DayType:
        if self.is_public_holiday(d):
            return DayType.HOLIDAY
        if d.weekday() in self._weekend_days(d) and not self.is_adjusted_workday(d):
            return DayType.WEEKEND
        return DayType.WORKDAY

    def _weekend_days(self, d: date) -> frozenset[int]:
        self._year(d.year)  # the weekend definition comes with the country's table
        return self._weekend
