"""A 2027 holiday arrangement for China, made up for tests (no tests here).

The ``holidays`` package has China's arrangement up to 2026; the State Council's notice for 2027
(国务院办公厅关于2027年部分节假日安排的通知) is not in it.  ``DAYS_OFF_2027``/``WORKDAYS_2027`` are a
made-up arrangement in the shape of the 2026 notice (Spring Festival 5-12 February with Saturday
20 February worked, National Day 1-7 October with Saturday 9 October worked), used only to show that
whatever the notice says is what the gateway obeys: Thursday 11 February is off only by it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from drivers.base import RelayAction, RelayState
from gateway.core.calendar import OfficialYear, WorkCalendar
from gateway.policy.calendar_sources import official_year
from gateway.policy.decide import AccountView, Decision, MeterView, decide
from gateway.policy.rules import load_preset
from gateway.policy.state import ActionKind as K
from gateway.policy.state import EnforcementState as S

NOTICE_2027 = "国务院办公厅关于2027年部分节假日安排的通知"


def _span(first: str, last: str) -> list[date]:
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [a + timedelta(days=i) for i in range((b - a).days + 1)]


DAYS_OFF_2027 = [
    date(2027, 1, 1),
    *_span("2027-02-05", "2027-02-12"),
    date(2027, 4, 5),
    *_span("2027-05-01", "2027-05-05"),
    date(2027, 6, 9),
    date(2027, 9, 15),
    *_span("2027-10-01", "2027-10-07"),
]
WORKDAYS_2027 = [date(2027, 2, 20), date(2027, 10, 9)]

# CN preset without the 30-minute reminder, so one decision shows whether the cut may happen.
CN = load_preset("cn", {"notice": {"reminder_before": "PT0S"}})

ORDINARY_MONDAY = date(2027, 1, 4)
SWAPPED_SATURDAY = date(2027, 2, 20)  # a working day by the arrangement, a weekend day by default
NOTICE_DAY_OFF = date(2027, 2, 11)  # Thursday: off by the arrangement only, not in ``holidays``


def cn() -> WorkCalendar:
    return WorkCalendar("Asia/Shanghai", "CN")


def arrangement(cal: WorkCalendar, **kw: Any) -> OfficialYear:
    args: dict[str, Any] = dict(country="CN", year=2027, days_off=DAYS_OFF_2027, workdays=WORKDAYS_2027,
                                source=NOTICE_2027, origin="test")
    args.update(kw)
    return official_year(cal, **args)


def at_10_local(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


def exhausted_decision(cal: WorkCalendar, d: date) -> Decision:
    """An account past its notice period, credit exhausted, decided at 10:00 local on ``d``.

    The notice was delivered four days before: past the cn period (3 days), not yet stale (7 days).
    """
    served = at_10_local(d) - timedelta(days=4)
    acc = AccountView("A1", -100, 0, False, None, False, None, S.NOTICE_SERVED, served, notice_served_at=served,
                      notice_delivered_at=served)
    meter = MeterView("M1", RelayState.CLOSED, True, False, False, False)
    return decide(acc, meter, at_10_local(d), cal, CN)


def cuts(dec: Decision) -> bool:
    return any(a.kind is K.DISCONNECT and a.relay_action is RelayAction.TRIP for a in dec.actions)


def failing_rules(dec: Decision) -> list[str]:
    return [c.rule for c in dec.trace if not c.passed]


def toml_dates(days: list[date]) -> str:
    return "[" + ", ".join(d.isoformat() for d in days) + "]"


GOOD_FILE = (
    '# official 2027 arrangement\ncountry = "CN"\n\n[[years]]\nyear = 2027\n'
    f'source = "{NOTICE_2027}"\n'
    f"days_off = {toml_dates(DAYS_OFF_2027)}\n"
    f"workdays = {toml_dates(WORKDAYS_2027)}\n"
)
