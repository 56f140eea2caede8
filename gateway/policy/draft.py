"""The decision under construction: one ``decide`` call's scratch state and its trace helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from drivers.base import RelayAction
from gateway.core.calendar import WorkCalendar
from gateway.policy.inputs import AccountView, Hold, MeterView
from gateway.policy.rules import Rules
from gateway.policy.state import Action, ActionKind, EnforcementState, Part, RuleCheck
from gateway.policy.texts import MoneyFormat, money_values


@dataclass
class Draft:
    """The decision under construction; private to one ``decide`` call."""

    account: AccountView
    meter: MeterView
    now: datetime
    cal: WorkCalendar
    rules: Rules
    holds: Sequence[Hold]
    state: EnforcementState
    money: MoneyFormat  # the gateway's currency and minor digits, for the customer texts
    # Credit available as this decision computed it (with emergency credit its own offer grants).
    available_minor: int | None = None
    actions: list[Action] = field(default_factory=list)
    blocked: list[Action] = field(default_factory=list)
    trace: list[RuleCheck] = field(default_factory=list)
    reviews: list[datetime] = field(default_factory=list)
    notice_served_at: datetime | None = None
    notice_delivered_at: datetime | None = None
    reminder_sent_at: datetime | None = None
    earliest_cut_at: datetime | None = None
    warnings_sent: dict[int, datetime] = field(default_factory=dict)
    alerts_sent: dict[str, datetime] = field(default_factory=dict)

    def check(self, rule: str, passed: bool, detail: str, *more: Part) -> RuleCheck:
        """Record a rule consulted; ``more``: the rest of the text, instants kept as instants
        (``d.check("notice.period", ok, "ends ", end)``) so that a reader sees them in local time."""
        rc = RuleCheck.of(rule, passed, detail, *more) if more else RuleCheck(rule, passed, detail)
        self.trace.append(rc)
        return rc

    def act(self, kind: ActionKind, trace: Sequence[RuleCheck], *, relay: RelayAction | None = None,
            level: int | None = None, message: str | None = None) -> None:
        self.actions.append(Action(kind, relay, level, message, tuple(trace)))

    def block(self, kind: ActionKind, trace: Sequence[RuleCheck], not_before: datetime | None, *,
              relay: RelayAction | None = None, level: int | None = None, message: str | None = None) -> None:
        self.blocked.append(Action(kind, relay, level, message, tuple(trace), not_before))
        if not_before is not None and not_before > self.now:
            self.reviews.append(not_before)

    def money_values(self) -> dict[str, str]:
        """The account's figures as the customer texts state them (``gateway.policy.texts``)."""
        available = self.account.available_minor if self.available_minor is None else self.available_minor
        return money_values(self.account.balance_minor, available, self.money)

    def once(self, key: str) -> bool:
        """True the first time ``key`` is raised in this cycle (and records it)."""
        if key in self.alerts_sent:
            return False
        self.alerts_sent[key] = self.now
        return True

    def reset_cycle(self) -> None:
        self.warnings_sent.clear()
        self.alerts_sent.clear()
        self.notice_served_at = None
        self.notice_delivered_at = None
        self.reminder_sent_at = None
