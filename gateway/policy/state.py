"""The values a policy decision is made of: states, actions and the rule checks behind them.

All frozen: a decision is evidence (invariant 4, every relay action has its rule trace), so nothing
may change it after the fact.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from drivers.base import RelayAction


class EnforcementState(enum.StrEnum):
    """Where an account stands on the way from credit to cut and back.

    ``notice_served``, ``load_limited``, ``disconnected`` and ``reconnection_pending`` form the *cut
    track*: an account leaves it only when credit reaches the reconnect threshold (hysteresis).
    """

    NORMAL = "normal"
    WARNING_1 = "warning_1"
    WARNING_2 = "warning_2"
    WARNING_3 = "warning_3"
    NOTICE_SERVED = "notice_served"
    LOAD_LIMITED = "load_limited"
    DISCONNECTED = "disconnected"
    RECONNECTION_PENDING = "reconnection_pending"


CUT_TRACK = frozenset(
    {
        EnforcementState.NOTICE_SERVED,
        EnforcementState.LOAD_LIMITED,
        EnforcementState.DISCONNECTED,
        EnforcementState.RECONNECTION_PENDING,
    }
)
WARNING_STATES = (
    EnforcementState.NORMAL,
    EnforcementState.WARNING_1,
    EnforcementState.WARNING_2,
    EnforcementState.WARNING_3,
)


class ActionKind(enum.StrEnum):
    WARN = "warn"
    OFFER_EMERGENCY_CREDIT = "offer_emergency_credit"
    SERVE_NOTICE = "serve_notice"  # issue the notice; it counts once delivered (``notice_delivered_at``)
    NOTICE_UNDELIVERED = "notice_undelivered"  # issued, delivery not confirmed in time: alarm the head office
    NOTICE_LAPSED = "notice_lapsed"  # delivered too long ago to justify a cut: a fresh notice is needed
    SEND_REMINDER = "send_reminder"
    LOAD_LIMIT = "load_limit"  # level = cap in W
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"  # restore full supply: close if relay_action is set, lift any load limit
    # Credit ran out again before the customer reclosed after a close-permitted (1B) command: take the
    # permission back with a trip.  Only ever issued while the relay reads open, so no supply is cut.
    WITHDRAW_RECONNECT = "withdraw_reconnect"
    ALARM = "alarm"  # relay_action ALARM_ON: the meter's buzzer; None: an alarm to the head office
    ESCALATE = "escalate"
    SET_KEEP_POWER = "set_keep_power"
    CLEAR_KEEP_POWER = "clear_keep_power"


@dataclass(frozen=True)
class RuleCheck:
    """One rule consulted: its name (``windows.hours``, ``notice.period``…), outcome and why."""

    rule: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    relay_action: RelayAction | None
    level: int | None
    message: str | None
    trace: tuple[RuleCheck, ...]
    not_before: datetime | None = None  # for a blocked action: when it may become allowed (None: never by itself)


@dataclass(frozen=True)
class Decision:
    """The outcome of one ``decide`` call.

    ``state`` is the state once ``actions`` are carried out.  The bookkeeping fields are what the
    caller persists once the actions are delivered: ``warnings_sent`` and ``alerts_sent`` make
    repeated decisions idempotent, ``notice_served_at`` (when the notice was issued),
    ``notice_delivered_at`` and ``reminder_sent_at`` are ``None`` when the cut track was left.
    ``earliest_cut_at`` is when a cut may happen if nothing changes.
    """

    state: EnforcementState
    actions: tuple[Action, ...]
    blocked: tuple[Action, ...]
    next_review_at: datetime | None
    trace: tuple[RuleCheck, ...]
    state_since: datetime
    notice_served_at: datetime | None
    reminder_sent_at: datetime | None
    earliest_cut_at: datetime | None
    notice_delivered_at: datetime | None = None
    warnings_sent: Mapping[int, datetime] = field(default_factory=dict)
    alerts_sent: Mapping[str, datetime] = field(default_factory=dict)

    def kinds(self) -> tuple[ActionKind, ...]:
        return tuple(a.kind for a in self.actions)
