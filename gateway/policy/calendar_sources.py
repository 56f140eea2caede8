"""Official calendar years from outside ``holidays``: the head office's command and a local file.

``holidays`` lags the State Council's annual notice (国务院办公厅关于…年部分节假日安排的通知), so a
deployment can give the arrangement itself, by a signed ``calendar`` command (kept in the
``calendar_years`` table) or by a TOML file named in ``[policy] calendar_file``.  Both go through
``official_year``: a list with a date outside its year, a day both off and working, a working day
that is not a weekend day or a foreign country is refused whole with one line, and nothing changes.
When both cover a year the head office's command wins (it is the newer, signed word).

``report_stale`` raises the ``calendar_stale`` warning for the current or next year while no source
covers it, once per year and gateway start (docs/enforcement.md, "Calendar freshness").
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from drivers.tomlsource import TomlError, locate, read_toml, validation_to_toml_error
from gateway.core.calendar import OfficialYear, WorkCalendar, holidays_source
from gateway.core.errors import UserError
from gateway.core.timeutil import iso
from gateway.store import events

# Years a source may name: the span ``holidays`` and the tariffs deal in (a typo such as 20277 or
# 207 is refused rather than stored).
MIN_YEAR, MAX_YEAR = 2000, 2099

NOTICE = "国务院办公厅关于{year}年部分节假日安排的通知"


class CalendarSourceError(UserError, ValueError):
    """A source's year is refused; ``str()`` is one line saying why, ``field`` the key at fault."""

    def __init__(self, reason: str, field: str = "year") -> None:
        super().__init__(reason)
        self.field = field


def official_year(
    cal: WorkCalendar,
    *,
    country: str,
    year: int,
    days_off: Iterable[date],
    workdays: Iterable[date],
    source: str,
    origin: str,
) -> OfficialYear:
    """Check one year's arrangement against ``cal`` (the configured country) and build it."""
    if cal.country is None:
        raise CalendarSourceError("this gateway has no country calendar ([policy] country)", "country")
    if country.upper() != cal.country.upper():
        raise CalendarSourceError(f"country {country!r} is not this gateway's calendar ({cal.country})", "country")
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise CalendarSourceError(f"year {year} is out of range ({MIN_YEAR}-{MAX_YEAR})")
    off, work = frozenset(days_off), frozenset(workdays)
    if not off:
        raise CalendarSourceError(f"{year}: days_off is empty (a year has public holidays)", "days_off")
    for what, days in (("days_off", off), ("workdays", work)):
        outside = sorted(d for d in days if d.year != year)
        if outside:
            raise CalendarSourceError(f"{what}: {outside[0]} is not in {year}", what)
    both = sorted(off & work)
    if both:
        raise CalendarSourceError(f"{both[0]} is listed both as a day off and as a working day", "workdays")
    weekday = sorted(d for d in work if not cal.is_weekend_day(d))
    if weekday:
        raise CalendarSourceError(
            f"workdays: {weekday[0]} is not a weekend day (only weekend days are swapped)", "workdays"
        )
    return OfficialYear(cal.country, year, off, work, source, origin)


# -- the local file ---------------------------------------------------------------------------
class _FileYear(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)

    year: int
    source: str = Field(min_length=1, max_length=300)
    days_off: list[date]
    workdays: list[date] = Field(default_factory=list)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    country: str = Field(pattern=r"^[A-Za-z]{2,3}$")
    years: list[_FileYear] = Field(min_length=1)


def load_file(cal: WorkCalendar, file: str | Path) -> list[OfficialYear]:
    """The years a calendar file gives, all checked; raises a one-line ``TomlError`` with the line.

    Format (dates are TOML dates)::

        country = "CN"
        [[years]]
        year = 2027
        source = "国务院办公厅关于2027年部分节假日安排的通知"
        days_off = [2027-01-01, 2027-02-05]
        workdays = [2027-02-20]
    """
    path = Path(file)
    data, text = read_toml(path)
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise validation_to_toml_error(path, text, exc) from None
    out: list[OfficialYear] = []
    seen: dict[int, int] = {}
    for i, y in enumerate(parsed.years):
        where: tuple[str | int, ...] = ("years", i)
        if y.year in seen:
            raise TomlError(path, locate(text, (*where, "year")), f"years[{i}].year",
                            f"{y.year} is given twice (first at years[{seen[y.year]}])")
        seen[y.year] = i
        try:
            out.append(official_year(cal, country=parsed.country, year=y.year, days_off=y.days_off,
                                     workdays=y.workdays, source=y.source, origin=f"file {path.name}"))
        except CalendarSourceError as exc:
            at = ("country",) if exc.field == "country" else (*where, exc.field)
            label = "country" if exc.field == "country" else f"years[{i}].{exc.field}"
            raise TomlError(path, locate(text, at), label, str(exc)) from None
    return out


# -- the database (head-office commands) --------------------------------------------------------
def store_year(conn: sqlite3.Connection, y: OfficialYear, command_id: str, actor: str, now: datetime) -> bool:
    """Keep ``y`` (replacing an earlier arrangement of the same year); True if one was replaced."""
    replaced = conn.execute(
        "SELECT 1 FROM calendar_years WHERE country = ? AND year = ?", (y.country, y.year)
    ).fetchone() is not None
    conn.execute(
        "INSERT OR REPLACE INTO calendar_years(country, year, days_off_json, workdays_json, source, "
        "command_id, actor, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (y.country, y.year, json.dumps(sorted(d.isoformat() for d in y.days_off)),
         json.dumps(sorted(d.isoformat() for d in y.workdays)), y.source, command_id, actor, iso(now)),
    )
    return replaced


def stored_years(conn: sqlite3.Connection, cal: WorkCalendar) -> list[OfficialYear]:
    """The head office's years for ``cal``'s country, as they were accepted."""
    if cal.country is None:
        return []
    rows = conn.execute(
        "SELECT year, days_off_json, workdays_json, source, command_id FROM calendar_years "
        "WHERE country = ? ORDER BY year", (cal.country.upper(),)
    ).fetchall()
    return [
        OfficialYear(cal.country, int(r[0]), frozenset(date.fromisoformat(d) for d in json.loads(r[1])),
                     frozenset(date.fromisoformat(d) for d in json.loads(r[2])), str(r[3]), f"command {r[4]}")
        for r in rows
    ]


def install(cal: WorkCalendar, conn: sqlite3.Connection | None, file: Path | None) -> None:
    """Give ``cal`` the file's years, then the head office's (which win where both cover a year)."""
    if file is not None:
        for y in load_file(cal, file):
            cal.add_official(y)
    if conn is not None:
        for y in stored_years(conn, cal):
            cal.add_official(y)


# -- staleness --------------------------------------------------------------------------------
def report_stale(conn: sqlite3.Connection, cal: WorkCalendar, now: datetime, reported: set[int]) -> list[int]:
    """Record ``calendar_stale`` for each stale current/next year not yet in ``reported``."""
    new = [y for y in cal.stale_years(cal.local(now).date()) if y not in reported]
    for year in new:
        events.record(
            conn, "calendar_stale", now, severity="warning",
            detail={
                "year": year,
                "country": cal.country,
                "source": holidays_source(),
                "reason": f"{holidays_source()} has no official {cal.country} arrangement for {year}: "
                          "its days are protected like holidays (no automatic cut) until a calendar "
                          "command or [policy] calendar_file gives it",
                "expected": NOTICE.format(year=year),
            },
        )
        reported.add(year)
    return new
