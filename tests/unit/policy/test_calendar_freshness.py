"""Holiday data that runs out fails safe (docs/enforcement.md, "Calendar freshness").

The made-up 2027 arrangement is in ``support/calendar_2027.py``. The ``holidays`` package (0.109) has China's arrangement up to 2026; the State Council's notice for
2027 (国务院办公厅关于2027年部分节假日安排的通知) is not in it.  ``ARRANGEMENT_2027`` below is a
made-up arrangement in the shape of the 2026 notice (Spring Festival 5-12 February with Saturday
20 February worked, National Day 1-7 October with Saturday 9 October worked), used only to show that
whatever the notice says is what the gateway obeys: Thursday 11 February is off only by it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.calendar_2027 import (
    CN,
    DAYS_OFF_2027,
    GOOD_FILE,
    NOTICE_2027,
    NOTICE_DAY_OFF,
    ORDINARY_MONDAY,
    SWAPPED_SATURDAY,
    WORKDAYS_2027,
    arrangement,
    at_10_local,
    cn,
    cuts,
    exhausted_decision,
    failing_rules,
)

from drivers.base import RelayState
from gateway.core.calendar import DayType, WorkCalendar
from gateway.policy.calendar_sources import (
    CalendarSourceError,
    TomlError,
    install,
    load_file,
    report_stale,
)
from gateway.policy.decide import AccountView, Hold, MeterView, decide
from gateway.policy.explain import explain
from gateway.policy.state import ActionKind as K
from gateway.policy.state import EnforcementState as S
from gateway.store.db import open_store


# -- what ``holidays`` knows -------------------------------------------------------------------------
def test_official_years_from_holidays() -> None:
    cal = cn()
    assert cal.is_official(2026) and not cal.is_official(2027)
    assert cal.stale_years(date(2026, 12, 2)) == (2027,)
    assert cal.stale_years(date(2026, 6, 1)) == (2027,)
    assert cal.stale_years(date(2025, 6, 1)) == ()
    eng = WorkCalendar("Europe/London", "GB", "ENG")
    assert eng.is_official(2031) and not eng.is_unknown(date(2031, 5, 1))  # rule-based: always known
    assert WorkCalendar("UTC", None).is_official(2040)


# -- the policy: unknown days are protected ------------------------------------------------------
def test_no_cut_on_a_day_whose_status_is_unknown() -> None:
    dec = exhausted_decision(cn(), ORDINARY_MONDAY)
    assert not cuts(dec)
    assert "windows.calendar_unknown" in failing_rules(dec)
    assert [a.kind for a in dec.blocked] == [K.DISCONNECT]
    assert dec.blocked[0].not_before is None  # new data, not time, lifts it
    text = explain(dec, replace_account(), MeterView("M1", RelayState.CLOSED, True, False, False, False),
                   at_10_local(ORDINARY_MONDAY), cn(), CN)
    assert "windows.calendar_unknown" in text and "status unknown: no official calendar for 2027" in text


def replace_account() -> AccountView:
    served = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    return AccountView("A1", -100, 0, False, None, False, None, S.NOTICE_SERVED, served, notice_served_at=served)


def test_a_cut_held_into_the_unknown_year_has_no_end_set() -> None:
    # Thursday 31 December 2026 is an ordinary working day of a known year: the cut happens.
    assert cuts(exhausted_decision(cn(), date(2026, 12, 31)))
    # A weather hold until 1 January: what follows is 2027, so the cut has no instant to wait for.
    start = at_10_local(date(2026, 12, 31))
    hold = Hold("weather", "storm", "hq:k1", start - timedelta(hours=1), datetime(2027, 1, 1, 4, 0, tzinfo=UTC))
    served = start - timedelta(days=4)
    acc = AccountView("A1", -100, 0, False, None, False, None, S.NOTICE_SERVED, served, notice_served_at=served,
                      notice_delivered_at=served)
    dec = decide(acc, MeterView("M1", RelayState.CLOSED, True, False, False, False), start, cn(), CN, holds=[hold])
    assert not cuts(dec)
    assert failing_rules(dec)[-2:] == ["hold.weather", "windows.calendar_unknown"]
    assert dec.earliest_cut_at is None


def test_reconnection_ignores_unknown_days() -> None:
    cal = cn()
    at = at_10_local(ORDINARY_MONDAY)
    acc = AccountView("A1", 5000, 0, False, None, False, None, S.DISCONNECTED, at - timedelta(days=3))
    meter = MeterView("M1", RelayState.OPEN, True, False, False, False)
    dec = decide(acc, meter, at, cal, CN)
    assert [a.kind for a in dec.actions] == [K.RECONNECT]


def test_official_year_allows_cuts_on_working_days_only() -> None:
    cal = cn()
    cal.add_official(arrangement(cal))
    assert cal.is_official(2027) and cal.stale_years(date(2026, 12, 2)) == ()
    assert cal.day_type(SWAPPED_SATURDAY) is DayType.WORKDAY
    assert cal.day_type(NOTICE_DAY_OFF) is DayType.HOLIDAY
    assert cal.day_type(date(2027, 10, 2)) is DayType.HOLIDAY  # holidays' own entries stay off too
    assert cal.day_type(date(2027, 1, 9)) is DayType.WEEKEND
    assert cuts(exhausted_decision(cal, ORDINARY_MONDAY))
    assert cuts(exhausted_decision(cal, SWAPPED_SATURDAY))
    dec = exhausted_decision(cal, NOTICE_DAY_OFF)
    assert not cuts(dec) and "windows.public_holidays" in failing_rules(dec)
    assert "windows.calendar_unknown" not in failing_rules(dec)
    assert cal.holiday_name(NOTICE_DAY_OFF) == f"Day off ({NOTICE_2027})"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"country": "GB"}, "country 'GB' is not this gateway's calendar (CN)"),
        ({"days_off": [*DAYS_OFF_2027, date(2028, 1, 1)]}, "days_off: 2028-01-01 is not in 2027"),
        ({"workdays": [date(2026, 12, 26)]}, "workdays: 2026-12-26 is not in 2027"),
        ({"workdays": [*WORKDAYS_2027, date(2027, 2, 11)]}, "2027-02-11 is listed both as a day off and as a"),
        ({"workdays": [date(2027, 2, 22)]}, "workdays: 2027-02-22 is not a weekend day"),
        ({"days_off": []}, "days_off is empty"),
        ({"year": 1999, "days_off": [date(1999, 1, 1)], "workdays": []}, "year 1999 is out of range"),
    ],
)
def test_bad_arrangements_are_refused_in_one_line(kw: dict[str, Any], message: str) -> None:
    cal = cn()
    with pytest.raises(CalendarSourceError) as info:
        arrangement(cal, **kw)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not cal.is_official(2027)


def test_no_country_calendar_refuses_arrangements() -> None:
    with pytest.raises(CalendarSourceError, match="no country calendar"):
        arrangement(WorkCalendar("UTC", None))


# -- the local file ------------------------------------------------------------------------------------
def test_file_source_makes_the_year_official(tmp_path: Path) -> None:
    file = tmp_path / "calendar.toml"
    file.write_text(GOOD_FILE, encoding="utf-8")
    cal = cn()
    install(cal, None, file)
    assert cal.is_official(2027) and cal.source_of(2027) == f"file calendar.toml ({NOTICE_2027})"
    assert cuts(exhausted_decision(cal, SWAPPED_SATURDAY))
    assert not cuts(exhausted_decision(cal, NOTICE_DAY_OFF))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("year = 2027", "year = 2027\nholiday = true"), ":6: years[0].holiday: unknown key"),
        (('country = "CN"', 'country = "US"'), ":2: country: country 'US' is not this gateway's calendar"),
        (("2027-10-09]", "2027-10-09, 2027-02-12]"), ":8: years[0].workdays: 2027-02-12 is listed both"),
        (("[2027-01-01,", "[2028-01-01,"), ":7: years[0].days_off: days_off: 2028-01-01 is not in 2027"),
        (("days_off = [", "days_off = [2027-13-01, "), ":7: TOML syntax error"),
        (("workdays =", "\n[[years]]\nyear = 2027\nsource = 'x'\ndays_off = [2027-01-01]\nworkdays ="),
         ":10: years[1].year: 2027 is given twice"),
    ],
)
def test_bad_file_is_one_line_with_its_line_number(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    file = tmp_path / "calendar.toml"
    file.write_text(GOOD_FILE.replace(*edit, 1), encoding="utf-8")
    cal = cn()
    with pytest.raises(TomlError) as info:
        load_file(cal, file)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    assert not cal.is_official(2027)


# -- the warning event ---------------------------------------------------------------------------------
def test_calendar_stale_once_per_year_and_start(tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    cal = cn()
    reported: set[int] = set()
    now = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
    with store.tx() as conn:
        assert report_stale(conn, cal, now, reported) == [2027]
        assert report_stale(conn, cal, now + timedelta(hours=1), reported) == []
    rows = store.all("SELECT kind, severity, detail_json FROM events WHERE kind = 'calendar_stale'")
    assert len(rows) == 1 and rows[0]["severity"] == "warning"
    assert '"year":2027' in rows[0]["detail_json"].replace(" ", "")
    assert "holidays 0.109" in rows[0]["detail_json"] and NOTICE_2027 in rows[0]["detail_json"]
    # In 2027 the next year (2028) is stale too: it is reported once, 2027 not again.
    with store.tx() as conn:
        assert report_stale(conn, cal, datetime(2027, 3, 1, tzinfo=UTC), reported) == [2028]
    # A new start (a fresh set) reports again; an official year is not reported.
    cal.add_official(arrangement(cal))
    with store.tx() as conn:
        assert report_stale(conn, cal, now, set()) == []
    store.close()
