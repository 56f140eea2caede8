"""What a payment means for the supply: restored, already on, or not yet — and why, and how much more.

Pure, like ``decide``, and built on the same credit computation (``gateway.policy.credit``) and the
same rules, so a receipt can never promise a reconnection the policy would not make.  It is asked
about the account *after* the payment was posted (and, in the daemon, after the account was
re-decided: a close already queued reads as ``restored``).  The reason codes are part of the MQTT
contract (docs/mqtt.md, "Payment outcome"; gateway/contract/ack.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from drivers.base import RelayAction, RelayState
from gateway.policy.credit import credit_position, offer_allowed
from gateway.policy.inputs import AccountView, MeterView, Override
from gateway.policy.rules import Rules
from gateway.policy.state import EnforcementState

Reason = Literal[
    "restored",  # supply was off (or capped); the rules restore it now (a close is or will be queued)
    "close_permitted",  # ...restored by a close permission (1B): the customer presses the meter's button
    "already_on",  # the relay reads closed and no cut is due on credit grounds
    "cut_still_due",  # supply is on, but credit is still at or below the cut threshold
    "below_reconnect_threshold",  # supply is off (or capped) and the balance is short of the threshold
    "manual_disconnect_order",  # a head-office or technician order keeps the supply off whatever is paid
    "meter_not_controllable",  # credit is enough, but the meter has no relay the gateway can close
    "no_meter",  # the account has no meter to supply
]
REASONS: tuple[str, ...] = Reason.__args__  # type: ignore[attr-defined]

_OFF_STATES = (EnforcementState.DISCONNECTED, EnforcementState.RECONNECTION_PENDING)
_CLOSES = (RelayAction.DIRECT_CLOSE, RelayAction.CLOSE_PERMITTED)


@dataclass(frozen=True)
class PaymentOutcome:
    """``on``: supply is on, or this payment restores it.  ``shortfall_minor``: how much more the
    account needs for the rules to restore (or keep) supply; 0 when nothing more is needed or money
    cannot help (a manual order, a meter that cannot be closed remotely)."""

    on: bool
    reason: Reason
    shortfall_minor: int
    meter_id: str | None = None


def _supply_off(account: AccountView, meter: MeterView) -> bool:
    if meter.relay is RelayState.OPEN:
        return True
    if meter.relay is RelayState.CLOSED:
        return account.state is EnforcementState.LOAD_LIMITED  # capped: full supply is not on
    return account.state in _OFF_STATES or account.state is EnforcementState.LOAD_LIMITED


def payment_outcome(
    account: AccountView,
    meter: MeterView,
    now: datetime,
    rules: Rules,
    *,
    overrides: Sequence[Override] = (),
) -> PaymentOutcome:
    """The supply outcome for ``account`` (balance including the payment) on ``meter`` at ``now``."""
    targets = {meter.meter_id, account.account_id}
    live = [o for o in overrides if o.target in targets and o.expires_at > now]
    connect = any(o.action == "connect" for o in live)
    order = not connect and any(o.action == "disconnect" for o in live)
    c = credit_position(account, rules, may_offer=offer_allowed(account, meter, rules, cut_order=order))
    to_reconnect = max(0, rules.reconnect.threshold_minor - account.balance_minor)
    mid = meter.meter_id

    def out(on: bool, reason: Reason, shortfall: int = 0) -> PaymentOutcome:
        return PaymentOutcome(on, reason, shortfall, mid)

    if order:
        return out(False, "manual_disconnect_order", 0 if c.reconnects else to_reconnect)
    if not _supply_off(account, meter):
        if c.exhausted and account.state is not EnforcementState.RECONNECTION_PENDING:
            return out(True, "cut_still_due", rules.disconnect.at_or_below_minor + 1 - c.available_minor)
        return out(True, "already_on")
    if not (c.reconnects or connect):
        return out(False, "below_reconnect_threshold", to_reconnect)
    if not meter.controllable and meter.relay is not RelayState.CLOSED:
        return out(False, "meter_not_controllable")
    closing = meter.pending_relay_action if meter.pending_relay_action in _CLOSES else None
    mode = closing or (RelayAction.DIRECT_CLOSE if rules.reconnect.mode == "direct_close"
                       else RelayAction.CLOSE_PERMITTED)
    return out(True, "close_permitted" if mode is RelayAction.CLOSE_PERMITTED else "restored")


def summarise(outcomes: Sequence[PaymentOutcome]) -> PaymentOutcome:
    """One outcome for an account with several meters: the first meter (by id) whose supply is not on,
    else the first one."""
    if not outcomes:
        return PaymentOutcome(False, "no_meter", 0, None)
    ordered = sorted(outcomes, key=lambda o: o.meter_id or "")
    return next((o for o in ordered if not o.on), ordered[0])
