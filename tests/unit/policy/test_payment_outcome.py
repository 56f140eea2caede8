"""What a payment tells the payer about the supply (``gateway.policy.outcome``): each reason, and that
the outcome always agrees with what ``decide`` does with the same account (docs/enforcement.md,
"Payment outcome")."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from test_policy_properties import scenarios
from test_policy_scenarios import LONDON, UK, account, meter, utc

from drivers.base import RelayAction, RelayState
from gateway.policy.credit import EMERGENCY_OFFER_KEY, EMERGENCY_USED_UP_KEY
from gateway.policy.decide import apply, decide
from gateway.policy.inputs import Override
from gateway.policy.outcome import REASONS, PaymentOutcome, payment_outcome, summarise
from gateway.policy.state import ActionKind as K
from gateway.policy.state import EnforcementState as S
from gateway.sync.contract import load_schema

NOW = utc(2026, 12, 2, 11)
CLOSES = (RelayAction.DIRECT_CLOSE, RelayAction.CLOSE_PERMITTED)
OFF = meter(relay=RelayState.OPEN)


def test_each_reason() -> None:
    cut = account(-512, state=S.DISCONNECTED, emergency_credit_minor=500,
                  alerts_sent={EMERGENCY_OFFER_KEY: NOW, EMERGENCY_USED_UP_KEY: NOW})
    partial = replace(cut, balance_minor=-212)  # £3.00 paid after £5.12 of emergency credit
    assert payment_outcome(partial, OFF, NOW, UK) == PaymentOutcome(False, "below_reconnect_threshold", 312, "M1")
    assert payment_outcome(replace(cut, balance_minor=100), OFF, NOW, UK) == PaymentOutcome(True, "restored", 0, "M1")
    order = Override("M1", "disconnect", "tamper", "ho", NOW + timedelta(hours=1))
    assert payment_outcome(replace(cut, balance_minor=100), OFF, NOW, UK, overrides=[order]) == PaymentOutcome(
        False, "manual_disconnect_order", 0, "M1")
    assert payment_outcome(partial, OFF, NOW, UK, overrides=[order]).shortfall_minor == 312
    stuck = meter(relay=RelayState.OPEN, controllable=False)
    assert payment_outcome(replace(cut, balance_minor=100), stuck, NOW, UK).reason == "meter_not_controllable"
    assert payment_outcome(account(2_000), meter(), NOW, UK) == PaymentOutcome(True, "already_on", 0, "M1")
    # Supply still on (friendly-credit hours kept it on) but the balance is still at or below the cut threshold.
    on_but_short = account(-212, state=S.WARNING_3, emergency_credit_minor=500,
                           alerts_sent={EMERGENCY_OFFER_KEY: NOW, EMERGENCY_USED_UP_KEY: NOW})
    assert payment_outcome(on_but_short, meter(), NOW, UK) == PaymentOutcome(True, "cut_still_due", 213, "M1")
    # At 0.00 with emergency credit still to offer, the next decision offers it: no cut is due.
    assert payment_outcome(account(0, emergency_credit_minor=500), meter(), NOW, UK).reason == "already_on"
    cn = UK.model_copy(update={"reconnect": UK.reconnect.model_copy(update={"mode": "close_permitted"})})
    assert payment_outcome(replace(cut, balance_minor=100), OFF, NOW, cn).reason == "close_permitted"
    assert summarise([]) == PaymentOutcome(False, "no_meter", 0, None)
    both = [PaymentOutcome(True, "already_on", 0, "m1"), PaymentOutcome(False, "below_reconnect_threshold", 5, "m2")]
    assert summarise(both).meter_id == "m2"


def test_reasons_are_the_contract_enum() -> None:
    supply = load_schema("ack")["$defs"]["supply"]
    assert tuple(supply["properties"]["reason"]["enum"]) == REASONS
    assert set(supply["required"]) == {"on", "reason", "shortfall", "meter_id"}
    assert json.dumps(supply).count('"number"') == 0  # money is a string


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_outcome_agrees_with_the_decision_on_a_cut_account(s: tuple) -> None:
    """Off supply: "restored" exactly when ``decide`` queues a close; paying the shortfall restores it."""
    acc, m, now, cal, rules, holds, overrides = s
    acc = replace(acc, state=S.DISCONNECTED)
    m = replace(m, relay=RelayState.OPEN, pending_relay_action=None)
    o = payment_outcome(acc, m, now, rules, overrides=overrides)
    d = decide(acc, m, now, cal, rules, holds=holds, overrides=overrides)
    closes = any(a.kind is K.RECONNECT and a.relay_action in CLOSES for a in d.actions)
    assert (o.reason in ("restored", "close_permitted")) == closes, (o, d.kinds())
    assert o.on == closes
    assert o.shortfall_minor >= 0
    if o.reason == "below_reconnect_threshold":
        assert o.shortfall_minor > 0
        # The next payment meets the account as this decision left it (the daemon persists every
        # decision with the charge or payment that caused it): e.g. emergency credit found used up.
        acc = apply(acc, d)
        paid = replace(acc, balance_minor=acc.balance_minor + o.shortfall_minor)
        after = payment_outcome(paid, m, now, rules, overrides=overrides)
        assert after.reason in ("restored", "close_permitted", "meter_not_controllable"), after
        if m.controllable:
            again = decide(paid, m, now, cal, rules, holds=holds, overrides=overrides)
            assert any(a.kind is K.RECONNECT for a in again.actions)
            less = replace(acc, balance_minor=acc.balance_minor + o.shortfall_minor - 1)
            assert payment_outcome(less, m, now, rules, overrides=overrides).reason == "below_reconnect_threshold"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_already_on_means_no_automatic_cut_on_credit_grounds(s: tuple) -> None:
    acc, m, now, cal, rules, holds, overrides = s
    m = replace(m, relay=RelayState.CLOSED)
    acc = replace(acc, state=S.WARNING_3 if acc.state in (S.DISCONNECTED, S.RECONNECTION_PENDING) else acc.state)
    overrides = [o for o in overrides if o.action != "disconnect"]
    o = payment_outcome(acc, m, now, rules, overrides=overrides)
    if o.reason != "already_on":
        return
    d = decide(acc, m, now, cal, rules, holds=holds, overrides=overrides)
    assert K.DISCONNECT not in d.kinds() and not any(a.kind is K.DISCONNECT for a in d.blocked), d.kinds()


def test_outcome_of_the_chatter_case_matches_its_decisions() -> None:
    """£0.00 with £5 emergency credit on a weekday: the offer keeps supply on, so the outcome is already_on."""
    acc = account(0, emergency_credit_minor=500)
    d = decide(acc, meter(), NOW, LONDON, UK)
    assert d.kinds() == (K.WARN, K.OFFER_EMERGENCY_CREDIT) and not d.blocked
    assert payment_outcome(acc, meter(), NOW, UK).reason == "already_on"
