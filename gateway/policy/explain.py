"""Human explanation of a decision: state, the rules that applied, what happens next and when.

Written for a technician or a call-centre agent answering "why is my power (not) off?": each blocked
action names the rule that holds it back and the local instant that rule stops applying.
"""

from __future__ import annotations

from datetime import datetime

from gateway.core.calendar import WorkCalendar
from gateway.policy.inputs import AccountView, MeterView
from gateway.policy.rules import Rules
from gateway.policy.state import Action, Decision


def _when(t: datetime | None, cal: WorkCalendar) -> str:
    if t is None:
        return "not by itself (needs a payment or a head-office decision)"
    local = cal.local(t)
    return f"{local:%a %Y-%m-%d %H:%M %Z} ({t.astimezone(cal.tz).isoformat()})"


def _money(minor: int, rules: Rules) -> str:
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100}.{abs(minor) % 100:02d} {rules.currency}"


def _action_line(a: Action) -> str:
    what = a.kind.value
    if a.relay_action is not None:
        what += f" ({a.relay_action.value})"
    if a.level is not None:
        what += f" level {a.level}"
    return what


def explain(decision: Decision, account: AccountView, meter: MeterView, now: datetime, calendar: WorkCalendar,
            rules: Rules) -> str:
    local = calendar.local(now)
    day = calendar.day_type(local.date())
    holiday = calendar.holiday_name(local.date())
    unknown = f", status unknown: no official calendar for {local.year}" if calendar.is_unknown(local.date()) else ""
    lines = [
        f"Account {account.account_id}, meter {meter.meter_id}, rules '{rules.name}'",
        f"At {local:%a %Y-%m-%d %H:%M %Z} ({day}{unknown}{': ' + holiday if holiday else ''})",
        f"State: {account.state.value} -> {decision.state.value}",
        f"Credit: balance {_money(account.balance_minor, rules)}, available {_money(account.available_minor, rules)}, "
        f"cut at or below {_money(rules.disconnect.at_or_below_minor, rules)}, "
        f"reconnect at {_money(rules.reconnect.threshold_minor, rules)}",
    ]
    if decision.notice_served_at is not None:
        lines.append(f"Notice issued: {_when(decision.notice_served_at, calendar)}")
        delivered = decision.notice_delivered_at
        lines.append(f"Notice delivered: {_when(delivered, calendar)}" if delivered is not None
                     else "Notice delivered: not confirmed (no cut until it is)")
    if decision.earliest_cut_at is not None:
        lines.append(f"Earliest cut: {_when(decision.earliest_cut_at, calendar)}")
    lines.append("Actions now:" if decision.actions else "Actions now: none")
    for a in decision.actions:
        lines.append(f"  - {_action_line(a)}: {a.message or ''}".rstrip(": "))
        lines.extend(f"      {'ok ' if c.passed else 'NO '} {c.rule}: {c.detail}" for c in a.trace)
    for a in decision.blocked:
        failing = [c for c in a.trace if not c.passed]
        names = ", ".join(dict.fromkeys(c.rule for c in failing)) or "rules"
        lines.append(f"Blocked: {_action_line(a)} by {names}; allowed from {_when(a.not_before, calendar)}")
        lines.extend(f"      {'ok ' if c.passed else 'NO '} {c.rule}: {c.detail}" for c in a.trace)
    if decision.next_review_at is not None:
        lines.append(f"Next review: {_when(decision.next_review_at, calendar)}")
    return "\n".join(lines)
