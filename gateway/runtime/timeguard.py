"""What the gateway does while its clock is doubted (``gateway.runtime.timetrust`` gives the verdict).

While time is untrusted (docs/enforcement.md, "Untrusted time"):
- no NEW automatic cut or power cap: the policy sees a gateway-wide hold of kind ``time_untrusted``
  (``time_holds``, read by ``gateway.policy.engine.active_holds``), so the pure ``decide`` blocks
  them with a ``hold.time_untrusted`` check in the trace — reconnections are never held;
- a trip already queued by the policy but not yet on the wire is re-decided, and so withdrawn, when
  an episode starts: its lawful instant may have been read off the clock that stepped;
- no standing charge for a day that has not ended by the monotonic-corrected clock (``ended_now``);
- no time broadcast to meters (``gateway.runtime.clocksync``);
- one ``time_untrusted`` alarm when an episode starts and one ``time_trusted`` when it ends, and the
  verdict is kept in ``meta`` (``time.trust``) for ``pmg status`` and ``pmg explain``;
- when it ends, notices and reminders served during it count from the end (``restart_notices``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway.core.timeutil import iso, system_clock
from gateway.policy.time_hold import META_KEY
from gateway.runtime.timetrust import TimeTrust, TrustChange, TrustSettings, adjtimex_probe
from gateway.store import events
from gateway.store.db import StoreError, dumps

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.runtime.ports import TimeGuardHost

log = logging.getLogger("pmg.timeguard")



def build(gateway: TimeGuardHost) -> TimeTrust:
    """The gateway's verdict keeper, from ``[time]`` and the injected clocks.

    Step detection needs a monotonic clock that runs at the wall clock's rate: ``time.monotonic``
    for the system clock, the clock's own ``monotonic()`` for a scaled (demo or test) clock, or
    ``gateway.time_monotonic`` when a test injects one.  An injected clock with none has no step
    detection (logged).  NTP is probed only for the system clock (or an injected ``ntp_probe``).
    Tolerances are real seconds: a clock running ``speed`` times fast has them multiplied."""
    mono = gateway.time_monotonic or getattr(gateway.clock, "monotonic", None)
    if mono is None and gateway.clock is system_clock:
        mono = time.monotonic
    if mono is None:
        log.info("time: the injected clock has no monotonic counterpart; wall-clock steps are not detected")
    ntp = gateway.ntp_probe
    if ntp is None and gateway.clock is system_clock:
        ntp = adjtimex_probe
    # A fast clock (the demo's) turns a real read latency of 50 ms into minutes: tolerances scale.
    speed = getattr(gateway.clock, "speed", 1.0)
    rate = float(speed) if isinstance(speed, int | float) and speed > 0 else 1.0
    trust = TimeTrust(settings(gateway.cfg), gateway.clock, mono, ntp, rate=rate)
    stored = gateway.store.meta_get(META_KEY)
    if stored is not None and not json.loads(stored).get("trusted", True):
        trust._last_trusted = False  # an episode left open by the last run: its end is reported once
    return trust


def settings(cfg: GatewayConfig) -> TrustSettings:
    """``[time]`` as the verdict keeper's settings (also on a SIGHUP reload)."""
    t = cfg.time
    return TrustSettings(
        step_tolerance_s=t.step_tolerance_s,
        reference_tolerance_s=t.reference_tolerance_s,
        require_ntp=t.require_ntp,
        ntp_settle_s=t.ntp_settle_s,
        meter_quorum=t.meter_quorum,
    )



def observe(gateway: TimeGuardHost) -> bool:
    """Look at the clocks (cheap: two clock reads); act on a change of verdict.  Returns whether
    time is trusted.  Called before decisions that read the clock (readings, reviews) and every
    few seconds."""
    trust = getattr(gateway, "timetrust", None)
    if trust is None:
        return True
    change = trust.check()
    if change is not None:
        apply_change(gateway, change)
    return trust.trusted


def observed(gateway: TimeGuardHost, change: TrustChange | None) -> None:
    """Act on a verdict a witness other than the clocks returned (meters, a signed command)."""
    if change is not None:
        apply_change(gateway, change)


def apply_change(gateway: TimeGuardHost, change: TrustChange) -> None:
    """Store the verdict, raise or clear the alarm, and re-decide what the verdict touches.

    Starting an episode re-decides every meter with a trip the policy queued and the enforcer has
    not sent: the hold now blocks it and ``PolicyEngine`` withdraws it.  Ending one re-decides every
    account, so a cut that is lawful by the corrected clock goes the ordinary way."""
    at = change.at
    try:
        with gateway.store.tx() as conn:
            _store(conn, change)
            if change.trusted:
                restarted = restart_notices(conn, at)
                events.record(conn, "time_trusted", at, detail={"notices_restarted": restarted})
                meters = [r[0] for r in conn.execute("SELECT id FROM meters ORDER BY id")]
            else:
                events.record(
                    conn, "time_untrusted", at, severity="alarm", detail={"reasons": change.reasons}
                )
                meters = [
                    r[0]
                    for r in conn.execute(
                        "SELECT DISTINCT meter_id FROM relay_commands WHERE status = 'pending' "
                        "AND action = 'trip' AND actor = 'policy' ORDER BY meter_id"
                    )
                ]
            for meter_id in meters:
                if meter_id in gateway.meter_ids:
                    gateway.parts.policy.evaluate_meter(conn, meter_id, at)
    except StoreError as exc:
        log.error("time trust change could not be recorded: %s", exc)
        return
    if change.trusted:
        log.warning("time trusted again")
    else:
        log.error("time UNTRUSTED: %s", "; ".join(change.reasons.values()))
    gateway.wake()


def restart_notices(conn: sqlite3.Connection, now: datetime) -> list[str]:
    """Notices and reminders issued or delivered during the episode were stamped by the doubted clock,
    so neither end of the notice period can be trusted: re-stamped late they would let a cut come more
    than the rules' validity after the true delivery (a stale notice), left alone they could let it
    come too early.  They are withdrawn: the account's next decision issues a fresh notice, delivered
    and counted under a trusted clock — the customer is warned again, never cut on a doubtful one.
    The episode is found by event id, not by time (its times are the ones in doubt)."""
    start = conn.execute("SELECT MAX(id) FROM events WHERE kind = 'time_untrusted'").fetchone()[0]
    if start is None:
        return []
    accounts = [
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT account_id FROM events WHERE id > ? AND account_id IS NOT NULL "
            "AND kind IN ('policy_serve_notice', 'policy_send_reminder', 'notice_delivered') ORDER BY account_id",
            (start,),
        )
    ]
    restarted: list[str] = []
    for account_id in accounts:
        served, reminded = conn.execute(
            "SELECT notice_served_at, reminder_sent_at FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        if served is None and reminded is None:
            continue  # credit came back meanwhile: nothing is running
        conn.execute(
            "UPDATE accounts SET notice_served_at = NULL, notice_delivered_at = NULL, notice_channel = NULL, "
            "reminder_sent_at = NULL WHERE id = ?",
            (account_id,),
        )
        events.record(
            conn, "policy_notice_withdrawn", now, account_id=account_id,
            detail={"reason": "issued or delivered while the gateway's clock was untrusted", "notice_served_at": served},
        )
        restarted.append(account_id)
    return restarted


def _store(conn: sqlite3.Connection, change: TrustChange) -> None:
    value = dumps({"trusted": change.trusted, "reasons": change.reasons, "since": iso(change.at)})
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (META_KEY, value),
    )


def ended_now(gateway: Any) -> datetime:
    """The instant up to which days may be settled: the wall clock, but never past what the
    monotonic clock vouches for (a clock a day fast must not end today early)."""
    wall: datetime = gateway.clock()
    trust = getattr(gateway, "timetrust", None)
    if trust is None:
        return wall
    observe(gateway)
    return min(wall, trust.corrected_now())  # observed first: a step is reported, not only used


def status(store_meta: str | None) -> dict[str, Any]:
    """``pmg status``'s view of the stored verdict."""
    if store_meta is None:
        return {"trusted": True, "reasons": {}, "since": None}
    state: dict[str, Any] = json.loads(store_meta)
    return {
        "trusted": bool(state.get("trusted", True)),
        "reasons": state.get("reasons", {}),
        "since": state.get("since"),
    }
