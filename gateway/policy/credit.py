"""Where an account's credit stands against the rules: emergency credit, the cut and the reconnect test.

One pure computation shared by ``decide`` and by ``payment_outcome`` (what a payment tells the payer),
so the two can never disagree about thresholds.  Semantics (docs/enforcement.md, "Emergency credit"):

* Emergency credit is **offered before any cut**: when the balance reaches the cut threshold and the
  account has an emergency-credit amount (> 0, and the rules enable it), the offer is made and the
  amount is granted in the *same* decision.  The gateway cannot see the customer press "A" on the
  meter, so the offer is the grant; available credit is computed *after* it, and the decision that
  offers never cuts.
* Taken emergency credit keeps supply on: it stays granted for the rest of the cycle (until the
  balance reaches the reconnect threshold), and it never starts a new cycle by itself.
* Emergency credit is lent **once per cycle**.  When balance plus emergency credit reaches the cut
  threshold it is *used up* (also when the balance fell that far before it could be offered): from
  then on only the balance counts, so a partial top-up that leaves the balance below the reconnect
  threshold does not lend it again (UK practice: supply returns once the emergency credit used plus
  the reconnect margin is repaid).

The two markers live in the account's one-shot alerts (``alerts_sent``), which the caller persists
and which a new cycle clears.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from drivers.base import RelayState
from gateway.policy.inputs import AccountView, MeterView
from gateway.policy.rules import Rules
from gateway.policy.state import EnforcementState

# Alert keys of the current cycle (``AccountView.alerts_sent``): the offer made (= credit granted),
# and the granted credit used up.
EMERGENCY_OFFER_KEY = "emergency_credit.offer"
EMERGENCY_USED_UP_KEY = "emergency_credit.used_up"


def emergency_credit_granted(amount_minor: int, enabled: bool, alerts: Mapping[str, datetime]) -> bool:
    """Whether the account runs on emergency credit now: offered this cycle and not yet used up.

    The snapshot's ``AccountView.emergency_credit_active``; a negative balance alone never grants it
    (that is arrears, or emergency credit already used up).
    """
    return enabled and amount_minor > 0 and EMERGENCY_OFFER_KEY in alerts and EMERGENCY_USED_UP_KEY not in alerts


@dataclass(frozen=True)
class Credit:
    """The credit tests of one decision, all in minor units."""

    amount_minor: int  # emergency credit the account may be lent (0: none, or the rules disable it)
    active: bool  # emergency credit counts now (granted earlier, or by this decision's offer)
    offer: bool  # this decision makes the offer (and so grants the credit)
    used_up: bool  # the emergency credit of this cycle is spent: only the balance counts
    newly_used_up: bool  # ...and this decision is the one that found it so
    available_minor: int  # balance plus emergency credit while active
    exhausted: bool  # available at or below the cut threshold
    by_balance: bool  # the balance alone reaches the reconnect threshold (a new cycle)
    by_emergency: bool  # supply may be restored on emergency credit (rules permitting)

    @property
    def reconnects(self) -> bool:
        return self.by_balance or self.by_emergency


def offer_allowed(account: AccountView, meter: MeterView, rules: Rules, *, cut_order: bool) -> bool:
    """Whether an emergency-credit offer may be made now: never under a manual disconnect order, and
    while supply is off only where taking emergency credit restores it (``reconnect.on_emergency_credit``)."""
    supply_off = (account.state in (EnforcementState.DISCONNECTED, EnforcementState.RECONNECTION_PENDING)
                  and meter.relay is not RelayState.CLOSED)
    return not cut_order and (not supply_off or rules.reconnect.on_emergency_credit)


def credit_position(account: AccountView, rules: Rules, *, may_offer: bool) -> Credit:
    """Credit against the cut and reconnect thresholds, with the emergency-credit offer if one is due.

    ``may_offer``: the caller allows an offer now (``offer_allowed``).  An offer is made only if it would actually
    lift available credit above the cut threshold — offering credit that cannot keep the lights on
    would only precede a cut.
    """
    ec = rules.emergency_credit
    cut = rules.disconnect.at_or_below_minor
    balance = account.balance_minor
    amount = account.emergency_credit_minor if ec.enabled else 0
    spent = EMERGENCY_USED_UP_KEY in account.alerts_sent
    granted = account.emergency_credit_active and account.emergency_credit_minor > 0 and not spent
    offer = (
        may_offer
        and amount > 0
        and not granted
        and not spent
        and EMERGENCY_OFFER_KEY not in account.alerts_sent
        and balance <= cut < balance + amount
    )
    active = granted or offer
    available = balance + (account.emergency_credit_minor if active else 0)
    exhausted = available <= cut
    # Used up once it cannot lift the balance above the cut threshold: spent if it was granted, and
    # forfeit for this cycle if the balance fell past it before it could be offered.
    newly_used_up = (
        not spent and (granted or amount > 0) and balance + account.emergency_credit_minor <= cut
    )
    return Credit(
        amount_minor=amount,
        active=active and not exhausted,
        offer=offer,
        used_up=spent or newly_used_up,
        newly_used_up=newly_used_up,
        available_minor=available,
        exhausted=exhausted,
        by_balance=balance >= rules.reconnect.threshold_minor,
        by_emergency=rules.reconnect.on_emergency_credit and active and not exhausted,
    )


def reconnect_shortfall_minor(account: AccountView, rules: Rules) -> int:
    """What the balance still needs to reach the reconnect threshold (0 if it does)."""
    return max(0, rules.reconnect.threshold_minor - account.balance_minor)
