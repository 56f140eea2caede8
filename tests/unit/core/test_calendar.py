"""WorkCalendar against real 2026 calendars.

Sources: State Council notice on 2026 holiday arrangements as encoded in the ``holidays`` package
0.109 (names "Day off (substituted from MM/DD/YYYY)"); UK bank holidays for England (gov.uk).
"""

from datetime import UTC, date, datetime

import pytest

from gateway.core.calendar import CalendarError, DayType, OfficialYear, WorkCalendar


@pytest.fixture(scope="module")
def cn() -> WorkCalendar:
    return WorkCalendar("Asia/Shanghai", "CN")


@pytest.fixture(scope="module")
def eng() -> WorkCalendar:
    return WorkCalendar("Europe/London", "GB", "ENG")


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 1, 1), "holiday"),  # New Year's Day
        (date(2026, 1, 2), "holiday"),  # Friday off, substituted from Sunday 4 January
        (date(2026, 1, 3), "weekend"),  # Saturday
        (date(2026, 1, 4), "workday"),  # Sunday made a working day (调休)
        (date(2026, 2, 14), "workday"),  # Saturday working day before the Spring Festival
        (date(2026, 2, 17), "holiday"),  # Spring Festival
        (date(2026, 2, 28), "workday"),  # Saturday working day after it
        (date(2026, 5, 9), "workday"),  # Saturday working day after Labour Day
        (date(2026, 9, 20), "workday"),  # Sunday working day before National Day
        (date(2026, 10, 7), "holiday"),  # substituted day off
        (date(2026, 10, 10), "workday"),  # Saturday working day
        (date(2026, 10, 11), "weekend"),  # an ordinary Sunday
        (date(2026, 10, 12), "workday"),  # an ordinary Monday
    ],
)
def test_cn_2026_adjusted_working_days(cn: WorkCalendar, day: date, expected: str) -> None:
    assert cn.day_type(day) == expected


def test_cn_substituted_day_off_is_a_public_holiday(cn: WorkCalendar) -> None:
    assert cn.is_public_holiday(date(2026, 1, 2))
    assert cn.holiday_name(date(2026, 1, 2)) == "Day off (substituted from 01/04/2026)"
    assert not cn.is_public_holiday(date(2026, 1, 4))
    assert cn.is_adjusted_workday(date(2026, 1, 4))
    assert cn.holiday_name(date(2026, 3, 10)) is None


def test_england_bank_holidays(eng: WorkCalendar) -> None:
    assert eng.day_type(date(2026, 12, 28)) is DayType.HOLIDAY  # Boxing Day (observed), a Monday
    assert eng.day_type(date(2026, 4, 6)) is DayType.HOLIDAY  # Easter Monday
    assert eng.day_type(date(2026, 11, 28)) is DayType.WEEKEND
    assert eng.day_type(date(2026, 11, 30)) is DayType.WORKDAY
    assert eng.day_type(date(2026, 11, 30)) == "workday"  # plain strings compare equal


def test_local_time_across_dst(eng: WorkCalendar) -> None:
    # Europe/London leaves BST on 2026-10-25 at 01:00 UTC.
    assert eng.local(datetime(2026, 10, 25, 0, 30, tzinfo=UTC)).hour == 1
    assert eng.local(datetime(2026, 10, 25, 1, 30, tzinfo=UTC)).hour == 1
    assert eng.local(datetime(2026, 10, 25, 1, 30, tzinfo=UTC)).utcoffset().total_seconds() == 0


def test_naive_instant_rejected(eng: WorkCalendar) -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        eng.local(datetime(2026, 1, 1, 12, 0))


def test_weekends_only_without_country() -> None:
    cal = WorkCalendar("UTC", None)
    assert cal.day_type(date(2026, 1, 1)) is DayType.WORKDAY
    assert cal.day_type(date(2026, 1, 3)) is DayType.WEEKEND


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Mars/Olympus", "CN"), "unknown time zone 'Mars/Olympus'"),
        (("UTC", "XX"), "Country XX not available"),
        (("UTC", "GB", "ZZZ"), "does not have subdivision ZZZ"),
    ],
)
def test_bad_calendar_is_one_line_error(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CalendarError, match=message) as info:
        WorkCalendar(*args)
    assert "\n" not in str(info.value)


def test_holiday_table_cached_per_year(cn: WorkCalendar) -> None:
    cn.day_type(date(2031, 5, 1))
    table = cn._years[2031]
    cn.day_type(date(2031, 5, 2))
    assert cn._years[2031] is table


def test_a_day_type_asked_before_an_official_year_arrives_follows_it() -> None:
    """The calendar remembers each date's day type; an official arrangement learnt later must still
    decide the dates it covers (a remembered answer is forgotten when the calendar learns one)."""
    cal = WorkCalendar("Asia/Shanghai", "CN")
    tuesday, saturday = date(2031, 3, 4), date(2031, 3, 8)
    assert cal.day_type(tuesday) == DayType.WORKDAY
    assert cal.day_type(saturday) == DayType.WEEKEND
    cal.add_official(
        OfficialYear("CN", 2031, frozenset({tuesday}), frozenset({saturday}), "test notice", "test")
    )
    assert cal.day_type(tuesday) == DayType.HOLIDAY
    assert cal.day_type(saturday) == DayType.WORKDAY
