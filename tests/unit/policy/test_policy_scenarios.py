"""Enforcement scenarios walked through time with real calendars (dates are real 2026 dates).

Each walk calls ``decide``, applies the decision as the lead's enforcer would (``apply`` plus the
relay read-back), and jumps to ``next_review_at``: the policy must say when to come back.
"""

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from drivers.base import RelayAction, RelayState
from gateway.core.calendar import WorkCalendar
from gateway.policy.decide import AccountView, Decision, Hold, MeterView, Override, apply, decide
from gateway.policy.explain import explain
from gateway.policy.rules import Rules, load_preset
from gateway.policy.state import ActionKind as K
from gateway.policy.state import EnforcementState as S

LONDON = WorkCalendar("Europe/London", "GB", "ENG")
SHANGHAI = WorkCalendar("Asia/Shanghai", "CN")
UK = load_preset("uk")
CN = load_preset("cn")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def account(balance: int = 0, **kw: object) -> AccountView:
    """An account; a notice given as served was also delivered then, unless said otherwise."""
    base = AccountView("A1", balance, 0, False, None, False, None, S.NORMAL, utc(2026, 1, 1))
    kw.setdefault("notice_delivered_at", kw.get("notice_served_at"))
    return replace(base, **kw)  # type: ignore[arg-type]


def meter(**kw: object) -> MeterView:
    base = MeterView("M1", RelayState.CLOSED, True, False, False, False)
    return replace(base, **kw)  # type: ignore[arg-type]


def executed(m: MeterView, d: Decision) -> MeterView:
    """The meter after the enforcer carried out the decision's relay actions and read them back."""
    for a in d.actions:
        if a.relay_action is RelayAction.TRIP:
            m = replace(m, relay=RelayState.OPEN)
        elif a.relay_action is RelayAction.DIRECT_CLOSE:
            m = replace(m, relay=RelayState.CLOSED)
    return m


def delivered(acc: AccountView, at: datetime | None = None) -> AccountView:
    """The head office confirmed delivery of the issued notice (at issue unless ``at`` says otherwise)."""
    if acc.notice_served_at is None or acc.notice_delivered_at is not None:
        return acc
    return replace(acc, notice_delivered_at=at or acc.notice_served_at)


def walk(acc: AccountView, m: MeterView, start: datetime, cal: WorkCalendar, rules: Rules,
         until: datetime, *, deliver: bool = True, **kw: object) -> list[tuple[datetime, Decision]]:
    """Decide at ``start`` and at every ``next_review_at`` up to ``until``.

    ``deliver``: the head office confirms each notice as soon as it is issued.
    """
    out: list[tuple[datetime, Decision]] = []
    t = start
    for _ in range(50):
        d = decide(acc, m, t, cal, rules, **kw)  # type: ignore[arg-type]
        out.append((t, d))
        acc, m = apply(acc, d), executed(m, d)
        if deliver:
            acc = delivered(acc)
        if d.next_review_at is None or d.next_review_at > until:
            return out
        assert d.next_review_at > t
        t = d.next_review_at
    raise AssertionError("no end to the walk")


def first(steps: list[tuple[datetime, Decision]], kind: K) -> datetime:
    return next(t for t, d in steps if kind in d.kinds())


def test_uk_credit_out_friday_evening_waits_for_monday_10() -> None:
    friday = utc(2026, 11, 27, 18, 30)  # GMT, friendly-credit hours already running
    d = decide(account(0), meter(), friday, LONDON, UK)
    assert d.kinds() == (K.WARN,)  # no emergency credit on this account: nothing to offer
    (cut,) = d.blocked
    assert cut.kind is K.DISCONNECT and cut.not_before == utc(2026, 11, 30, 10, 0)
    for probe in (utc(2026, 11, 28, 12), utc(2026, 11, 29, 23), utc(2026, 11, 30, 9, 59)):
        later = decide(apply(account(0), d), meter(), probe, LONDON, UK)
        assert K.DISCONNECT not in later.kinds()
    steps = walk(account(0), meter(), friday, LONDON, UK, utc(2026, 12, 5))
    assert first(steps, K.DISCONNECT) == utc(2026, 11, 30, 10, 0)


@pytest.mark.parametrize(
    ("out_of_credit", "cut_at"),
    [
        (utc(2026, 4, 2, 18, 0), utc(2026, 4, 7, 9, 0)),  # Thu 19:00 BST; Good Friday .. Easter Monday
        (utc(2026, 12, 24, 18, 30), utc(2026, 12, 29, 10, 0)),  # Christmas, weekend, Boxing Day observed
        (utc(2026, 3, 27, 18, 30), utc(2026, 3, 30, 9, 0)),  # Fri 18:30 GMT; clocks go forward on Sunday
    ],
)
def test_uk_bank_holidays_and_dst_push_the_cut(out_of_credit: datetime, cut_at: datetime) -> None:
    steps = walk(account(0), meter(), out_of_credit, LONDON, UK, cut_at + timedelta(days=3))
    assert first(steps, K.DISCONNECT) == cut_at
    assert LONDON.local(cut_at).hour == 10


def test_uk_emergency_credit_restores_supply_then_payment_clears_it() -> None:
    cut = decide(account(0, state=S.WARNING_3, warnings_sent={3: utc(2026, 11, 27)},
                         alerts_sent={"emergency_credit.offer": utc(2026, 11, 27)}),
                 meter(), utc(2026, 11, 30, 11), LONDON, UK)
    assert cut.kinds() == (K.DISCONNECT,)
    acc = replace(apply(account(0), cut), emergency_credit_minor=500, emergency_credit_active=True)
    d = decide(acc, meter(relay=RelayState.OPEN), utc(2026, 11, 30, 23, 0), LONDON, UK)  # at night
    assert d.kinds() == (K.RECONNECT,) and d.actions[0].relay_action is RelayAction.DIRECT_CLOSE


def test_cn_notice_reminder_cut_then_payment_reconnects() -> None:
    monday = utc(2026, 11, 16, 2, 0)  # 10:00 CST, an ordinary working Monday
    steps = walk(account(-50), meter(), monday, SHANGHAI, CN, utc(2026, 12, 31))
    d0 = steps[0][1]
    assert d0.kinds() == (K.WARN, K.SERVE_NOTICE) and d0.state is S.NOTICE_SERVED
    assert d0.blocked[0].not_before is None  # issued, not yet delivered: no cut by time alone
    d1 = decide(delivered(apply(account(-50), d0)), meter(), monday + timedelta(minutes=5), SHANGHAI, CN)
    assert d1.blocked[0].not_before == utc(2026, 11, 19, 2, 0)  # 3 days from delivery, a Thursday
    assert first(steps, K.SEND_REMINDER) == utc(2026, 11, 19, 1, 30)  # 30 min before
    assert first(steps, K.DISCONNECT) == utc(2026, 11, 19, 2, 0)
    kinds = [k for _, d in steps for k in d.kinds()]
    assert kinds.count(K.SERVE_NOTICE) == 1 and kinds.count(K.SEND_REMINDER) == 1 and kinds.count(K.WARN) == 1
    d_cut = next(d for _, d in steps if K.DISCONNECT in d.kinds())
    acc, m = apply(account(-50), d_cut), meter(relay=RelayState.OPEN)
    paid = replace(acc, balance_minor=10_000)
    night = utc(2026, 11, 21, 16, 0)  # Sunday 00:00 CST: windows do not apply to reconnection
    d = decide(paid, m, night, SHANGHAI, CN)
    assert d.kinds() == (K.RECONNECT,) and d.actions[0].relay_action is RelayAction.CLOSE_PERMITTED
    assert d.state is S.RECONNECTION_PENDING and d.notice_served_at is None
    pressed = decide(apply(paid, d), replace(m, relay=RelayState.CLOSED), night + timedelta(minutes=5),
                     SHANGHAI, CN)
    assert pressed.state is S.NORMAL and pressed.actions == ()


def test_cn_national_day_holidays_then_adjusted_working_saturday() -> None:
    served = utc(2026, 10, 7, 2, 0)  # Wed 7 Oct 10:00 CST, a substituted day off
    steps = walk(account(0), meter(), served, SHANGHAI, CN, utc(2026, 10, 20))
    assert first(steps, K.DISCONNECT) == utc(2026, 10, 10, 2, 0)  # Saturday 10 Oct is a working day
    ordinary = walk(account(0), meter(), utc(2026, 10, 14, 2, 0), SHANGHAI, CN, utc(2026, 10, 25))
    assert first(ordinary, K.DISCONNECT) == utc(2026, 10, 19, 0, 0)  # Sat 17 Oct blocked: Monday 08:00 CST
    assert first(ordinary, K.SEND_REMINDER) == utc(2026, 10, 18, 23, 30)


def test_payment_supersedes_a_pending_trip() -> None:
    acc = account(5000, state=S.DISCONNECTED, notice_served_at=utc(2026, 11, 1))
    d = decide(acc, meter(pending_relay_action=RelayAction.TRIP), utc(2026, 11, 20, 3), SHANGHAI, CN)
    assert d.kinds() == (K.RECONNECT,)
    assert any(c.rule == "relay.pending" and "supersedes" in c.detail for c in d.actions[0].trace)


def test_pending_trip_is_not_issued_again() -> None:
    acc = account(0, state=S.NOTICE_SERVED, notice_served_at=utc(2026, 11, 1), reminder_sent_at=utc(2026, 11, 5, 1, 30),
                  warnings_sent={3: utc(2026, 11, 1)})
    d = decide(acc, meter(pending_relay_action=RelayAction.TRIP), utc(2026, 11, 5, 2), SHANGHAI, CN)
    assert d.actions == () and d.state is S.DISCONNECTED


def test_protected_customer_is_escalated_and_load_limited_never_cut() -> None:
    acc = account(-100, protected=True, protected_category="important_user")
    steps = walk(acc, meter(supports_load_limit=True), utc(2026, 11, 16, 2), SHANGHAI, CN, utc(2027, 1, 31))
    kinds = [k for _, d in steps for k in d.kinds()]
    assert K.DISCONNECT not in kinds
    assert kinds.count(K.ESCALATE) == 1 and kinds.count(K.LOAD_LIMIT) == 1
    assert first(steps, K.LOAD_LIMIT) == utc(2026, 11, 19, 2)  # after the notice period
    assert steps[-1][1].state is S.LOAD_LIMITED
    assert all(b.not_before is None for b in steps[-1][1].blocked if b.kind is K.DISCONNECT)


def test_keep_power_forbids_every_trip_and_is_mirrored() -> None:
    m = meter(keep_power=True, supports_keep_power=True, keep_power_on_meter=False)
    acc = account(0, state=S.NOTICE_SERVED, notice_served_at=utc(2026, 11, 1), warnings_sent={3: utc(2026, 11, 1)})
    d = decide(acc, m, utc(2026, 11, 5, 2), SHANGHAI, CN)
    assert d.kinds() == (K.SET_KEEP_POWER,) and d.actions[0].relay_action is RelayAction.KEEP_POWER_ON
    order = Override("M1", "disconnect", "theft suspected", "tech-7", utc(2026, 11, 6), allow_protected=True)
    d2 = decide(acc, replace(m, keep_power_on_meter=True), utc(2026, 11, 5, 2), SHANGHAI, CN, overrides=[order])
    assert d2.actions == () and [b.kind for b in d2.blocked] == [K.DISCONNECT]
    assert any(c.rule == "keep_power" and not c.passed for c in d2.blocked[0].trace)
    cleared = decide(acc, replace(m, keep_power=False, keep_power_on_meter=True), utc(2026, 11, 1), SHANGHAI, CN)
    assert K.CLEAR_KEEP_POWER in cleared.kinds()


def test_manual_cut_ignores_windows_but_not_protection() -> None:
    sunday_night = utc(2026, 11, 29, 23)  # inside UK friendly hours
    order = Override("M1", "disconnect", "unsafe installation", "tech-7", utc(2026, 11, 30, 12))
    d = decide(account(5000), meter(), sunday_night, LONDON, UK, overrides=[order])
    assert d.kinds() == (K.DISCONNECT,) and d.state is S.DISCONNECTED
    assert d.actions[0].trace[0].rule == "override.disconnect"
    vulnerable = account(5000, protected_category="medical_equipment")
    refused = decide(vulnerable, meter(), sunday_night, LONDON, UK, overrides=[order])
    assert refused.kinds() == (K.ESCALATE,) and refused.blocked[0].kind is K.DISCONNECT
    allowed = decide(vulnerable, meter(), sunday_night, LONDON, UK, overrides=[replace(order, allow_protected=True)])
    assert allowed.kinds() == (K.DISCONNECT,)
    assert any(c.rule == "override.allow_protected" and c.passed for c in allowed.actions[0].trace)
    # Once the order expires, enough credit brings the power back.
    after = decide(apply(account(5000), d), meter(relay=RelayState.OPEN), utc(2026, 11, 30, 12), LONDON, UK,
                   overrides=[order])
    assert after.kinds() == (K.RECONNECT,)


def test_connect_override_reconnects_at_night_and_holds_off_the_cut() -> None:
    acc = account(-10, state=S.DISCONNECTED, notice_served_at=utc(2026, 11, 1))
    order = Override("A1", "connect", "welfare visit", "ho-ops", utc(2026, 11, 22, 4))
    d = decide(acc, meter(relay=RelayState.OPEN), utc(2026, 11, 20, 16), SHANGHAI, CN, overrides=[order])
    assert d.kinds() == (K.RECONNECT,)
    back_on = decide(apply(acc, d), meter(), utc(2026, 11, 20, 17), SHANGHAI, CN, overrides=[order])
    assert K.DISCONNECT not in back_on.kinds()
    assert back_on.next_review_at is not None and back_on.next_review_at <= order.expires_at


def test_not_controllable_meter_raises_one_alarm_instead_of_a_cut() -> None:
    acc = account(0, state=S.WARNING_3, warnings_sent={3: utc(2026, 11, 27)},
                  alerts_sent={"emergency_credit.offer": utc(2026, 11, 27)})
    m = meter(controllable=False)
    d = decide(acc, m, utc(2026, 11, 30, 11), LONDON, UK)
    assert d.kinds() == (K.ALARM,) and d.actions[0].relay_action is None and d.state is S.WARNING_3
    assert decide(apply(acc, d), m, utc(2026, 11, 30, 11, 5), LONDON, UK).actions == ()


def test_weather_hold_blocks_until_expiry_or_until_cleared() -> None:
    tx, cal = load_preset("us-tx"), WorkCalendar("America/Chicago", "US", "TX")
    acc = account(0, state=S.NOTICE_SERVED, notice_served_at=utc(2026, 7, 1, 15), warnings_sent={3: utc(2026, 7, 1)})
    heat = Hold("weather", "extreme heat", "ho-ops", utc(2026, 7, 1), utc(2026, 7, 6, 5))
    d = decide(acc, meter(), utc(2026, 7, 2, 18), cal, tx, holds=[heat])
    assert d.actions == () and d.blocked[0].not_before == utc(2026, 7, 6, 5)
    assert d.next_review_at == utc(2026, 7, 6, 5)
    open_ended = decide(acc, meter(), utc(2026, 7, 2, 18), cal, tx, holds=[replace(heat, expires_at=None)])
    assert open_ended.blocked[0].not_before is None
    assert decide(acc, meter(), utc(2026, 7, 6, 5), cal, tx, holds=[heat]).kinds() == (K.DISCONNECT,)


def test_hold_after_reminder_forces_a_fresh_reminder() -> None:
    acc = account(0, state=S.NOTICE_SERVED, notice_served_at=utc(2026, 11, 16, 2),
                  reminder_sent_at=utc(2026, 11, 19, 1, 30), warnings_sent={3: utc(2026, 11, 16)})
    hold = Hold("grid", "storm", "ho-ops", utc(2026, 11, 19, 1, 45), utc(2026, 11, 23, 1))  # until Mon 09:00 CST
    steps = walk(acc, meter(), utc(2026, 11, 19, 2), SHANGHAI, CN, utc(2026, 12, 1), holds=[hold])
    assert first(steps, K.SEND_REMINDER) == utc(2026, 11, 23, 0, 30)
    assert first(steps, K.DISCONNECT) == utc(2026, 11, 23, 1)


def test_warnings_are_graded_and_sent_once() -> None:
    acc = account(4000, days_of_credit_left=Decimal("6"))
    d1 = decide(acc, meter(), utc(2026, 11, 16, 2), SHANGHAI, CN)
    assert d1.kinds() == (K.WARN,) and d1.actions[0].level == 1 and d1.state is S.WARNING_1
    again = decide(apply(acc, d1), meter(), utc(2026, 11, 16, 3), SHANGHAI, CN)
    assert again.actions == ()
    lower = decide(replace(apply(acc, d1), balance_minor=1500), meter(), utc(2026, 11, 17, 2), SHANGHAI, CN)
    assert lower.kinds() == (K.WARN,) and lower.actions[0].level == 2
    topped = decide(replace(apply(acc, lower), balance_minor=90_000, days_of_credit_left=Decimal(40)), meter(),
                    utc(2026, 11, 18, 2), SHANGHAI, CN)
    assert topped.state is S.NORMAL and topped.warnings_sent == {}


def test_explain_names_the_blocking_rule_and_when_it_ends() -> None:
    friday = utc(2026, 11, 27, 18, 30)
    acc = account(0)
    d = decide(acc, meter(), friday, LONDON, UK)
    text = explain(d, acc, meter(), friday, LONDON, UK)
    assert "Blocked: disconnect (trip) by windows.hours, windows.weekends" in text
    assert "allowed from Mon 2026-11-30 10:00:00 +00:00" in text
    assert "Fri 2026-11-27 18:30:00 +00:00 (workday)" in text
    served = account(-50, state=S.NOTICE_SERVED, notice_served_at=utc(2026, 11, 16, 2),
                     warnings_sent={3: utc(2026, 11, 16, 2)})
    cn_text = explain(decide(served, meter(), utc(2026, 11, 16, 2), SHANGHAI, CN), served,
                      meter(), utc(2026, 11, 16, 2), SHANGHAI, CN)
    assert "by notice.period" in cn_text and "allowed from Thu 2026-11-19 10:00:00 +08:00" in cn_text


# -- notice delivery, stale notices and working hours (cn) -------------------------------------------

def test_undelivered_notice_never_allows_a_cut_and_is_escalated_once() -> None:
    monday = utc(2026, 11, 16, 2, 0)  # 10:00 CST
    steps = walk(account(-50), meter(), monday, SHANGHAI, CN, utc(2026, 12, 31), deliver=False)
    kinds = [k for _, d in steps for k in d.kinds()]
    assert K.DISCONNECT not in kinds and K.SEND_REMINDER not in kinds
    assert kinds.count(K.SERVE_NOTICE) == 1 and kinds.count(K.NOTICE_UNDELIVERED) == 1
    assert first(steps, K.NOTICE_UNDELIVERED) == monday + CN.notice.escalate_after
    last = steps[-1][1]
    assert last.state is S.NOTICE_SERVED and last.notice_delivered_at is None
    (cut,) = [b for b in last.blocked if b.kind is K.DISCONNECT]
    assert cut.not_before is None and any(c.rule == "notice.delivered" and not c.passed for c in cut.trace)


def test_notice_period_runs_from_delivery_not_from_issue() -> None:
    issued = utc(2026, 11, 16, 2, 0)  # Mon 10:00 CST
    d0 = decide(account(-50), meter(), issued, SHANGHAI, CN)
    late = utc(2026, 11, 18, 3, 0)  # confirmed delivered Wed 11:00 CST, two days later
    acc = delivered(apply(account(-50), d0), late)
    steps = walk(acc, meter(), late, SHANGHAI, CN, utc(2026, 12, 31))
    assert first(steps, K.DISCONNECT) == utc(2026, 11, 23, 0, 0)  # Sat 21 + 3 d = weekend: Monday 08:00 CST
    assert first(steps, K.DISCONNECT) >= late + CN.notice.period


def test_meter_display_delivery_counts_where_the_rules_allow_it() -> None:
    rules = load_preset("cn", {"notice": {"delivery": "meter_display"}})
    monday = utc(2026, 11, 16, 2, 0)
    steps = walk(account(-50), meter(), monday, SHANGHAI, rules, utc(2026, 12, 31), deliver=False)
    assert steps[0][1].notice_delivered_at == monday
    assert first(steps, K.DISCONNECT) == utc(2026, 11, 19, 2, 0)
    assert K.NOTICE_UNDELIVERED not in [k for _, d in steps for k in d.kinds()]


def test_stale_notice_lapses_and_a_fresh_one_is_needed() -> None:
    # Delivered Wed 10:00 CST; a storm hold keeps the cut off for 11 days: the notice goes stale.
    served = utc(2026, 11, 18, 2, 0)
    acc = account(0, state=S.NOTICE_SERVED, notice_served_at=served, warnings_sent={3: served})
    storm = Hold("grid", "storm", "ho-ops", served, served + timedelta(days=11, hours=14))
    steps = walk(acc, meter(), served, SHANGHAI, CN, utc(2026, 12, 31), holds=[storm])
    lapsed = first(steps, K.NOTICE_LAPSED)
    assert lapsed == served + CN.notice.valid_for  # Wed 25 Nov 10:00 CST
    d_lapse = next(d for t, d in steps if t == lapsed)
    assert d_lapse.kinds() == (K.NOTICE_LAPSED, K.SERVE_NOTICE) and d_lapse.notice_served_at == lapsed
    cut = first(steps, K.DISCONNECT)
    assert cut >= storm.expires_at and cut >= lapsed + CN.notice.period
    assert cut < lapsed + CN.notice.valid_for  # within 3-7 days of the fresh notice's delivery
    assert all(K.DISCONNECT not in d.kinds() for t, d in steps if t < lapsed)  # none on the stale notice


@pytest.mark.parametrize(
    "delivered_at",
    [
        utc(2026, 11, 13, 12, 0),  # Fri 20:00 CST: due Mon 20:00
        utc(2026, 11, 12, 16, 0),  # Fri 00:00 CST: due Mon 00:00 (was cut at midnight)
        utc(2026, 11, 16, 9, 30),  # Mon 17:30 CST: due Thu 17:30
        utc(2026, 9, 30, 2, 0),  # Wed 30 Sep 10:00 CST: due in the National Day holidays
    ],
)
def test_cn_cut_starts_in_working_hours_of_a_working_day(delivered_at: datetime) -> None:
    acc = account(0, state=S.NOTICE_SERVED, notice_served_at=delivered_at, warnings_sent={3: delivered_at})
    steps = walk(acc, meter(), delivered_at, SHANGHAI, CN, delivered_at + timedelta(days=30))
    cuts = [t for t, d in steps if K.DISCONNECT in d.kinds()]
    assert cuts, "a delivered notice under cn leads to a cut"
    local = SHANGHAI.local(cuts[0])
    assert 8 <= local.hour < 17, f"cut at {local}"
    assert SHANGHAI.day_type(local.date()) == "workday"
    reminder = first(steps, K.SEND_REMINDER)
    assert cuts[0] - reminder == timedelta(minutes=30)


def test_cn_working_hours_are_configurable() -> None:
    rules = load_preset("cn", {"windows": {"hours": [{"start": "16:00", "end": "09:00"}]}})
    fri = utc(2026, 11, 13, 12, 0)
    acc = account(0, state=S.NOTICE_SERVED, notice_served_at=fri, warnings_sent={3: fri})
    steps = walk(acc, meter(), fri, SHANGHAI, rules, utc(2026, 12, 31))
    assert SHANGHAI.local(first(steps, K.DISCONNECT)).hour == 9


def test_explain_shows_the_instants_inside_rule_traces_in_the_sites_zone() -> None:
    """The trace keeps its instants as instants: explain writes them like every other instant (local
    with offset, or UTC when asked); the audit log's text stays UTC to the minute."""
    from gateway.core.present import Presenter

    friday_18 = utc(2026, 11, 20, 10)  # 18:00 in Shanghai: inside the protected evening, then a weekend
    served = account(-50, state=S.NOTICE_SERVED, notice_served_at=utc(2026, 11, 16, 2),
                     warnings_sent={3: utc(2026, 11, 16, 2)})
    order = Override("M1", "connect", "hospital visit", "tech", utc(2026, 11, 20, 12))
    d = decide(served, meter(), friday_18, SHANGHAI, CN, overrides=[order])
    text = explain(d, served, meter(), friday_18, SHANGHAI, CN)
    assert "windows.hours: 20:00 local is inside 17:00-08:00, until 2026-11-21 08:00:00 +08:00" in text
    assert "windows.weekends: 2026-11-21 is a weekend day, until 2026-11-23 00:00:00 +08:00" in text
    assert ("notice.period: notice delivered 2026-11-16 10:00:00 +08:00, period 3 days, 0:00:00 "
            "ends 2026-11-19 10:00:00 +08:00") in text
    assert "override.connect: manual connect by tech (hospital visit) until 2026-11-20 20:00:00 +08:00" in text
    assert "notice.reminder: reminder due 2026-11-23 07:30:00 +08:00" in text
    assert "Z" not in text  # no instant left in UTC
    in_utc = explain(d, served, meter(), friday_18, SHANGHAI, CN, Presenter(SHANGHAI.tz, "CNY", 2, utc=True))
    assert "windows.weekends: 2026-11-21 is a weekend day, until 2026-11-22 16:00:00 +00:00" in in_utc
    (cut,) = [b for b in d.blocked if b.kind is K.DISCONNECT]
    audit = {c.rule: c.detail for c in cut.trace}  # what the audit log keeps
    assert audit["windows.weekends"] == "2026-11-21 is a weekend day, until 2026-11-22 16:00Z"
    assert audit["override.connect"] == "manual connect by tech (hospital visit) until 2026-11-20 12:00Z"
