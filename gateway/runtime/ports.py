"""What each part may use of the running gateway — and nothing more.

Command handlers, scheduled jobs and views used to take the whole ``Gateway`` object, so each of
them could reach anything (including private methods) and each imported the daemon that imports
them: a cycle.  Here each names exactly what it uses, as a ``typing.Protocol``; the daemon
(``gateway.runtime.daemon.Gateway``) satisfies all of them, and a test satisfies one with a ten-line
fake (tests/unit/sync/test_command_ports.py).  Type-only imports keep this module free of cycles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.core.timeutil import Clock
    from gateway.ledger.payments import PaymentResult
    from gateway.runtime.bus import BusWorker
    from gateway.runtime.components import Components
    from gateway.runtime.timetrust import NtpProbe, TimeTrust
    from gateway.store.db import Store
    from gateway.sync.mqtt import MqttLink


class TimeGuardHost(Protocol):
    """What the time guard (``gateway.runtime.timeguard``) may use — and so what every caller of it needs:
    the clocks, the store, the policy, and a way to say something was committed."""

    @property
    def cfg(self) -> GatewayConfig: ...
    @property
    def store(self) -> Store: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def parts(self) -> Components: ...
    @property
    def time_monotonic(self) -> Callable[[], float] | None: ...
    @property
    def ntp_probe(self) -> NtpProbe | None: ...
    @property
    def timetrust(self) -> TimeTrust | None: ...
    @property
    def workers(self) -> Mapping[str, BusWorker]: ...
    @property
    def meter_ids(self) -> frozenset[str]:
        """The meters of the running configuration (a database row may outlive its meter)."""
        ...

    def notify_outbox(self) -> None:
        """Something was queued for the head office: wake the outbox pump."""
        ...

    def wake(self, *, enforcer: bool = True) -> None:
        """Something was committed: wake the outbox pump and (when a relay command may wait) the enforcer."""
        ...


class CommandContext(TimeGuardHost, Protocol):
    """What a head-office command handler (``gateway.sync.commands.handlers``) and the command
    processor (``gateway.sync.commands.processor``) may use."""

    @property
    def mqtt(self) -> MqttLink | None: ...

    def apply_payment(self, payment_id: str, account_id: str, amount_minor: int, *, source: str) -> PaymentResult:
        """Apply a payment and re-decide its account in the same transaction."""
        ...

    async def review_policy(self) -> None:
        """Re-decide every account (a gateway-wide input changed, e.g. a hold)."""
        ...

    async def review_meters(self, meter_ids: Iterable[str]) -> None:
        """Re-decide these meters only (an input of their account changed, e.g. an override)."""
        ...

    def witness_time(self, issued: datetime) -> None:
        """A signed command's ``issued_at`` is a witness on the gateway's clock (docs/mqtt.md)."""
        ...


class JobContext(TimeGuardHost, Protocol):
    """What a scheduled job (``gateway.runtime.jobs``: settlement, housekeeping, clock sync) may use."""

    @property
    def config_path(self) -> Path: ...
    @property
    def stopping(self) -> bool: ...

    def ended_now(self) -> datetime:
        """The instant up to which days may be settled: the wall clock, never past what the
        monotonic clock vouches for (gateway.runtime.timeguard.ended_now)."""
        ...


class StatusView(Protocol):
    """What the status snapshot (``gateway.runtime.status``) reads of the running daemon."""

    @property
    def cfg(self) -> GatewayConfig: ...
    @property
    def store(self) -> Store: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def monotonic(self) -> Callable[[], float]: ...
    @property
    def mqtt(self) -> MqttLink | None: ...
    @property
    def metrics(self) -> Any: ...
    @property
    def timetrust(self) -> TimeTrust | None: ...
    @property
    def workers(self) -> Mapping[str, BusWorker]: ...

    def healthy(self, now_mono: float | None = None) -> bool: ...
