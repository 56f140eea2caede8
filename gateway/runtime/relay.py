"""Relay commands: durable before any frame is sent, confirmed by read-back, audited.

A decided action becomes a row in ``relay_commands`` (status ``pending``) in the same transaction as
the audit event that explains it.  The enforcer executes pending rows through the meter's bus worker
at relay priority; the outcome is what the meter's relay *reads back*, not its acknowledgement.
A later decision cancels an earlier pending command (a payment cancels a pending cut).  After a crash a
command that may have been sent is never re-sent blindly: the relay is read first, and a command whose
effect is already there is confirmed without a frame.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from drivers.base import DriverError, NotControllable, RelayAction, RelayState
from gateway.core.timeutil import Clock, iso, parse_iso
from gateway.runtime.bus import PRIORITY_RELAY, BusWorker
from gateway.store import events
from gateway.store.db import Store
from gateway.store.relay_queue import (
    CLOSE_VALIDITY,
    MAX_ATTEMPTS,
    ONLY_IF_OPEN_RULE,
    RELAY_VALIDITY,
    RETRY_BASE_S,
    NotSent,
    RelayCommand,
)
from gateway.store.snapshots import state_snapshot

log = logging.getLogger("pmg.enforcer")

OutcomeHook = Callable[[RelayCommand, str, RelayState | None], None]
"""Called after an outcome is committed: (command, status, confirmed relay state)."""


class Enforcer:
    """Executes pending relay commands through the bus workers."""

    def __init__(
        self,
        store: Store,
        workers: dict[str, BusWorker],
        meter_bus: dict[str, str],
        clock: Clock,
        *,
        on_outcome: OutcomeHook | None = None,
        notify_outbox: Callable[[], None] = lambda: None,
        minor_digits: int = 2,
    ) -> None:
        self.minor_digits = minor_digits
        self.store = store
        self.workers = workers
        self.meter_bus = meter_bus
        self.clock = clock
        self.on_outcome = on_outcome
        self.notify_outbox = notify_outbox
        self._wake = asyncio.Event()
        self._running: dict[int, asyncio.Task[None]] = {}
        self._stopping = False

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def due(self, now: datetime) -> list[RelayCommand]:
        rows = self.store.all(
            "SELECT id, meter_id, action, attempts, payment_id, reason, actor, not_before, trace_json "
            "FROM relay_commands WHERE status IN ('pending', 'sending') ORDER BY id"
        )
        out = []
        for r in rows:
            if r["not_before"] and parse_iso(r["not_before"]) > now:
                continue
            out.append(
                RelayCommand(
                    r["id"],
                    r["meter_id"],
                    RelayAction(r["action"]),
                    r["attempts"],
                    r["payment_id"],
                    r["reason"],
                    r["actor"],
                    only_if_open=any(
                        t.get("rule") == ONLY_IF_OPEN_RULE for t in json.loads(r["trace_json"] or "[]")
                    ),
                )
            )
        return out

    async def run(self) -> None:
        while not self._stopping:
            for cmd in self.due(self.clock()):
                if cmd.id not in self._running and cmd.meter_id in self.meter_bus:
                    self._running[cmd.id] = asyncio.create_task(self._execute(cmd))
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            except TimeoutError:
                pass
        if self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _execute(self, cmd: RelayCommand) -> None:
        try:
            worker = self.workers[self.meter_bus[cmd.meter_id]]
            with self.store.tx() as conn:
                still = conn.execute("SELECT status FROM relay_commands WHERE id = ?", (cmd.id,)).fetchone()
                if still is None or still[0] not in ("pending", "sending"):
                    return
                conn.execute(
                    "UPDATE relay_commands SET status = 'sending', attempts = attempts + 1, updated_at = ? "
                    "WHERE id = ?",
                    (iso(self.clock()), cmd.id),
                )
            state: RelayState | None = None
            error: str | None = None
            not_controllable = False
            try:
                state = await worker.submit(PRIORITY_RELAY, lambda: self._operate(worker, cmd))
            except NotSent as exc:
                self._record_not_sent(cmd, str(exc), exc.relay)
                return
            except NotControllable as exc:
                error, not_controllable = str(exc), True
            except DriverError as exc:
                error = str(exc)
            self._record(cmd, state, error, not_controllable)
        finally:
            self._running.pop(cmd.id, None)
            self._wake.set()

    async def _operate(self, worker: BusWorker, cmd: RelayCommand) -> RelayState | None:
        meter = worker.meter(cmd.meter_id)
        expected = cmd.action.expected_state
        # It may have been sent before a crash or a lost reply: look before acting again.
        if cmd.attempts > 0 and expected is not None and await meter.read_relay() is expected:
            return expected
        if cmd.only_if_open:
            now_reads = await meter.read_relay()
            if now_reads is not RelayState.OPEN:
                raise NotSent(
                    f"relay reads {now_reads or 'unknown'} just before sending: {cmd.action.value} not sent",
                    now_reads,
                )
        closes = cmd.action in (RelayAction.DIRECT_CLOSE, RelayAction.CLOSE_PERMITTED)
        return await meter.relay(cmd.action, self.clock() + (CLOSE_VALIDITY if closes else RELAY_VALIDITY))

    def _record_not_sent(self, cmd: RelayCommand, why: str, relay: RelayState | None) -> None:
        """A guarded command whose precondition failed: cancelled, audited, and the meter re-decided."""
        now = self.clock()
        with self.store.tx() as conn:
            current = conn.execute("SELECT status FROM relay_commands WHERE id = ?", (cmd.id,)).fetchone()
            if current is None or current[0] != "sending":
                return
            conn.execute(
                "UPDATE relay_commands SET status = 'cancelled', outcome = ?, updated_at = ? WHERE id = ?",
                (why, iso(now), cmd.id),
            )
            if relay is not None:
                conn.execute(
                    "UPDATE meters SET relay = ?, relay_at = ? WHERE id = ?",
                    (relay.value, iso(now), cmd.meter_id),
                )
            events.record(
                conn,
                "relay_command_cancelled",
                now,
                meter_id=cmd.meter_id,
                actor=cmd.actor,
                detail={"command_id": cmd.id, "action": cmd.action.value, "reason": why},
            )
        log.info("relay meter=%s action=%s not sent: %s", cmd.meter_id, cmd.action.value, why)
        self.notify_outbox()
        if self.on_outcome is not None:
            self.on_outcome(cmd, "cancelled", relay)

    def _record(self, cmd: RelayCommand, state: RelayState | None, error: str | None, final: bool) -> None:
        now = self.clock()
        expected = cmd.action.expected_state
        ok = error is None and (expected is None or state is expected)
        attempts = cmd.attempts + 1
        with self.store.tx() as conn:
            current = conn.execute("SELECT status FROM relay_commands WHERE id = ?", (cmd.id,)).fetchone()
            if current is None or current[0] != "sending":
                return  # cancelled while in flight; the superseding command decides
            account = conn.execute("SELECT account_id FROM meters WHERE id = ?", (cmd.meter_id,)).fetchone()
            account_id = account[0] if account else None
            if ok:
                status = "confirmed"
                conn.execute(
                    "UPDATE relay_commands SET status = 'confirmed', outcome = ?, updated_at = ? WHERE id = ?",
                    (f"read back {state.value if state else 'n/a'}", iso(now), cmd.id),
                )
                if state is not None:
                    conn.execute(
                        "UPDATE meters SET relay = ?, relay_at = ? WHERE id = ?",
                        (state.value, iso(now), cmd.meter_id),
                    )
                if cmd.action in (RelayAction.KEEP_POWER_ON, RelayAction.KEEP_POWER_OFF):
                    conn.execute(
                        "UPDATE meters SET keep_power_on_meter = ? WHERE id = ?",
                        (int(cmd.action is RelayAction.KEEP_POWER_ON), cmd.meter_id),
                    )
                origin = conn.execute(
                    "SELECT command_id FROM relay_command_origins WHERE relay_command_id = ?", (cmd.id,)
                ).fetchone()
                detail: dict[str, Any] = {
                    "command_id": origin[0] if origin else None,  # the signed command that decided it
                    "relay_command_id": cmd.id,
                    "action": cmd.action.value,
                    "relay": state,
                }
                if cmd.payment_id:
                    detail["payment_id"] = cmd.payment_id
                    paid = conn.execute(
                        "SELECT received_at FROM payments WHERE payment_id = ?", (cmd.payment_id,)
                    ).fetchone()
                    if paid:
                        detail["payment_to_power_s"] = round((now - parse_iso(paid[0])).total_seconds(), 3)
                events.record(
                    conn,
                    "relay_confirmed",
                    now,
                    account_id=account_id,
                    meter_id=cmd.meter_id,
                    actor=cmd.actor,
                    detail=detail,
                )
                state_snapshot(conn, cmd.meter_id, now, minor_digits=self.minor_digits)
            elif final or attempts >= MAX_ATTEMPTS:
                status = "failed"
                conn.execute(
                    "UPDATE relay_commands SET status = 'failed', outcome = ?, updated_at = ? WHERE id = ?",
                    (error or f"read back {state}", iso(now), cmd.id),
                )
                events.record(
                    conn,
                    "relay_failed",
                    now,
                    severity="alarm",
                    account_id=account_id,
                    meter_id=cmd.meter_id,
                    actor=cmd.actor,
                    detail={
                        "command_id": cmd.id,
                        "action": cmd.action.value,
                        "error": error,
                        "relay": state,
                        "attempts": attempts,
                    },
                )
            else:
                status = "pending"
                retry_at = now + timedelta(seconds=RETRY_BASE_S * 2 ** (attempts - 1))
                conn.execute(
                    "UPDATE relay_commands SET status = 'pending', not_before = ?, outcome = ?, updated_at = ? "
                    "WHERE id = ?",
                    (iso(retry_at), error or f"read back {state}", iso(now), cmd.id),
                )
        log.info(
            "relay meter=%s action=%s status=%s relay=%s error=%s",
            cmd.meter_id,
            cmd.action.value,
            status,
            state,
            error,
        )
        self.notify_outbox()
        if self.on_outcome is not None:
            self.on_outcome(cmd, status, state)
