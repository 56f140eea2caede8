"""What ``decide`` is told: an account, its meter, head-office holds and manual overrides.

Snapshots built by the caller from the ledger and the last read-back; the policy never reads
anything else.  Money is integer minor units; instants are aware datetimes (UTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from drivers.base import RelayAction, RelayState
from gateway.policy.state import EnforcementState


@dataclass(frozen=True)
class AccountView:
    account_id: str
    balance_minor: int  # negative while running on emergency credit
    emergency_credit_minor: int  # the amount granted, 0 if none
    emergency_credit_active: bool
    days_of_credit_left: Decimal | None
    protected: bool
    protected_category: str | None
    state: EnforcementState
    state_since: datetime
    notice_served_at: datetime | None = None  # when the notice was issued (by the policy)
    reminder_sent_at: datetime | None = None
    warnings_sent: Mapping[int, datetime] = field(default_factory=dict)
    # One-shot alerts of the current cycle (emergency credit offer, escalation, alarms), by key.
    alerts_sent: Mapping[str, datetime] = field(default_factory=dict)
    # When the issued notice reached the customer (head office confirmation, or the meter display
    # where the rules allow it); None while undelivered.  The notice period runs from here.
    notice_delivered_at: datetime | None = None

    @property
    def available_minor(self) -> int:
        """Credit the customer can still use: balance plus active emergency credit."""
        return self.balance_minor + (self.emergency_credit_minor if self.emergency_credit_active else 0)


@dataclass(frozen=True)
class MeterView:
    meter_id: str
    relay: RelayState | None  # last read-back; None if unknown
    controllable: bool
    supports_load_limit: bool
    supports_keep_power: bool
    keep_power: bool  # the configured 保电 flag: forbids any trip
    keep_power_on_meter: bool | None = None  # as read from the meter; None if unknown
    pending_relay_action: RelayAction | None = None
    # The meter's last close command failed (refused, or no answer, after every retry) and the
    # failed-command backoff has passed: reconnection is asked again rather than waited for forever.
    close_failed: bool = False


@dataclass(frozen=True)
class Hold:
    """A head-office hold on automatic cuts (weather, emergency), gateway-wide."""

    kind: str
    reason: str
    actor: str
    starts_at: datetime
    expires_at: datetime | None  # None: until cleared by command

    def active(self, at: datetime) -> bool:
        return self.starts_at <= at and (self.expires_at is None or at < self.expires_at)


@dataclass(frozen=True)
class Override:
    """A manual order from the head office or a technician, for one meter or account (``target``)."""

    target: str
    action: Literal["connect", "disconnect"]
    reason: str
    actor: str
    expires_at: datetime
    allow_protected: bool = False

    def label(self) -> tuple[str, datetime]:
        """For a rule check's text (``Draft.check``): the expiry stays an instant, shown in the reader's zone."""
        return f"{self.action} by {self.actor} ({self.reason}) until ", self.expires_at
