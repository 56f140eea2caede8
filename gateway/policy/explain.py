"""Human explanation of a decision: state, the rules that applied, what happens next and when.

Written for a technician or a call-centre agent answering "why is my power (not) off?": each blocked
action names the rule that holds it back and the local instant that rule stops applying.  Instants
and amounts are shown as everywhere else (``gateway.core.present``): local time with its offset, to
the second — the instants inside rule traces too, which the pure policy keeps as instants
(``RuleCheck.parts``) — and money in the site's configured currency and minor digits; the preset's
own ``currency`` is only a default (``generic`` has none: ``XXX``, ISO 4217's "no currency").
"""

from __future__ import annotations

from datetime import datetime

from gateway.core.calendar import WorkCalendar
from gateway.core.present import Presenter
from gateway.policy.inputs import AccountView, MeterView
from gateway.policy.rules import Rules
from gateway.policy.state import Action, Decision, RuleCheck


def _when(t: datetime | None, show: Presenter) -> str:
    if t is None:
        return "not by itself (needs a payment or a head-office decision)"
    weekday = t.astimezone(show.tz).strftime("%a")  # the local weekday, the day a protected window follows
    return f"{weekday} {show.when(t)}"


def _check_line(c: RuleCheck, show: Presenter) -> str:
    """One rule of a trace, its instants in the site's zone like every other instant here."""
    return f"      {'ok ' if c.passed else 'NO '} {c.rule}: {c.text(show.when)}"


def _action_line(a: Action) -> str:
    what = a.kind.value
    if a.relay_action is not None:
        what += f" ({a.relay_action.value})"
    if a.level is not None:
        what += f" level {a.level}"
    return what


def explain(decision: Decision, account: AccountView, meter: MeterView, now: datetime, calendar: WorkCalendar,
            rules: Rules, show: Presenter | None = None) -> str:
    """The decision as text.  ``show``: the site's zone, currency and minor digits (and whether the
    reader asked for UTC); without it, the calendar's zone and the preset's currency in cents."""
    show = show or Presenter(calendar.tz, rules.currency, 2)
    local = calendar.local(now)
    day = calendar.day_type(local.date())
    holiday = calendar.holiday_name(local.date())
    unknown = f", status unknown: no official calendar for {local.year}" if calendar.is_unknown(local.date()) else ""
    lines = [
        f"Account {account.account_id}, meter {meter.meter_id}, rules '{rules.name}'",
        f"At {_when(now, show)} ({day}{unknown}{': ' + holiday if holiday else ''})",
        f"State: {account.state.value} -> {decision.state.value}",
        f"Credit: balance {show.money(account.balance_minor)}, available {show.money(account.available_minor)}, "
        f"cut at or below {show.money(rules.disconnect.at_or_below_minor)}, "
        f"reconnect at {show.money(rules.reconnect.threshold_minor)}",
    ]
    if decision.notice_served_at is not None:
        lines.append(f"Notice issued: {_when(decision.notice_served_at, show)}")
        delivered = decision.notice_delivered_at
        lines.append(f"Notice delivered: {_when(delivered, show)}" if delivered is not None
                     else "Notice delivered: not confirmed (no cut until it is)")
    if decision.earliest_cut_at is not None:
        lines.append(f"Earliest cut: {_when(decision.earliest_cut_at, show)}")
    lines.append("Actions now:" if decision.actions else "Actions now: none")
    for a in decision.actions:
        lines.append(f"  - {_action_line(a)}: {a.message or ''}".rstrip(": "))
        lines.extend(_check_line(c, show) for c in a.trace)
    for a in decision.blocked:
        failing = [c for c in a.trace if not c.passed]
        names = ", ".join(dict.fromkeys(c.rule for c in failing)) or "rules"
        lines.append(f"Blocked: {_action_line(a)} by {names}; allowed from {_when(a.not_before, show)}")
        lines.extend(_check_line(c, show) for c in a.trace)
    if decision.next_review_at is not None:
        lines.append(f"Next review: {_when(decision.next_review_at, show)}")
    return "\n".join(lines)
