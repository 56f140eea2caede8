"""The pay-before-use decision: one pure function from a snapshot to actions with their rule traces.

No I/O and no clock: ``now`` is an argument, so the same inputs always give the same decision and a
test can walk a week of enforcement in microseconds.  Idempotence comes from the bookkeeping the
caller persists (``warnings_sent``, ``alerts_sent``, notice and reminder times, the state): a second
call after the caller applied a decision emits nothing new.

Order of precedence, most protective first: keep-power (no trip at all) > protected customer (no
automatic cut) > manual connect override > notice > reminder > protected windows and holds.
Reconnection ignores windows and holds: power comes back at any hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from drivers.base import RelayAction, RelayState
from gateway.core.calendar import WorkCalendar
from gateway.policy.credit import (
    EMERGENCY_OFFER_KEY,
    EMERGENCY_USED_UP_KEY,
    credit_position,
    emergency_credit_granted,
    offer_allowed,
)
from gateway.policy.draft import Draft
from gateway.policy.gates import gates
from gateway.policy.inputs import AccountView, Hold, MeterView, Override
from gateway.policy.rules import Rules
from gateway.policy.state import (
    CUT_TRACK,
    WARNING_STATES,
    Action,
    ActionKind,
    Decision,
    EnforcementState,
    RuleCheck,
)
from gateway.policy.texts import MoneyFormat

S = EnforcementState
K = ActionKind

RELAY_OPEN_ALARM = "alarm.relay_open_in_good_standing"
NOTICE_UNDELIVERED_KEY = "notice.undelivered"

__all__ = ["AccountView", "Action", "ActionKind", "Decision", "Hold", "MeterView", "Override", "apply", "decide"]


def _grade(account: AccountView, rules: Rules, exhausted: bool) -> int:
    if exhausted:
        return 3
    for level, lv in reversed(list(enumerate(rules.warnings.levels(), start=1))):
        by_money = lv.balance_at_or_below_minor is not None and account.balance_minor <= lv.balance_at_or_below_minor
        days = account.days_of_credit_left
        by_days = lv.days_left_at_or_below is not None and days is not None and days <= lv.days_left_at_or_below
        if by_money or by_days:
            return level
    return 0


def _close_action(rules: Rules) -> RelayAction:
    return RelayAction.DIRECT_CLOSE if rules.reconnect.mode == "direct_close" else RelayAction.CLOSE_PERMITTED


def decide(
    account: AccountView,
    meter: MeterView,
    now: datetime,
    calendar: WorkCalendar,
    rules: Rules,
    *,
    holds: Sequence[Hold] = (),
    overrides: Sequence[Override] = (),
    money: MoneyFormat | None = None,
) -> Decision:
    """What to do for one account and its meter at ``now`` (aware), and what the rules hold back.

    ``money``: the gateway's configured currency and minor digits, for the figures in customer texts;
    without it, the preset's currency in cents (as ``pmg explain`` does without a configuration).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"decide: naive datetime {now.isoformat()} (an aware UTC instant is required)")
    d = Draft(account, meter, now, calendar, rules, tuple(holds), account.state,
               money or MoneyFormat(rules.currency, 2),
               notice_served_at=account.notice_served_at, notice_delivered_at=account.notice_delivered_at,
               reminder_sent_at=account.reminder_sent_at,
               warnings_sent=dict(account.warnings_sent), alerts_sent=dict(account.alerts_sent))
    _mirror_keep_power(d)
    targets = {meter.meter_id, account.account_id}
    live = [o for o in overrides if o.target in targets and o.expires_at > now]
    connect = next((o for o in sorted(live, key=lambda o: o.expires_at) if o.action == "connect"), None)
    cut_order = None if connect else next((o for o in live if o.action == "disconnect"), None)
    for o in live:
        d.reviews.append(o.expires_at)
    if connect and any(o.action == "disconnect" for o in live):
        d.check("override.conflict", True, "connect and disconnect overrides both active: connect wins")

    # The emergency-credit offer is settled before anything is measured against the cut threshold, so
    # the decision that offers it never cuts (gateway.policy.credit; docs/enforcement.md).
    c = credit_position(account, rules,
                        may_offer=offer_allowed(account, meter, rules, cut_order=cut_order is not None))
    available = d.available_minor = c.available_minor
    exhausted = c.exhausted
    credit = d.check("credit.exhausted", exhausted,
                     f"available {available} (balance {account.balance_minor}"
                     f"{f' + emergency {account.emergency_credit_minor}' if available != account.balance_minor else ''})"
                     f" vs cut threshold {rules.disconnect.at_or_below_minor}")
    if c.newly_used_up:
        d.check(EMERGENCY_USED_UP_KEY, True, f"emergency credit {account.emergency_credit_minor} used up: only "
                                             "the balance counts until the reconnect threshold "
                                             f"{rules.reconnect.threshold_minor} is reached")
        d.alerts_sent[EMERGENCY_USED_UP_KEY] = now
    reconnect = d.check("reconnect.threshold", c.reconnects,
                        f"balance {account.balance_minor} vs reconnect threshold {rules.reconnect.threshold_minor}"
                        + (" (emergency credit active)" if c.by_emergency and not c.by_balance else "")
                        + (" (emergency credit used up)" if c.used_up and not c.by_balance else ""))
    protected = account.protected or (account.protected_category in rules.protected.categories)
    prot = d.check("protected.customer", not protected,
                   f"protected ({account.protected_category or 'flagged'})" if protected else "not protected")

    state = account.state
    if state is S.RECONNECTION_PENDING and meter.relay is RelayState.CLOSED:
        d.check("relay.readback", True, "relay reads closed: reconnection complete")
        if reconnect.passed:
            state = d.state = S.NORMAL
        else:  # closed on a manual order while credit is still short: back on the cut track
            state = d.state = S.NOTICE_SERVED if account.notice_served_at else S.WARNING_3
    if state is S.RECONNECTION_PENDING:
        d.check("relay.readback", False, f"waiting for the relay to close (reads {meter.relay or 'unknown'})")
        if cut_order:
            _manual_cut(d, cut_order, protected, prot)
        elif exhausted and not reconnect.passed and connect is None:
            _withdraw_reconnect(d, protected, prot, credit, reconnect)
        elif meter.close_failed and meter.pending_relay_action is None and (reconnect.passed or connect):
            # The close was refused or unanswered (e.g. sent under a clock the meter did not accept):
            # without this the account would wait for a relay that nobody asks to close.
            _reconnect(d, [reconnect, d.check("relay.close_failed", True, "the last close failed: asked again")])
    elif state is S.DISCONNECTED:
        _while_disconnected(d, reconnect, connect, cut_order, protected, prot, exhausted, credit,
                            fresh=c.by_balance)
    elif cut_order:
        _manual_cut(d, cut_order, protected, prot)
    else:
        _supply_on(d, exhausted, reconnect, protected, prot, connect, credit, fresh=c.by_balance)
    if c.offer:
        _offer_emergency_credit(d, credit)

    future = [t for t in d.reviews if t > now]
    return Decision(
        state=d.state,
        actions=tuple(d.actions),
        blocked=tuple(d.blocked),
        next_review_at=min(future) if future else None,
        trace=tuple(d.trace),
        state_since=account.state_since if d.state is account.state else now,
        notice_served_at=d.notice_served_at,
        reminder_sent_at=d.reminder_sent_at,
        earliest_cut_at=d.earliest_cut_at,
        notice_delivered_at=d.notice_delivered_at,
        warnings_sent=d.warnings_sent,
        alerts_sent=d.alerts_sent,
    )


def _mirror_keep_power(d: Draft) -> None:
    m = d.meter
    if not m.supports_keep_power:
        return
    on = m.keep_power_on_meter
    if on is m.keep_power or (on is None and not m.keep_power):
        return
    relay = RelayAction.KEEP_POWER_ON if m.keep_power else RelayAction.KEEP_POWER_OFF
    rc = d.check("keep_power.mirror", True,
                 f"configured keep-power {m.keep_power}, meter reports {on if on is not None else 'unknown'}")
    if m.pending_relay_action is relay:
        d.check("relay.pending", True, f"{relay} already pending on the meter: not issued again")
        return
    d.act(K.SET_KEEP_POWER if m.keep_power else K.CLEAR_KEEP_POWER, [rc], relay=relay)


def _reconnect(d: Draft, why: Sequence[RuleCheck], *, new_cycle: bool = False) -> None:
    """Restore supply now: no window, hold or hour applies to giving power back.

    ``new_cycle``: credit was restored, so warnings, notice and alerts start afresh.
    """
    m = d.meter
    trace = [*why, d.check("windows", True, "protected windows and holds do not apply to reconnection")]
    if not m.controllable and m.relay is RelayState.CLOSED:
        d.check("relay.readback", True, "relay reads closed: supply is on")
        if new_cycle:
            d.reset_cycle()
        d.state = S.NORMAL
        return
    if not m.controllable:
        if d.once("alarm.reconnect_not_controllable"):
            d.act(K.ALARM, [*trace, d.check("meter.controllable", False, "meter has no relay we can operate")],
                  message="reconnect due but the meter is not controllable")
        return
    if new_cycle:
        d.reset_cycle()
    relay = _close_action(d.rules) if m.relay is not RelayState.CLOSED else None
    if relay is not None and m.pending_relay_action is relay:
        d.check("relay.pending", True, f"{relay} already pending on the meter: not issued again")
    else:
        if m.pending_relay_action is RelayAction.TRIP:
            trace.append(d.check("relay.pending", True, "supersedes the pending trip"))
        d.act(K.RECONNECT, trace, relay=relay, message=f"reconnect ({relay or 'lift load limit'})")
    d.state = S.RECONNECTION_PENDING if relay is not None else S.NORMAL


def _while_disconnected(d: Draft, reconnect: RuleCheck, connect: Override | None, cut_order: Override | None,
                        protected: bool, prot: RuleCheck, exhausted: bool, credit: RuleCheck, *,
                        fresh: bool) -> None:
    """``fresh``: the balance alone reaches the reconnect threshold, so a reconnect starts a new cycle;
    a reconnect on emergency credit keeps the cycle (and with it the offer that granted the credit)."""
    if cut_order:
        rc = d.check("override.disconnect", False, "manual ", *cut_order.label())
        d.block(K.RECONNECT, [reconnect, rc], cut_order.expires_at)
        if d.meter.relay is RelayState.CLOSED:
            _manual_cut(d, cut_order, protected, prot)
        return
    if connect:
        _reconnect(d, [d.check("override.connect", True, "manual ", *connect.label())])
        return
    if reconnect.passed:
        _reconnect(d, [reconnect], new_cycle=fresh)
        return
    d.block(K.RECONNECT, [reconnect], None, message="reconnects as soon as the balance reaches the threshold")
    if d.meter.relay is RelayState.CLOSED and exhausted:
        # Closed behind our back (by hand, or a meter that ignored the trip): cut again, lawfully.
        d.check("relay.readback", False, "relay reads closed while disconnected")
        _automatic_restriction(d, protected, prot, None, credit)


def _withdraw_reconnect(d: Draft, protected: bool, prot: RuleCheck, credit: RuleCheck,
                        reconnect: RuleCheck) -> None:
    """Credit ran out again before the relay closed: take a close permission (1B) back.

    Only while the relay reads open, so the trip cuts no supply (windows and notice protect a
    supply that is on; this one is off).  The enforcer reads the relay again just before sending
    (``relay.only_if_open``) in case the customer pressed the button in between.  A relay that
    closed meanwhile goes the lawful way: back on the cut track with notice and windows.
    """
    m = d.meter
    why = [credit, reconnect]
    if m.keep_power or protected or not m.controllable or m.relay is not RelayState.OPEN:
        reason = ("keep-power (保电) forbids any trip" if m.keep_power else prot.detail if protected
                  else "no relay to operate" if not m.controllable else f"relay reads {m.relay or 'unknown'}")
        d.block(K.WITHDRAW_RECONNECT, [*why, d.check("reconnect.withdraw", False, reason)], None,
                relay=RelayAction.TRIP)
        return
    rc = d.check("relay.only_if_open", True, "relay reads open: withdrawing the permission cuts no supply")
    d.act(K.WITHDRAW_RECONNECT, [*why, rc], relay=RelayAction.TRIP,
          message="close permission withdrawn: credit ran out before the customer reclosed")
    d.state = S.DISCONNECTED


def _supply_on(d: Draft, exhausted: bool, reconnect: RuleCheck, protected: bool, prot: RuleCheck,
               connect: Override | None, credit: RuleCheck, *, fresh: bool) -> None:
    a = d.account
    m = d.meter
    if m.relay is RelayState.CLOSED:
        d.alerts_sent.pop(RELAY_OPEN_ALARM, None)  # a later unexplained opening alarms again
    if (not exhausted and d.state not in CUT_TRACK and m.relay is RelayState.OPEN
            and m.pending_relay_action is not RelayAction.TRIP):
        # Open without a cut of ours (meter self-trip, tamper, a lost command): alarm and restore.
        rc = d.check("relay.readback", False, "relay reads open while the account is in good standing")
        if d.once(RELAY_OPEN_ALARM):
            d.act(K.ALARM, [credit, rc], message="relay reads open while the account is in good standing")
        _reconnect(d, [credit, rc])
        return
    in_track = d.state in CUT_TRACK
    if in_track and reconnect.passed:
        d.check("cut_track.left", True, "credit restored: notice withdrawn")
        if d.state is S.LOAD_LIMITED:
            _reconnect(d, [reconnect], new_cycle=fresh)
            if d.state is S.LOAD_LIMITED:
                return  # the cap cannot be lifted from here: the alarm says so
        elif fresh:
            d.reset_cycle()
        else:  # on emergency credit: off the cut track, but the cycle (and its offer) goes on
            d.notice_served_at = d.reminder_sent_at = None
        in_track = False
    if connect and d.state is S.LOAD_LIMITED:
        _reconnect(d, [d.check("override.connect", True, "manual ", *connect.label())])
        return
    if in_track and not exhausted:
        d.check("cut_track.hold", True, "credit above the cut threshold but below the reconnect threshold: state held")
        return
    if not in_track:
        grade = _grade(a, d.rules, exhausted)
        d.state = WARNING_STATES[grade] if d.state is not S.RECONNECTION_PENDING else d.state
        if grade == 0:
            d.reset_cycle()
        else:
            _warn(d, grade)
    if exhausted and d.state is not S.RECONNECTION_PENDING:
        _automatic_restriction(d, protected, prot, connect, credit)


def _warn(d: Draft, grade: int) -> None:
    lv = d.rules.warnings.levels()[grade - 1]
    if grade not in d.warnings_sent:
        rc = d.check(f"warnings.level_{grade}", True,
                     f"balance {d.account.balance_minor}, days left {d.account.days_of_credit_left}")
        text = lv.message(d.money_values(), d.account.days_of_credit_left)
        d.act(K.WARN, [rc], level=grade, message=f"{lv.message_id}: {text}")
        d.warnings_sent[grade] = d.now


def _offer_emergency_credit(d: Draft, credit: RuleCheck) -> None:
    """Offer (and so grant) emergency credit: made once a cycle, before any cut (gateway.policy.credit)."""
    ec, amount = d.rules.emergency_credit, d.account.emergency_credit_minor
    rc = d.check("emergency_credit", True,
                 f"balance {d.account.balance_minor} at or below the cut threshold: {amount} offered and granted")
    text = ec.offer_text(d.money_values(), d.money.amount(amount))
    d.act(K.OFFER_EMERGENCY_CREDIT, [credit, rc], level=amount, message=f"{ec.message_id}: {text}")
    d.alerts_sent[EMERGENCY_OFFER_KEY] = d.now


def _automatic_restriction(d: Draft, protected: bool, prot: RuleCheck, connect: Override | None,
                           credit: RuleCheck) -> None:
    """Credit is exhausted: serve notice, then load-limit and/or cut once every rule allows it."""
    r, m, now = d.rules, d.meter, d.now
    base = [credit]
    if r.notice.required:
        _notice(d, credit)
    if protected and d.once("escalate.protected"):
        d.act(K.ESCALATE, [credit, prot], message=f"{r.protected.escalate_message_id}: credit exhausted")
    if m.keep_power:
        # Power caps are enforced by tripping on overload, so keep-power forbids them too.
        d.block(K.DISCONNECT, [*base, d.check("keep_power", False, "keep-power (保电) forbids any trip")],
                None, relay=RelayAction.TRIP)
        return
    limited = d.state is S.LOAD_LIMITED
    ll_allowed = r.protected.allow_load_limit if protected else r.load_limit.enabled
    if not limited and ll_allowed and m.supports_load_limit and m.controllable:
        rc = d.check("load_limit", True, f"cap at {r.load_limit.power_w} W before any cut")
        ok, not_before, trace = gates(d, [*base, rc], connect, cut=False)
        if ok:
            d.act(K.LOAD_LIMIT, trace, level=r.load_limit.power_w, message="life-line power cap")
            d.state = S.LOAD_LIMITED
        else:
            d.block(K.LOAD_LIMIT, trace, not_before, level=r.load_limit.power_w)
        final = protected or r.load_limit.instead_of_cut or not_before is None
        cut_after = None if final or not_before is None else not_before + r.load_limit.before_cut
        d.block(K.DISCONNECT, [*base, d.check("load_limit.first", False, "the power cap comes before any cut")],
                cut_after, relay=RelayAction.TRIP)
        return
    if protected:
        d.block(K.DISCONNECT, [*base, d.check("protected.no_automatic_cut", False,
                                              "protected customers are never cut automatically; escalated")],
                None, relay=RelayAction.TRIP)
        return
    if limited and r.load_limit.instead_of_cut:
        d.block(K.DISCONNECT, [*base, d.check("load_limit.instead_of_cut", False, "the power cap is the last step")],
                None, relay=RelayAction.TRIP)
        return
    ok, not_before, trace = gates(d, base, connect, cut=True)
    d.earliest_cut_at = now if ok else not_before
    if not ok:
        d.block(K.DISCONNECT, trace, not_before, relay=RelayAction.TRIP)
    elif not m.controllable:
        d.block(K.DISCONNECT, [*trace, d.check("meter.controllable", False, "no relay to operate")], None,
                relay=RelayAction.TRIP)
        if d.once("alarm.cut_not_controllable"):
            d.act(K.ALARM, trace, message="cut due but the meter is not controllable: head office must act")
    elif m.relay is RelayState.OPEN:
        d.check("relay.readback", True, "relay already open")
        d.state = S.DISCONNECTED
    elif m.pending_relay_action is RelayAction.TRIP:
        d.check("relay.pending", True, "trip already pending on the meter: not issued again")
        d.state = S.DISCONNECTED
    else:
        d.act(K.DISCONNECT, trace, relay=RelayAction.TRIP, message="disconnect for non-payment")
        d.state = S.DISCONNECTED


def _notice(d: Draft, credit: RuleCheck) -> None:
    """Issue the notice, watch for its delivery, and let a stale one lapse into a fresh one.

    Only a *delivered* notice counts (the gates run the period from delivery): an issued notice is
    delivered when the head office confirms it (``notice`` command) or, where the rules say the
    meter's display is delivery, as it is issued.  An undelivered notice is alarmed once after
    ``escalate_after``; a delivered one older than ``valid_for`` no longer justifies a cut.
    """
    n, now = d.rules.notice, d.now
    delivered = d.notice_delivered_at
    if delivered is not None and n.valid_for is not None and now >= delivered + n.valid_for:
        rc = d.check("notice.valid_for", False, "notice delivered ", delivered,
                     f" lapsed after {n.valid_for}: a fresh notice is needed")
        d.act(K.NOTICE_LAPSED, [credit, rc], message=f"{n.message_id} delivered {delivered:%Y-%m-%d %H:%M}Z lapsed")
        d.notice_served_at = d.notice_delivered_at = d.reminder_sent_at = None
        d.alerts_sent.pop(NOTICE_UNDELIVERED_KEY, None)
    if d.notice_served_at is None:
        how = "delivered by the meter display" if n.delivery == "meter_display" else "served once delivery is confirmed"
        rc = d.check("notice.required", True, f"issue notice ({how}); cut not before {n.period} after delivery")
        d.act(K.SERVE_NOTICE, [credit, rc], message=f"{n.message_id}: {n.notice_text(d.money_values())}")
        d.notice_served_at = now
        if n.delivery == "meter_display":
            d.notice_delivered_at = now
        if d.state is not S.LOAD_LIMITED:
            d.state = S.NOTICE_SERVED
    issued = d.notice_served_at
    if d.notice_delivered_at is None and issued is not None:
        due = issued + n.escalate_after
        if now < due:
            d.reviews.append(due)
        elif d.once(NOTICE_UNDELIVERED_KEY):
            rc = d.check("notice.delivered", False, "notice issued ", issued,
                         f", no delivery confirmed within {n.escalate_after}")
            d.act(K.NOTICE_UNDELIVERED, [credit, rc],
                  message=f"notice_undelivered: {n.message_id} issued {issued:%Y-%m-%d %H:%M}Z "
                          "not confirmed delivered; no cut until it is")


def _manual_cut(d: Draft, order: Override, protected: bool, prot: RuleCheck) -> None:
    """A head-office or technician order: windows and notice do not apply; keep-power and protection do."""
    m = d.meter
    rc = d.check("override.disconnect", True, "manual ", *order.label(), "; windows and notice do not apply")
    if m.keep_power:
        d.block(K.DISCONNECT, [rc, d.check("keep_power", False, "keep-power (保电) forbids any trip")],
                order.expires_at, relay=RelayAction.TRIP)
        return
    if protected and not order.allow_protected:
        d.block(K.DISCONNECT, [rc, prot, d.check("override.allow_protected", False,
                                                 "the order does not say allow_protected")],
                order.expires_at, relay=RelayAction.TRIP)
        if d.once("escalate.manual_cut_protected"):
            d.act(K.ESCALATE, [rc, prot], message="manual cut refused: protected customer")
        return
    trace = [rc, prot]
    if protected:
        trace.append(d.check("override.allow_protected", True, f"protected customer cut on {order.actor}'s order"))
    if not m.controllable:
        d.block(K.DISCONNECT, [*trace, d.check("meter.controllable", False, "no relay to operate")], None,
                relay=RelayAction.TRIP)
        if d.once("alarm.manual_cut_not_controllable"):
            d.act(K.ALARM, trace, message="manual cut ordered but the meter is not controllable")
        return
    d.state = S.DISCONNECTED
    if m.relay is RelayState.OPEN:
        d.check("relay.readback", True, "relay already open")
    elif m.pending_relay_action is RelayAction.TRIP:
        d.check("relay.pending", True, "trip already pending on the meter: not issued again")
    else:
        d.act(K.DISCONNECT, trace, relay=RelayAction.TRIP, message=f"manual disconnect: {order.reason}")


def apply(account: AccountView, decision: Decision) -> AccountView:
    """The account as it stands once ``decision``'s actions were delivered (for callers and tests).

    Emergency credit follows the decision's alerts (offered and not used up), as the daemon's snapshot
    derives it (``gateway.policy.credit.emergency_credit_granted``).
    """
    return replace(
        account,
        emergency_credit_active=emergency_credit_granted(account.emergency_credit_minor, True,
                                                         decision.alerts_sent),
        state=decision.state,
        state_since=decision.state_since,
        notice_served_at=decision.notice_served_at,
        notice_delivered_at=decision.notice_delivered_at,
        reminder_sent_at=decision.reminder_sent_at,
        warnings_sent=dict(decision.warnings_sent),
        alerts_sent=dict(decision.alerts_sent),
    )
