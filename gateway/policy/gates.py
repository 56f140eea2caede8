"""Time gates for an automatic restriction: notice delivery, period and validity, power-cap duration,
windows, holds, reminder.

Each gate adds a ``RuleCheck`` to the trace; the result is whether the restriction may happen now
and, if not, the earliest instant it may (``None``: not by the passage of time alone).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.policy.draft import Draft
from gateway.policy.inputs import Override
from gateway.policy.state import ActionKind as K
from gateway.policy.state import EnforcementState as S
from gateway.policy.state import RuleCheck
from gateway.policy.windows import earliest_allowed

# A notice and a cut never leave in the same decision, even with a zero notice period.
NOTICE_DELIVERY_MARGIN = timedelta(minutes=1)


def gates(d: Draft, base: list[RuleCheck], connect: Override | None,
          *, cut: bool) -> tuple[bool, datetime | None, list[RuleCheck]]:
    """Time gates for an automatic restriction: (allowed now, earliest instant, trace)."""
    r, now = d.rules, d.now
    trace = list(base)
    start = now
    if connect:
        trace.append(d.check("override.connect", False, "manual ", *connect.label()))
        start = max(start, connect.expires_at)
    lapses_at: datetime | None = None
    if r.notice.required:
        delivered = d.notice_delivered_at
        if delivered is None:
            issued = d.notice_served_at or now
            trace.append(d.check("notice.delivered", False, "notice issued ", issued,
                                 ", delivery not confirmed: the period has not started"))
            return False, None, trace
        end = delivered + r.notice.period
        if delivered == now and d.account.notice_delivered_at is None:
            # Delivered in this very decision (meter display): the cut waits until it has been shown.
            end = max(end, now + NOTICE_DELIVERY_MARGIN)
        trace.append(d.check("notice.period", now >= end, "notice delivered ", delivered,
                             f", period {r.notice.period} ends ", end))
        start = max(start, end)
        if r.notice.valid_for is not None:
            lapses_at = delivered + r.notice.valid_for
    else:
        trace.append(d.check("notice.period", True, "no notice required by the rules"))
    if d.state is S.LOAD_LIMITED and cut:
        end = d.account.state_since + r.load_limit.before_cut
        trace.append(d.check("load_limit.before_cut", now >= end, "power cap since ", d.account.state_since))
        start = max(start, end)
    at, blockers = earliest_allowed(start, d.cal, r.windows, d.holds)
    for b in blockers:
        trace.append(d.check(b.rule, False, f"{b.detail}, until ", b.until) if b.until
                     else d.check(b.rule, False, f"{b.detail}, with no end set"))
    if at is None:
        return False, None, trace
    if not blockers:
        trace.append(d.check("windows", True, "outside every protected window and hold"))
    if _stale(d, at, lapses_at, trace):
        return False, None, trace
    if cut and r.notice.reminder_before > timedelta(0):
        at = reminder(d, at, trace)
        if at is None or _stale(d, at, lapses_at, trace):
            return False, None, trace
    return at <= now, at, trace


def _stale(d: Draft, at: datetime, lapses_at: datetime | None, trace: list[RuleCheck]) -> bool:
    """A restriction the notice no longer covers by ``at``: none happens on it; it lapses then."""
    if lapses_at is None or at < lapses_at:
        return False
    trace.append(d.check("notice.valid_for", False, "earliest allowed ", at, " is not before the notice lapses ",
                         lapses_at, ": a fresh notice is needed"))
    d.reviews.append(lapses_at)
    return True


def reminder(d: Draft, cut_at: datetime, trace: list[RuleCheck]) -> datetime | None:
    """Make sure a fresh reminder precedes the cut; returns the cut instant it allows."""
    n, now = d.rules.notice, d.now
    sent = d.reminder_sent_at
    if sent is not None and (d.notice_served_at is None or sent >= d.notice_served_at):
        at, _ = earliest_allowed(max(cut_at, sent + n.reminder_before), d.cal, d.rules.windows, d.holds)
        if at is not None and at <= sent + n.reminder_valid_for:
            trace.append(d.check("notice.reminder", at <= now, "reminder sent ", sent,
                                 f", {n.reminder_before} before the cut"))
            return at
    # The cut this reminder would announce, if it went out now:
    at_if_now, _ = earliest_allowed(max(cut_at, now + n.reminder_before), d.cal, d.rules.windows, d.holds)
    if at_if_now is None:
        return None
    if now >= cut_at - n.reminder_before and at_if_now <= now + n.reminder_valid_for:
        rc = d.check("notice.reminder", False, "reminder sent now; cut not before ", at_if_now)
        d.act(K.SEND_REMINDER, [*trace, rc], message=f"{n.reminder_message_id}: {n.reminder_message(d.money_values())}")
        d.reminder_sent_at = now
        trace.append(rc)
        return at_if_now
    due = max(cut_at, at_if_now) - n.reminder_before
    trace.append(d.check("notice.reminder", False, "reminder due ", due))
    d.reviews.append(due)
    return max(cut_at, at_if_now)
