"""Charging register readings: each Wh exactly once, across restarts, never from a doubtful value.

The meter's import register is the source of truth.  A reading is charged as the delta since the
last *accepted* reading, inside one transaction that also advances the meter's position, posts the
entry, moves the cached balance and queues the usage message — so a crash at any instant leaves the
delta either wholly charged or not at all, and the next reading charges exactly what is left.

Intervals never run backwards or overlap: a reading stamped at or before the meter's last reading (the
wall clock stepped back) is recorded at an instant just after the last one (``CLOCK_BEHIND_STEP``),
so its energy is priced at the rate in force at the last reading — charged once, never lost, and
never a failed reading (docs/ledger.md, "Readings when the clock steps back").

Doubtful readings are quarantined, not charged: a register that went backwards (other than a
recognised rollover), or that jumped more than the meter's maximum power could deliver in the time
elapsed.  A technician resolves them (``pmg meter accept-reading``, ``pmg meter replace``).

A reading whose energy cannot be priced (energy in a TOU register its tariff does not map, no tariff
version in force, a charge too large for the ledger) is recorded and quarantined the same way
(kind ``unpriceable``) instead of failing on every poll.  Unlike a doubtful register, its cause can
be fixed without a technician touching the meter (a tariff change): every later reading tries again
to price the whole interval since the last charged reading, and the first that can be priced
charges it and releases the meter.  Until then they are stored ``ignored``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from json.encoder import encode_basestring
from typing import NamedTuple, Protocol

from drivers.base import Reading
from gateway.core.errors import UserError
from gateway.core.money import format_money, to_minor
from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.accounts import post_entry
from gateway.ledger.position import LAST_CHARGED_READING_SQL, disagreement
from gateway.ledger.records import new_record
from gateway.store import events, outbox
from gateway.store.db import dumps
from gateway.tariffs.pricing import ChargeLine

# A reading counts as "just after" the previous one for the plausibility bound at least this long,
# so that a wall-clock step backwards cannot make a normal delta look implausible.
MIN_PLAUSIBILITY_WINDOW_S = 60.0
# A reading whose clock is at or behind the meter's last reading is placed this long after it.
CLOCK_BEHIND_STEP = timedelta(microseconds=1)
# Register resolution slack: a DL/T 645 register moves in 10 Wh steps.
PLAUSIBILITY_SLACK_WH = 20
# Every amount is a SQLite INTEGER (64-bit); a charge or cumulative position this large is refused
# before anything is written, rather than failing inside the posting transaction.
LEDGER_LIMIT_MINOR = 2**62
_ZERO = Decimal(0)
# The detail of a reading quarantined because it could not be priced starts with this (the kind of a
# quarantine lives in the reading's detail and its event; nothing else distinguishes the causes).
UNPRICEABLE = "unpriceable: "


class Unpriceable(UserError, ValueError):
    """The energy of an interval cannot be priced; nothing was written.  ``str()`` is one line."""


class PricedLine(Protocol):
    """What a tariff returns for a slice of energy (see ``gateway.tariffs.pricing.ChargeLine``)."""

    @property
    def energy_wh(self) -> int: ...

    @property
    def amount(self) -> Decimal: ...


# The records of the per-reading path are NamedTuples, the hottest built with ``new_record``
# (gateway.ledger.records says why).


class AccountPosition(NamedTuple):
    """What pricing needs of an account: its tariff and where it stands in its block cycle."""

    id: str
    tariff_id: str
    cycle_start: str | None  # the cycle ``cycle_used_wh`` counts in (instant text), if any yet
    cycle_used_wh: int


class Priced(NamedTuple):
    """A pricer's answer: the exact lines, and the account's block position after them.

    The pricer writes nothing; the charge that posts these lines stores ``cycle`` in the same UPDATE
    as the balance, so the position moves exactly when (and only if) the energy is charged."""

    lines: Sequence[PricedLine]
    cycle: tuple[str, int] | None = None  # (cycle start, energy used in it), or None: unchanged


Pricer = Callable[[AccountPosition, datetime, datetime, int, Mapping[str, int] | None], Priced]
"""(account, start, end, energy_wh, register_split_wh) -> exact priced lines and the new position."""


class ChargeOutcome(NamedTuple):
    meter_id: str
    account_id: str
    outcome: str  # baseline | charged | quarantined | failed | ignored
    reading_id: int
    delta_wh: int = 0
    charge_minor: int = 0
    balance_minor: int = 0
    reason: str | None = None
    relay_before: str | None = None  # the meter's relay as stored before this reading


def register_delta(last: int, now_wh: int, modulus: int) -> tuple[int, bool]:
    """Delta and whether it wrapped.  A smaller value is a wrap only if the wrapped delta is small."""
    if now_wh >= last:
        return now_wh - last, False
    return now_wh + modulus - last, True


def _line_json(line: PricedLine) -> dict[str, object]:
    if isinstance(line, ChargeLine):  # the tariff engine's own lines: no attribute probing
        return {
            "energy_wh": line.energy_wh,
            "amount": str(line.amount),
            "tariff_id": line.tariff_id,
            "version": line.version,
            "period": line.period,
            "block": line.block,
            "unit_price": str(line.unit_price),
            "start": iso(line.start),
            "end": iso(line.end),
        }
    out: dict[str, object] = {"energy_wh": line.energy_wh, "amount": str(line.amount)}
    for attr in ("tariff_id", "version", "period", "block", "unit_price", "start", "end"):
        if hasattr(line, attr):
            value = getattr(line, attr)
            if isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, datetime):
                value = iso(value)
            out[attr] = value
    return out


def charge_detail_json(exact: Decimal, lines: Sequence[PricedLine]) -> str:
    """The charge entry's detail, exactly as ``dumps`` writes it (sorted keys, compact).

    Built by hand for the tariff engine's own lines — every charged reading stores one, and
    ``dumps`` of the nested dicts was a tenth of a reading's cost; other lines take ``dumps``.
    Decimal and instant texts need no escaping; names go through the JSON string encoder."""
    if len(lines) == 1:  # the usual reading: one line, no generator or list
        line = lines[0]
        if type(line) is ChargeLine:
            return f'{{"exact":"{exact!s}","lines":[{_charge_line_json(line)}]}}'
    if not all(type(line) is ChargeLine for line in lines):
        return dumps({"exact": str(exact), "lines": [_line_json(line) for line in lines]})
    parts = [_charge_line_json(line) for line in lines if isinstance(line, ChargeLine)]
    return f'{{"exact":"{exact!s}","lines":[{",".join(parts)}]}}'


def _charge_line_json(line: ChargeLine) -> str:
    """One tariff-engine line as ``dumps`` writes it (an integer or ``null``, a JSON string or ``null``)."""
    block, period, tariff_id = line.block, line.period, line.tariff_id
    return (
        f'{{"amount":"{line.amount!s}","block":{"null" if block is None else int(block)},"end":"{iso(line.end)}",'
        f'"energy_wh":{line.energy_wh},"period":{"null" if period is None else encode_basestring(period)},'
        f'"start":"{iso(line.start)}","tariff_id":{"null" if tariff_id is None else encode_basestring(tariff_id)},'
        f'"unit_price":"{line.unit_price!s}","version":{line.version}}}'
    )


# How much newer than a reading a stored relay read-back may be and still win over it.  A reading waits
# well under a second between its answer and its commit at 1x; 10 minutes also covers the simulated
# clocks of the test rigs (600x), and bounds how long a clock stepped forward at a confirmation and then
# back could keep later readings from updating the relay state (time is untrusted meanwhile, see
# docs/enforcement.md, "Untrusted time").
STALE_RELAY_S = 600
_NEWER_RELAY = (
    "relay_at IS NOT NULL AND julianday(relay_at) > julianday(?) "
    f"AND julianday(relay_at) <= julianday(?) + {STALE_RELAY_S}.0 / 86400"
)


def record_reading(
    conn: sqlite3.Connection,
    meter_id: str,
    reading: Reading,
    pricer: Pricer,
    *,
    max_power_w: int,
    register_modulus_wh: int = 1_000_000_000,
    minor_digits: int = 2,
) -> ChargeOutcome:
    """Store one reading and charge it if it is good.  Call inside ``store.tx()``."""
    # One cursor for the reading's own statements (``conn.execute`` makes a cursor per statement),
    # answering plain tuples (no sqlite3.Row to build or index).
    cur = conn.cursor()
    cur.row_factory = None
    meter, account, position_check, balance_before = _meter_and_account(cur, meter_id)
    now = reading.taken_at
    clock_note: str | None = None
    last_seen: datetime | None = None
    if meter.last_reading_at is not None:
        last_seen = parse_iso(meter.last_reading_at)
        if now <= last_seen:  # the wall clock stepped back: the interval must not run backwards
            placed = last_seen + CLOCK_BEHIND_STEP
            clock_note = f"clock read {iso(now)}, not after the last reading: placed at {iso(placed)}"
            now = placed
    taken = iso(now)  # the reading's instant as stored: its row, the meter's position, the entry, the message
    tariffs_json = (
        json.dumps(list(reading.energy_import_tariffs_wh)) if reading.energy_import_tariffs_wh else None
    )

    # The reading's row: _insert_reading(*row, outcome, delta, detail) -> its id.  A tuple rather than a
    # closure or partial: the usual reading inserts once, and building either cost more than it saved.
    row = (cur, meter_id, taken, reading, tariffs_json, clock_note)

    if not reading.chargeable:
        rid = _insert_reading(*row, "failed", None, reading.error or reading.quality.value)
        conn.execute(
            "UPDATE meters SET comms_failed = comms_failed + 1, last_comms_error = ?, updated_at = ? WHERE id = ?",
            (reading.error or reading.quality.value, taken, meter_id),
        )
        return ChargeOutcome(
            meter_id, meter.account_id, "failed", rid, reason=reading.error, relay_before=meter.relay
        )

    assert reading.energy_import_wh is not None
    register = reading.energy_import_wh
    # A reading taken just before a relay operation can be charged just after its confirmation (readings
    # are committed in batches): its relay state is then older than the read-back the enforcer stored and
    # must not overwrite it.  Only a confirmation up to STALE_RELAY_S after the reading counts as newer, so
    # that a clock stepped forward at a confirmation cannot freeze the relay state against later readings.
    relay = reading.relay
    relay_params: tuple[object, ...] = ()
    if relay is None and "keep_power" not in reading.status:  # the usual reading: the SQL is a constant
        comms_sql = _COMMS
    else:
        relay_sql = (
            ", relay = CASE WHEN " + _NEWER_RELAY + " THEN relay ELSE ? END"
            ", relay_at = CASE WHEN " + _NEWER_RELAY + " THEN relay_at ELSE ? END"
            if relay
            else ""
        )
        relay_params = (taken, taken, relay.value, taken, taken, taken) if relay else ()
        if "keep_power" in reading.status:
            relay_sql += ", keep_power_on_meter = ?"
            relay_params += (int(bool(reading.status["keep_power"])),)
        comms_sql = _COMMS + relay_sql

    held = meter.quarantined_reading_id
    if held is not None and not is_unpriceable(conn, held):
        conn.execute(f"UPDATE meters SET {comms_sql} WHERE id = ?", (*relay_params, meter_id))
        rid = _insert_reading(*row, "ignored", None, f"awaiting technician for reading {held}")
        return ChargeOutcome(
            meter_id, meter.account_id, "ignored", rid, reason="meter quarantined", relay_before=meter.relay
        )
    # Held for a price only: this reading tries again, from the last charged reading.

    if meter.last_register_wh is None or meter.last_reading_at is None:
        rid = _insert_reading(*row, "baseline", 0)
        _advance(cur, meter_id, register, tariffs_json, taken, rid, comms_sql, relay_params)
        held = balance_before  # a baseline charges nothing: the balance the meter query read
        body = usage_json(meter_id, meter.account_id, None, now, register, 0, 0, held, minor_digits)
        _queue_usage(conn, meter_id, now, body)
        return ChargeOutcome(
            meter_id,
            meter.account_id,
            "baseline",
            rid,
            balance_minor=held,
            relay_before=meter.relay,
        )

    checked = meter if position_check is None else _checked_position(conn, meter, position_check, now)
    if checked is not meter or last_seen is None:  # the ledger's position won: parse its instant
        meter = checked
        assert meter.last_reading_at is not None
        last_seen = parse_iso(meter.last_reading_at)
    last_at = last_seen
    assert meter.last_register_wh is not None and meter.last_reading_at is not None
    delta, wrapped = register_delta(meter.last_register_wh, register, register_modulus_wh)
    elapsed_s = max((now - last_at).total_seconds(), MIN_PLAUSIBILITY_WINDOW_S)
    bound_wh = max_power_w * elapsed_s / 3600 + PLAUSIBILITY_SLACK_WH  # float only for a bound, never money
    if delta > bound_wh:
        kind = "register_backwards" if wrapped else "implausible_jump"
        reason = (
            f"register went from {meter.last_register_wh} Wh to {register} Wh"
            if wrapped
            else f"{delta} Wh in {elapsed_s:.0f} s exceeds max power {max_power_w} W"
        )
        rid = _insert_reading(*row, "quarantined", delta if not wrapped else register - meter.last_register_wh, reason)
        if held is not None:
            _release(conn, held, f"superseded by quarantined reading {rid}")
        conn.execute(
            f"UPDATE meters SET {comms_sql}, quarantined_reading_id = ?, updated_at = ? WHERE id = ?",
            (*relay_params, rid, taken, meter_id),
        )
        events.record(
            conn,
            "reading_quarantined",
            now,
            severity="alarm",
            account_id=meter.account_id,
            meter_id=meter_id,
            detail={
                "reading_id": rid,
                "kind": kind,
                "reason": reason,
                "last_register_wh": meter.last_register_wh,
                "register_wh": register,
            },
        )
        return ChargeOutcome(
            meter_id, meter.account_id, "quarantined", rid, reason=reason, relay_before=meter.relay
        )

    priced: PricedCharge | None = None
    if delta > 0:
        try:
            priced = price_charge(
                account,
                last_at,
                now,
                delta,
                _register_split(meter.last_tariffs_json, reading) if reading.energy_import_tariffs_wh else None,
                pricer,
                (Decimal(meter.charged_exact), meter.charged_minor),
                minor_digits=minor_digits,
            )
        except Unpriceable as exc:
            return _hold_unpriceable(
                conn, meter, meter_id, str(exc), (register, delta), now, partial(_insert_reading, *row), comms_sql, relay_params
            )
    rid = _insert_reading(*row, "charged", delta, "rollover" if wrapped else None)
    charge_minor = 0
    extra_sql, extra_params = comms_sql, relay_params
    balance = balance_before  # nothing else in this reading moves the balance but its charge
    if priced is not None:
        balance = _post(conn, meter_id, account.id, last_at, now, delta, priced, reading_id=rid, balance_before=balance)
        charge_minor = priced.charge_minor
        extra_sql = _COMMS_CHARGED if comms_sql is _COMMS else comms_sql + _CHARGED
        extra_params += (str(priced.cumulative_exact), priced.cumulative_minor)
    if held is not None:  # the interval the held reading could not price is in this charge
        _release(conn, held, f"priced now: its energy is charged with reading {rid}")
        extra_sql += ", quarantined_reading_id = NULL"
        events.record(
            conn,
            "reading_quarantine_cleared",
            now,
            account_id=meter.account_id,
            meter_id=meter_id,
            detail={"reading_id": held, "charged_by_reading_id": rid, "charged_wh": delta},
        )
    _advance(cur, meter_id, register, tariffs_json, taken, rid, extra_sql, extra_params)
    body = usage_json(meter_id, meter.account_id, last_at, now, register, delta, charge_minor, balance, minor_digits)
    _queue_usage(conn, meter_id, now, body)
    return new_record(
        ChargeOutcome, (meter_id, meter.account_id, "charged", rid, delta, charge_minor, balance, None, meter.relay)
    )


def charge_delta(
    conn: sqlite3.Connection,
    meter_id: str,
    account_id: str,
    start: datetime,
    end: datetime,
    delta_wh: int,
    register_split: Mapping[str, int] | None,
    pricer: Pricer,
    *,
    reading_id: int | None,
    minor_digits: int,
) -> int:
    """Price ``delta_wh`` and post it with cumulative rounding; returns the minor units charged.

    Raises ``Unpriceable`` (a ``ValueError``) before writing anything when it cannot be priced."""
    row = conn.execute("SELECT charged_exact, charged_minor FROM meters WHERE id = ?", (meter_id,)).fetchone()
    account = account_position(conn, account_id)
    priced = price_charge(
        account,
        start,
        end,
        delta_wh,
        register_split,
        pricer,
        (Decimal(row[0]), int(row[1])),
        minor_digits=minor_digits,
    )
    _post(conn, meter_id, account_id, start, end, delta_wh, priced, reading_id=reading_id)
    conn.execute(
        "UPDATE meters SET charged_exact = ?, charged_minor = ? WHERE id = ?",
        (str(priced.cumulative_exact), priced.cumulative_minor, meter_id),
    )
    return priced.charge_minor


class PricedCharge(NamedTuple):
    """A priced interval, before anything is written: the lines, and the meter's new cumulative
    position (exact and posted) from which the charge is the difference (rounding once, on totals)."""

    lines: Sequence[PricedLine]
    exact: Decimal
    cumulative_exact: Decimal
    cumulative_minor: int
    charge_minor: int
    cycle: tuple[str, int] | None


def price_charge(
    account: AccountPosition,
    start: datetime,
    end: datetime,
    delta_wh: int,
    register_split: Mapping[str, int] | None,
    pricer: Pricer,
    position: tuple[Decimal, int],
    *,
    minor_digits: int,
) -> PricedCharge:
    """Price an interval for the meter at ``position`` (cumulative exact, cumulative posted).

    Writes nothing.  Every way the tariff can fail to price the energy — a register it does not map,
    no version in force, an unknown tariff, an amount that cannot be held exactly — becomes one
    ``Unpriceable``, so the caller can quarantine the reading instead of losing it."""
    try:
        priced = pricer(account, start, end, delta_wh, register_split)
        lines = priced.lines
        if len(lines) == 1:  # the usual reading: one stretch, one block (the same sums, without generators)
            if lines[0].energy_wh != delta_wh:
                raise ArithmeticError(f"tariff split {delta_wh} Wh into lines that do not add up")
            exact = _ZERO + lines[0].amount
        else:
            if sum(line.energy_wh for line in lines) != delta_wh:
                raise ArithmeticError(f"tariff split {delta_wh} Wh into lines that do not add up")
            exact = sum((line.amount for line in lines), _ZERO)
        cumulative_exact = position[0] + exact
        cumulative_minor = to_minor(cumulative_exact, minor_digits)
    except (ValueError, LookupError, ArithmeticError) as exc:
        raise Unpriceable(str(exc) or type(exc).__name__) from None
    charge_minor = cumulative_minor - position[1]
    if max(abs(cumulative_minor), abs(charge_minor)) >= LEDGER_LIMIT_MINOR:
        raise Unpriceable(
            f"{delta_wh} Wh would cost {format_money(charge_minor, minor_digits)}, beyond what the ledger can hold"
        )
    return new_record(PricedCharge, (lines, exact, cumulative_exact, cumulative_minor, charge_minor, priced.cycle))


def _post(
    conn: sqlite3.Connection,
    meter_id: str,
    account_id: str,
    start: datetime,
    end: datetime,
    delta_wh: int,
    priced: PricedCharge,
    *,
    reading_id: int | None,
    balance_before: int | None = None,
) -> int:
    """Post the charge entry; returns the account's balance after it.

    The caller writes the meter's new cumulative position in the same transaction (``record_reading``
    folds it into its one meter update).  ``balance_before``: the cached balance the caller read in
    this transaction (``post_entry`` then need not read it back).
    """
    return post_entry(
        conn,
        account_id,
        "charge",
        -priced.charge_minor,
        end,
        energy_wh=delta_wh,
        meter_id=meter_id,
        reading_id=reading_id,
        period_start=start,
        period_end=end,
        detail_json=charge_detail_json(priced.exact, priced.lines),
        cycle=priced.cycle,
        balance_before=balance_before,
    ).balance_minor


def is_unpriceable(conn: sqlite3.Connection, reading_id: int) -> bool:
    """Whether a quarantined reading is held for a price (not for a doubtful register)."""
    row = conn.execute("SELECT detail FROM readings WHERE id = ?", (reading_id,)).fetchone()
    return row is not None and str(row[0] or "").startswith(UNPRICEABLE)


def _release(conn: sqlite3.Connection, reading_id: int, note: str) -> None:
    """A held reading whose energy a later reading charges (or supersedes): ``ignored``, with why."""
    conn.execute(
        "UPDATE readings SET outcome = 'ignored', detail = detail || '; ' || ? WHERE id = ?", (note, reading_id)
    )


def _hold_unpriceable(
    conn: sqlite3.Connection,
    meter: _Meter,
    meter_id: str,
    reason: str,
    register_and_delta: tuple[int, int],
    now: datetime,
    insert: Callable[[str, int | None, str | None], int],
    comms_sql: str,
    relay_params: tuple[object, ...],
) -> ChargeOutcome:
    """Record a reading that cannot be priced; the meter's position stays at the last charged reading.

    The first is quarantined with an alarm; while it is held, later ones that still cannot be priced
    are ``ignored`` (one alarm per cause, not one per poll).  The meter keeps its comms health: it
    answered."""
    register, delta = register_and_delta
    held = meter.quarantined_reading_id
    if held is not None:
        rid = insert("ignored", delta, f"still unpriceable ({reason}); held with reading {held}")
        conn.execute(f"UPDATE meters SET {comms_sql} WHERE id = ?", (*relay_params, meter_id))
        return ChargeOutcome(meter_id, meter.account_id, "ignored", rid, reason=reason, relay_before=meter.relay)
    rid = insert("quarantined", delta, UNPRICEABLE + reason)
    conn.execute(
        f"UPDATE meters SET {comms_sql}, quarantined_reading_id = ?, updated_at = ? WHERE id = ?",
        (*relay_params, rid, iso(now), meter_id),
    )
    events.record(
        conn,
        "reading_quarantined",
        now,
        severity="alarm",
        account_id=meter.account_id,
        meter_id=meter_id,
        detail={
            "reading_id": rid,
            "kind": "unpriceable",
            "reason": reason,
            "last_register_wh": meter.last_register_wh,
            "register_wh": register,
            "delta_wh": delta,
        },
    )
    return ChargeOutcome(meter_id, meter.account_id, "quarantined", rid, reason=reason, relay_before=meter.relay)


class _Meter(NamedTuple):
    """What charging a reading needs of its meter row (not the wiring ``accounts.MeterRow`` also
    holds: every column read costs a Python object per reading)."""

    id: str
    account_id: str
    last_register_wh: int | None
    last_reading_at: str | None
    relay: str | None
    quarantined_reading_id: int | None
    charged_exact: str  # cumulative exact charge (Decimal text)
    charged_minor: int  # cumulative posted charge
    last_tariffs_json: str | None  # the per-tariff registers (T1..Tn) of the last accepted reading


_METER_AND_ACCOUNT = (
    "SELECT m.account_id, m.last_register_wh, m.last_reading_at, m.relay, m.quarantined_reading_id, "
    "m.charged_exact, m.charged_minor, m.last_tariffs_json, "
    "a.tariff_id, a.cycle_start, a.cycle_used_wh, a.balance_minor, m.last_reading_id, "
    # the billing-position check's two seeks (``gateway.ledger.position``), in the same statement
    + LAST_CHARGED_READING_SQL
    + ", (SELECT r.register_wh FROM readings r WHERE r.id = m.last_reading_id AND r.meter_id = m.id) "
    "FROM meters m JOIN accounts a ON a.id = m.account_id WHERE m.id = ?"
)


class _PositionCheck(NamedTuple):
    """What the meter query says about the meter's billing position (``_checked_position``)."""

    reading_id: int | None  # the reading the meter row's position cites
    last_charged_reading_id: int | None  # the reading the meter's last charge entry cites
    cited_register_wh: int | None  # that cited reading's register, if it is this meter's


def _meter_and_account(
    cur: sqlite3.Cursor, meter_id: str
) -> tuple[_Meter, AccountPosition, _PositionCheck | None, int]:
    """The meter, its account's pricing position, what its billing position is checked with and the
    account's cached balance, in one read (the per-reading hot path).

    The check is ``None`` when the row settles it (``_checked_position``'s usual case: the row cites
    the last charged reading or a later one of this meter, with that reading's register)."""
    r = cur.execute(_METER_AND_ACCOUNT, (meter_id,)).fetchone()
    if r is None:
        raise LookupError(f"no meter '{meter_id}'")
    account_id = r[0]
    cites, last_charged = r[12], r[13]
    settled = cites is None or (r[14] == r[1] and (last_charged is None or cites >= last_charged))
    return (
        new_record(_Meter, (meter_id, account_id, r[1], r[2], r[3], r[4], r[5], int(r[6]), r[7])),
        new_record(AccountPosition, (account_id, r[8], r[9], int(r[10]))),
        None if settled else _PositionCheck(cites, last_charged, r[14]),
        int(r[11]),
    )


def _checked_position(conn: sqlite3.Connection, meter: _Meter, check: _PositionCheck, now: datetime) -> _Meter:
    """The meter with its billing position checked against the ledger (``gateway.ledger.position``).

    The usual case is settled by the meter query's own columns: the row cites the last charged
    reading or a later one of this meter, with that reading's register.  Otherwise the ledger's
    position is worked out and wins — charging from a rewound register would charge its energy a
    second time — and an alarm event says what the meter row claimed; the reading's one meter update
    then writes the ledger's position back with the new one.  Called only when the row does not settle
    it (``_meter_and_account`` decides that, and gives no check then)."""
    last_reading_id = check.reading_id
    assert last_reading_id is not None
    ledger = disagreement(conn, meter.id, meter.account_id, meter.last_register_wh, last_reading_id)
    if ledger is None:
        return meter
    events.record(
        conn,
        "billing_position_mismatch",
        now,
        severity="alarm",
        account_id=meter.account_id,
        meter_id=meter.id,
        detail={
            "meter_register_wh": meter.last_register_wh,
            "meter_reading_id": last_reading_id,
            "ledger_register_wh": ledger.register_wh,
            "ledger_reading_id": ledger.reading_id,
        },
    )
    return meter._replace(
        last_register_wh=ledger.register_wh,
        last_reading_at=ledger.taken_at,
        last_tariffs_json=ledger.tariffs_json if ledger.tariffs_json is not None else meter.last_tariffs_json,
    )


def account_position(conn: sqlite3.Connection, account_id: str) -> AccountPosition:
    row = conn.execute(
        "SELECT tariff_id, cycle_start, cycle_used_wh FROM accounts WHERE id = ?", (account_id,)
    ).fetchone()
    if row is None:
        raise LookupError(f"no account '{account_id}'")
    return AccountPosition(account_id, row[0], row[1], int(row[2]))


def _register_split(last_tariffs_json: str | None, reading: Reading) -> dict[str, int] | None:
    """Per-tariff register deltas (T1..Tn) when the meter reports them and we have a previous set."""
    if not reading.energy_import_tariffs_wh or last_tariffs_json is None:
        return None
    last = json.loads(last_tariffs_json)
    now = list(reading.energy_import_tariffs_wh)
    if len(last) != len(now) or any(b < a for a, b in zip(last, now, strict=True)):
        return None
    return {f"T{i + 1}": b - a for i, (a, b) in enumerate(zip(last, now, strict=True))}


def _advance(
    cur: sqlite3.Cursor,
    meter_id: str,
    register: int,
    tariffs_json: str | None,
    taken: str,
    rid: int,
    extra_sql: str,
    extra_params: tuple[object, ...],
) -> None:
    """The meter's new position, comms counters and cumulative charge: one UPDATE per reading
    (``taken``: the reading's instant as stored)."""
    sql = _ADVANCE_NO_TARIFFS.get(extra_sql) if tariffs_json is None else None
    if sql is not None:
        cur.execute(sql, (*extra_params, register, taken, rid, taken, meter_id))
        return
    cur.execute(_advance_sql(extra_sql, "?"), (*extra_params, register, tariffs_json, taken, rid, taken, meter_id))


def _advance_sql(extra_sql: str, tariffs: str) -> str:
    """``_advance``'s UPDATE after the ``extra_sql`` assignments; ``tariffs``: ``?`` or ``NULL``."""
    return (
        f"UPDATE meters SET {extra_sql}, last_register_wh = ?, last_tariffs_json = COALESCE({tariffs}, last_tariffs_json), "
        "last_reading_at = ?, last_reading_id = ?, updated_at = ? WHERE id = ?"
    )


# The meter's comms counters after a reading that answered, and its cumulative charge after a charge
# (``record_reading`` adds the relay read-back and the keep-power flag when the reading has them).
_COMMS = "comms_ok = comms_ok + 1, last_comms_error = NULL"
_CHARGED = ", charged_exact = ?, charged_minor = ?"
_COMMS_CHARGED = _COMMS + _CHARGED
# ``_advance`` for the usual readings (no per-tariff registers): the SQL text is a constant, and the
# NULL is written in it rather than bound — sqlite3 binds a None only after a failed adapter lookup
# (an AttributeError formatted and cleared, about 3,000 instructions per None).  The same statement.
_ADVANCE_NO_TARIFFS = {extra: _advance_sql(extra, "NULL") for extra in (_COMMS, _COMMS_CHARGED)}
_INSERT_READING = (
    "INSERT INTO readings(meter_id, taken_at, quality, register_wh, export_wh, tariffs_json, relay, "
    "outcome, delta_wh, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The usual reading's row (no export register, per-tariff registers, relay state or detail): its NULLs
# in the SQL text rather than bound (see ``_ADVANCE_NO_TARIFFS``).
_INSERT_PLAIN_READING = (
    "INSERT INTO readings(meter_id, taken_at, quality, register_wh, export_wh, tariffs_json, relay, "
    "outcome, delta_wh, detail) VALUES (?, ?, ?, ?, NULL, NULL, NULL, ?, ?, NULL)"
)


def _insert_reading(
    cur: sqlite3.Cursor,
    meter_id: str,
    taken: str,
    reading: Reading,
    tariffs_json: str | None,
    clock_note: str | None,
    outcome: str,
    delta: int | None = None,
    detail: str | None = None,
) -> int:
    """Insert the reading's row (``taken``: its instant as stored, ``clock_note``: why it is not the
    instant the reading says, appended to the detail); returns its id."""
    if clock_note is not None:
        detail = clock_note if detail is None else f"{detail}; {clock_note}"
    relay = reading.relay
    if detail is None and relay is None and tariffs_json is None and reading.energy_export_wh is None:
        cur.execute(
            _INSERT_PLAIN_READING,
            # ``_value_``: the member's own attribute (``.value`` goes through two Python-level descriptor calls)
            (meter_id, taken, reading.quality._value_, reading.energy_import_wh, outcome, delta),
        )
    else:
        cur.execute(
            _INSERT_READING,
            (
                meter_id,
                taken,
                reading.quality.value,
                reading.energy_import_wh,
                reading.energy_export_wh,
                tariffs_json,
                relay.value if relay else None,
                outcome,
                delta,
                detail,
            ),
        )
    assert cur.lastrowid is not None
    return cur.lastrowid


def usage_json(
    meter_id: str,
    account_id: str,
    start: datetime | None,
    end: datetime,
    register_wh: int,
    delta_wh: int,
    charge_minor: int,
    balance: int,
    minor_digits: int = 2,
) -> str:
    """The ``pmg.usage/1`` message body, exactly as ``dumps`` writes it (sorted keys, compact): one
    per reading, so built directly rather than through a dict and the encoder.  Instant texts need no
    JSON escaping (digits, ``-``, ``:``, ``T``, ``.``, ``Z``)."""
    start_json = f'"{iso(start)}"' if start else "null"
    return (
        f'{{"account_id":{encode_basestring(account_id)},"balance":"{format_money(balance, minor_digits)}",'
        f'"charge":"{format_money(charge_minor, minor_digits)}","energy_wh":{int(delta_wh)},'
        f'"interval_end":"{iso(end)}","interval_start":{start_json},'
        f'"meter_id":{encode_basestring(meter_id)},"register_wh":{int(register_wh)},"schema":"pmg.usage/1"}}'
    )


def _queue_usage(conn: sqlite3.Connection, meter_id: str, end: datetime, body: str) -> None:
    outbox.put_text(conn, f"meters/{meter_id}/usage", body, end)
