"""A technician resolves a quarantined meter: accept the doubtful reading, rebaseline, or replace the meter.

``record_reading`` quarantines a register that went backwards or jumped implausibly and then charges
nothing for that meter until someone who has looked at it decides.  Each decision here is one
transaction that also writes an audit event naming the actor and the reason:

* ``accept_reading(..., "charge")`` — the reading was real (the gateway was off for a long time, or
  the register really rolled over): the delta from the last accepted reading to it is charged, with
  rollover if the register is lower, and it becomes the meter's position.
* ``accept_reading(..., "rebaseline")`` — the register was reset (meter firmware, tamper repair): the
  reading becomes the new position and the energy in between is *not* charged.
* ``replace_meter`` — the old meter's final register (read off its display) is charged up to, the
  meter gets its new address, and the new meter's first reading becomes its baseline.

Readings that arrived while the meter was quarantined stay ``ignored``; the next reading after the
resolution is charged from the new position, so no energy after it is lost.

A reading quarantined because it could not be priced (kind ``unpriceable``, see
``gateway.ledger.charging``) resolves the same way, and also by itself once the cause is fixed (the
next reading that can be priced charges the whole interval).  Accepting it with ``charge`` prices the
interval by time, without the meter's per-register split: that is how energy in a register the tariff
does not map gets a price.  If it still cannot be priced (no tariff version in force), nothing changes
and the error says why.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.core.errors import UserError
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.accounts import get_meter
from gateway.ledger.charging import Pricer, Unpriceable, charge_delta, register_delta
from gateway.store import events


class QuarantineError(UserError, ValueError):
    """A resolution that does not fit the meter's state; nothing was changed."""


@dataclass(frozen=True)
class Resolution:
    meter_id: str
    account_id: str
    action: str  # charge | rebaseline | replace
    reading_id: int | None
    delta_wh: int
    charge_minor: int


def _require_audit(reason: str, actor: str) -> None:
    if not reason.strip() or not actor.strip():
        raise QuarantineError("a technician decision needs --reason and --actor (they are audited)")


def accept_reading(
    conn: sqlite3.Connection,
    meter_id: str,
    mode: Literal["charge", "rebaseline"],
    pricer: Pricer,
    now: datetime,
    *,
    reason: str,
    actor: str,
    register_modulus_wh: int = 1_000_000_000,
    minor_digits: int = 2,
) -> Resolution:
    """Resolve the meter's quarantined reading by charging it or rebaselining on it."""
    _require_audit(reason, actor)
    meter = get_meter(conn, meter_id)
    if meter is None:
        raise QuarantineError(f"no meter '{meter_id}'")
    rid = meter.quarantined_reading_id
    if rid is None:
        raise QuarantineError(f"meter '{meter_id}' has no quarantined reading")
    row = conn.execute(
        "SELECT taken_at, register_wh, tariffs_json FROM readings WHERE id = ?", (rid,)
    ).fetchone()
    register, taken_at = int(row[1]), parse_iso(row[0])
    delta, charge = 0, 0
    if mode == "charge":
        assert meter.last_register_wh is not None and meter.last_reading_at is not None
        delta, wrapped = register_delta(meter.last_register_wh, register, register_modulus_wh)
        conn.execute(
            "UPDATE readings SET outcome = 'charged', delta_wh = ?, detail = ? WHERE id = ?",
            (delta, f"accepted by {actor}{' (rollover)' if wrapped else ''}: {reason}", rid),
        )
        if delta:
            try:
                charge = charge_delta(
                    conn,
                    meter_id,
                    meter.account_id,
                    parse_iso(meter.last_reading_at),
                    taken_at,
                    delta,
                    None,  # by time: a register the tariff does not map must not block the charge
                    pricer,
                    reading_id=rid,
                    minor_digits=minor_digits,
                )
            except Unpriceable as exc:
                raise QuarantineError(f"reading {rid} of meter '{meter_id}' still cannot be priced: {exc}") from None
    elif mode == "rebaseline":
        conn.execute(
            "UPDATE readings SET outcome = 'baseline', delta_wh = 0, detail = ? WHERE id = ?",
            (f"rebaselined by {actor}: {reason}", rid),
        )
    else:
        raise QuarantineError(f"unknown resolution {mode!r} (charge or rebaseline)")
    conn.execute(
        "UPDATE meters SET last_register_wh = ?, last_tariffs_json = ?, last_reading_at = ?, last_reading_id = ?, "
        "quarantined_reading_id = NULL, updated_at = ? WHERE id = ?",
        (register, row[2], iso(taken_at), rid, iso(now), meter_id),
    )
    events.record(
        conn,
        "reading_accepted" if mode == "charge" else "reading_rebaselined",
        now,
        severity="warning",
        account_id=meter.account_id,
        meter_id=meter_id,
        actor=actor,
        detail={
            "reading_id": rid,
            "reason": reason,
            "last_register_wh": meter.last_register_wh,
            "register_wh": register,
            "charged_wh": delta,
            "charge_minor": charge,
        },
    )
    return Resolution(meter_id, meter.account_id, mode, rid, delta, charge)


def replace_meter(
    conn: sqlite3.Connection,
    meter_id: str,
    final_register_wh: int,
    new_address: str,
    pricer: Pricer,
    now: datetime,
    *,
    reason: str,
    actor: str,
    minor_digits: int = 2,
) -> Resolution:
    """Charge the old meter up to its final register, then point the meter at the new device."""
    _require_audit(reason, actor)
    if isinstance(final_register_wh, bool) or not isinstance(final_register_wh, int) or final_register_wh < 0:
        raise QuarantineError(f"final register must be a whole number of Wh (got {final_register_wh!r})")
    if not new_address.strip():
        raise QuarantineError("the new meter needs an address")
    meter = get_meter(conn, meter_id)
    if meter is None:
        raise QuarantineError(f"no meter '{meter_id}'")
    delta, charge, rid = 0, 0, None
    if meter.last_register_wh is not None and meter.last_reading_at is not None:
        if final_register_wh < meter.last_register_wh:
            raise QuarantineError(
                f"final register {final_register_wh} Wh is below the last accepted {meter.last_register_wh} Wh "
                f"of meter '{meter_id}'"
            )
        delta = final_register_wh - meter.last_register_wh
        start = parse_iso(meter.last_reading_at)
        end = max(now, start)
        cur = conn.execute(
            "INSERT INTO readings(meter_id, taken_at, quality, register_wh, outcome, delta_wh, detail) "
            "VALUES (?, ?, 'ok', ?, 'charged', ?, ?)",
            (
                meter_id,
                iso(end),
                final_register_wh,
                delta,
                f"final register of the replaced meter, by {actor}",
            ),
        )
        rid = cur.lastrowid
        if delta and end > start:
            charge = charge_delta(
                conn,
                meter_id,
                meter.account_id,
                start,
                end,
                delta,
                None,
                pricer,
                reading_id=rid,
                minor_digits=minor_digits,
            )
        elif delta:
            raise QuarantineError(
                f"cannot charge {delta} Wh: the last reading of '{meter_id}' is not in the past"
            )
    conn.execute(
        "UPDATE meters SET address = ?, last_register_wh = NULL, last_tariffs_json = NULL, last_reading_at = NULL, "
        "last_reading_id = NULL, quarantined_reading_id = NULL, relay = NULL, keep_power_on_meter = NULL, "
        "updated_at = ? WHERE id = ?",
        (new_address, iso(now), meter_id),
    )
    events.record(
        conn,
        "meter_replaced",
        now,
        severity="warning",
        account_id=meter.account_id,
        meter_id=meter_id,
        actor=actor,
        detail={
            "reason": reason,
            "old_address": meter.address,
            "new_address": new_address,
            "final_register_wh": final_register_wh,
            "charged_wh": delta,
            "charge_minor": charge,
            "quarantined_reading_id": meter.quarantined_reading_id,
        },
    )
    return Resolution(meter_id, meter.account_id, "replace", rid, delta, charge)
