"""Work calendar: local time, weekends, public holidays and China's adjusted working days.

Protected windows ("no cut on a public holiday", "friendly-credit hours") are defined in local
time, so the policy asks this calendar, never the system clock or the host time zone.  Holidays
come from the ``holidays`` package; the table for a year is built once and cached, so a decision
costs a dictionary lookup.

China moves working days around public holidays (调休).  ``holidays`` lists the day off as
"Day off (substituted from MM/DD/YYYY)" but has no category for the weekend day that becomes a
working day; the date inside that name *is* that working day, so it is parsed out of the names.
Names are requested in ``en_US`` so the pattern does not depend on the package's default language.

Freshness (docs/enforcement.md, "Calendar freshness"): China's arrangement for a year is the State
Council's annual notice (国务院办公厅关于…年部分节假日安排的通知), published late in the year before;
``holidays`` lags it.  A year without that arrangement is *not official*: its days are "unknown", and
the policy protects them like holidays.  A year becomes official once ``holidays`` knows its
substituted days or an ``OfficialYear`` (a head-office ``calendar`` command or the local calendar
file) covers it.  Rule-based calendars (GB, US) know every year.
"""

from __future__ import annotations

import enum
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from gateway.core.errors import UserError

_SUBSTITUTED = re.compile(r"substituted from (\d{2})/(\d{2})/(\d{4})")

# Countries whose days off and working days are announced year by year rather than following a rule.
ANNOUNCED_YEARLY = frozenset({"CN", "CHN"})


def _one_country_at_a_time() -> None:
    """Let ``holidays`` import a country's module without importing every other country's.

    ``holidays`` loads a country lazily (``holidays.registry``) by importing its module
    ``holidays.countries.<name>``, and Python first runs the package's ``__init__``, which imports
    all of the ~250 countries: 8 MB of a running gateway's memory (279 modules, measured with
    holidays 0.109) for the one table it reads.  The package is therefore registered bare — its
    module object with its search path and nothing run — so that importing one country's module
    runs that module alone (and what it imports itself, another country included).  Done only
    while nothing has imported the package yet; if ``holidays`` ever stops being laid out this way,
    the normal import happens instead.
    """
    name = f"{holidays.__name__}.countries"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        return  # pragma: no cover - depends on the installed package's layout
    package = importlib.util.module_from_spec(spec)  # created, not executed
    package.__getattr__ = _country_class  # type: ignore[method-assign]  # PEP 562: names on demand
    sys.modules[name] = package
    holidays.countries = package  # what the import system would set


def _country_class(name: str) -> object:
    """``holidays.countries.<Class or code>`` of the bare package, from that country's module alone
    (what the package's ``__init__`` would have imported, for any other user in the process)."""
    from holidays.registry import COUNTRIES

    for module_name, names in COUNTRIES.items():
        if name in names:
            module = importlib.import_module(f"{holidays.__name__}.countries.{module_name}")
            return getattr(module, name)
    raise AttributeError(f"module 'holidays.countries' has no attribute '{name}'")


def _announced_years(country: str) -> frozenset[int]:
    """Years for which ``holidays`` carries the announced arrangement (CN: the 调休 swaps).

    ``holidays`` keeps each year's substituted days in ``ChinaStaticHolidays.special_public_holidays``
    (a dict keyed by year); every year since 2001 has swaps, so a year missing there is one whose
    notice the package has not encoded yet.  If a later ``holidays`` moves that table, no year is
    known and every day is protected (the ``calendar_stale`` event says so): failing safe.
    """
    if country.upper() not in ANNOUNCED_YEARLY:
        return frozenset()
    try:
        from holidays.countries.china import ChinaStaticHolidays
    except ImportError:  # pragma: no cover - depends on the installed package's layout
        return frozenset()
    table = getattr(ChinaStaticHolidays, "special_public_holidays", {})
    return frozenset(y for y in table if isinstance(y, int)) if isinstance(table, Mapping) else frozenset()


def holidays_source() -> str:
    """How the built-in source names itself in events and ``pmg explain``."""
    return f"holidays {holidays.__version__}"


@dataclass(frozen=True)
class OfficialYear:
    """One year's official arrangement from a source other than ``holidays``.

    ``days_off``: public holidays and substituted days off; ``workdays``: weekend days made working
    days.  Validated by ``gateway.policy.calendar_sources`` before it gets here (in the named year, disjoint).
    """

    country: str
    year: int
    days_off: frozenset[date]
    workdays: frozenset[date]
    source: str  # the notice it transcribes
    origin: str  # where the gateway got it: "command <id>" or "file <path>"


class DayType(enum.StrEnum):
    """What kind of day a local date is; compares equal to the plain strings."""

    WORKDAY = "workday"
    WEEKEND = "weekend"
    HOLIDAY = "holiday"


_DAY_TYPES_KEPT = 1024  # dates whose day type is remembered (pricing asks about today, mostly)


class CalendarError(UserError, ValueError):
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
        self._official: dict[int, OfficialYear] = {}
        if country is not None:
            _one_country_at_a_time()
        # Each date's day type, as last worked out.  The answer depends only on the official years and
        # the loaded ones (and the weekend their tables set), so it is forgotten whenever either
        # changes; pricing asks for the same day on every reading.
        self._day_types: dict[date, DayType] = {}
        self._announced = _announced_years(country) if country is not None else frozenset()
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
            self._day_types.clear()  # a new year's table may change the weekend
        return found

    def local(self, now: datetime) -> datetime:
        """``now`` (an aware instant) as local wall time in this calendar's zone."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"calendar: naive datetime {now.isoformat()} (an aware UTC instant is required)")
        return now.astimezone(self.tz)

    # -- freshness -------------------------------------------------------------------------------
    def add_official(self, year: OfficialYear) -> None:
        """Use ``year``'s arrangement from now on (a later one for the same year replaces it)."""
        if self.country is None or year.country.upper() != self.country.upper():
            raise CalendarError(f"calendar: {year.country} arrangement given to a {self.country} calendar")
        self._official[year.year] = year
        self._day_types.clear()

    def is_official(self, year: int) -> bool:
        """Whether some source has the official arrangement of ``year`` for this country."""
        if self.country is None or self.country.upper() not in ANNOUNCED_YEARLY:
            return True  # weekends only, or a rule-based calendar: every year is known
        return year in self._official or year in self._announced

    def is_unknown(self, d: date) -> bool:
        """True when whether ``d`` is a day off cannot be known yet (its year is not official)."""
        return not self.is_official(d.year)

    def stale_years(self, today: date) -> tuple[int, ...]:
        """The current and next year, where they lack official data (for ``calendar_stale``)."""
        return tuple(y for y in (today.year, today.year + 1) if not self.is_official(y))

    def source_of(self, year: int) -> str:
        """Which source the calendar of ``year`` comes from."""
        found = self._official.get(year)
        return f"{found.origin} ({found.source})" if found is not None else holidays_source()

    # -- day types -------------------------------------------------------------------------------
    def holiday_name(self, d: date) -> str | None:
        if not self.is_public_holiday(d):
            return None
        name = self._year(d.year).names.get(d)
        if name is not None:
            return name
        found = self._official[d.year]
        return f"Day off ({found.source})"

    def is_public_holiday(self, d: date) -> bool:
        """True on public holidays, including substituted days off."""
        found = self._official.get(d.year)
        if found is not None:
            # The official list wins; a holiday ``holidays`` knows and the list forgot stays off
            # (fail safe) unless the list makes it a working day.
            return d in found.days_off or (d in self._year(d.year).names and d not in found.workdays)
        return d in self._year(d.year).names

    def is_adjusted_workday(self, d: date) -> bool:
        """True on a weekend day that the official calendar makes a working day (CN 调休)."""
        found = self._official.get(d.year)
        if found is not None:
            return d in found.workdays
        # A substituted day off late in December can name a working day in the next year and
        # vice versa, so both neighbouring years are consulted.
        return any(d in self._year(y).adjusted_workdays for y in (d.year - 1, d.year, d.year + 1))

    def day_type(self, d: date) -> DayType:
        found = self._day_types.get(d)
        if found is None:
            found = self._day_type(d)
            if len(self._day_types) >= _DAY_TYPES_KEPT:
                self._day_types.clear()
            self._day_types[d] = found
        return found

    def _day_type(self, d: date) -> DayType:
        if self.is_public_holiday(d):
            return DayType.HOLIDAY
        if d.weekday() in self._weekend_days(d) and not self.is_adjusted_workday(d):
            return DayType.WEEKEND
        return DayType.WORKDAY

    def _weekend_days(self, d: date) -> frozenset[int]:
        self._year(d.year)  # the weekend definition comes with the country's table
        return self._weekend

    def is_weekend_day(self, d: date) -> bool:
        """Whether ``d`` falls on the country's weekend (before any official swap)."""
        return d.weekday() in self._weekend_days(d)
