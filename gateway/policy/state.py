"""The values a policy decision is made of: states, actions and the rule checks behind them.

All frozen: a decision is evidence (invariant 4, every relay action has its rule trace), so nothing
may change it after the fact.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

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


Part = str | datetime  # a piece of a rule check's text: words, or an instant kept as an instant


def utc_minute(t: datetime) -> str:
    """An instant as the audit log's rule traces state it: UTC to the minute (``2026-11-30 10:00Z``)."""
    return f"{t.astimezone(UTC):%Y-%m-%d %H:%M}Z"


@dataclass(frozen=True)
class RuleCheck:
    """One rule consulted: its name (``windows.hours``, ``notice.period``…), outcome and why.

    ``detail`` is the text the audit log keeps (instants in UTC); ``parts`` is the same text with its
    instants kept as instants, so a reader's view (``pmg explain``) shows them in the site's zone
    without the pure policy knowing how things are presented.
    """

    rule: str
    passed: bool
    detail: str
    parts: tuple[Part, ...] = ()

    @classmethod
    def of(cls, rule: str, passed: bool, *parts: Part) -> RuleCheck:
        """A check whose text mentions instants: ``RuleCheck.of(rule, ok, "ends ", end)``."""
        return cls(rule, passed, cls._join(parts, utc_minute), tuple(parts))

    def text(self, when: Callable[[datetime], str] | None = None) -> str:
        """The detail with every instant written by ``when`` (UTC to the minute without it)."""
        return self.detail if when is None or not self.parts else self._join(self.parts, when)

    @staticmethod
    def _join(parts: tuple[Part, ...], when: Callable[[datetime], str]) -> str:
        return "".join(p if isinstance(p, str) else when(p) for p in parts)


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
