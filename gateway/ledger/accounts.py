"""Accounts and meters as the ledger knows them, and their seeding from configuration.

Configuration may name meters and accounts (a standalone mini-grid); the head office may create and
update them over MQTT.  Either way the rows live in the database, and a meter keeps its charging
position (last accepted register, cumulative charge) across restarts and reconfiguration.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from gateway.config import GatewayConfig
from gateway.core.money import parse_money
from gateway.core.timeutil import iso
from gateway.ledger.records import new_record
from gateway.store.db import Store, dumps


class PostedEntry(NamedTuple):
    entry_id: int
    balance_minor: int  # the account's cached balance after the entry


class MeterRow(NamedTuple):
    """A meter as the ledger reads it (a NamedTuple: immutable and cheap to build, once per reading)."""

    id: str
    account_id: str
    bus_id: str
    protocol: str
    address: str
    keep_power: bool
    last_register_wh: int | None
    last_reading_at: str | None
    relay: str | None
    quarantined_reading_id: int | None
    charged_exact: str = "0"  # cumulative exact charge (Decimal text)
    charged_minor: int = 0  # cumulative posted charge
    last_tariffs_json: str | None = None  # the per-tariff registers (T1..Tn) of the last accepted reading


def ensure_account(
    conn: sqlite3.Connection,
    account_id: str,
    *,
    tariff_id: str,
    currency: str,
    now: datetime,
    name: str | None = None,
    protected: bool | None = None,
    protected_category: str | None = None,
    emergency_credit_minor: int | None = None,
) -> None:
    """Create the account or update its descriptive fields; never touches money or policy state."""
    conn.execute(
        "INSERT INTO accounts(id, name, tariff_id, currency, policy_state_since, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING",
        (account_id, name, tariff_id, currency, iso(now), iso(now), iso(now)),
    )
    sets = ["tariff_id = ?", "updated_at = ?"]
    params: list[object] = [tariff_id, iso(now)]
    if name is not None:
        sets.append("name = ?")
        params.append(name)
    if protected is not None:
        sets.append("protected = ?")
        params.append(int(protected))
        sets.append("protected_category = ?")
        params.append(protected_category)
    if emergency_credit_minor is not None:
        sets.append("emergency_credit_minor = ?")
        params.append(emergency_credit_minor)
    conn.execute(f"UPDATE accounts SET {', '.join(sets)} WHERE id = ?", (*params, account_id))


def ensure_meter(
    conn: sqlite3.Connection,
    meter_id: str,
    *,
    account_id: str,
    bus_id: str,
    protocol: str,
    address: str,
    keep_power: bool,
    now: datetime,
    assign: bool = True,
) -> None:
    """Create the meter or update its wiring; its charging position is kept.

    ``assign=False`` updates only the wiring (bus, protocol, address) and leaves the account assignment
    and keep-power flag as they are (the head office may have changed them).
    """
    conn.execute(
        "INSERT INTO meters(id, account_id, bus_id, protocol, address, keep_power, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET bus_id = excluded.bus_id, protocol = excluded.protocol, "
        "address = excluded.address, updated_at = excluded.updated_at",
        (meter_id, account_id, bus_id, protocol, address, int(keep_power), iso(now), iso(now)),
    )
    if assign:
        conn.execute(
            "UPDATE meters SET account_id = ?, keep_power = ? WHERE id = ?",
            (account_id, int(keep_power), meter_id),
        )


def _config_changed(conn: sqlite3.Connection, key: str, values: dict[str, object]) -> bool:
    """True (and remembers ``values``) when the configuration says something new about ``key``."""
    text = dumps(values)
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (f"seeded:{key}",)).fetchone()
    if row is not None and row[0] == text:
        return False
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (f"seeded:{key}", text),
    )
    return True


def seed_from_config(store: Store, cfg: GatewayConfig, now: datetime) -> None:
    """Make the database agree with the configuration, in one transaction.

    Wiring (bus, protocol, address) always follows the file: it describes the physical installation.
    Account assignment and customer flags follow the file only when the file *changed* them since the
    last start or reload; otherwise what the head office set over MQTT (``account`` commands) stands,
    so a restart never silently undoes a head-office decision.
    """
    account_cfg = {a.id: a for a in cfg.accounts}
    with store.tx() as conn:
        for meter in cfg.meters:
            acc = account_cfg.get(meter.account)
            exists = (
                conn.execute("SELECT 1 FROM accounts WHERE id = ?", (meter.account,)).fetchone() is not None
            )
            account_values: dict[str, object] = {
                "tariff": meter.tariff,
                "name": acc.name if acc else None,
                "protected": acc.protected if acc else None,
                "protected_category": acc.protected_category if acc else None,
                "emergency_credit": acc.emergency_credit if acc else None,
            }
            if _config_changed(conn, f"account:{meter.account}", account_values) or not exists:
                ensure_account(
                    conn,
                    meter.account,
                    tariff_id=meter.tariff,
                    currency=cfg.currency,
                    now=now,
                    name=acc.name if acc else None,
                    protected=acc.protected if acc else None,
                    protected_category=acc.protected_category if acc else None,
                    emergency_credit_minor=parse_money(acc.emergency_credit, cfg.minor_digits)
                    if acc
                    else None,
                )
            meter_values: dict[str, object] = {"account": meter.account, "keep_power": meter.keep_power}
            ensure_meter(
                conn,
                meter.id,
                account_id=meter.account,
                bus_id=meter.bus,
                protocol=cfg.bus(meter.bus).protocol,
                address=meter.address,
                keep_power=meter.keep_power,
                now=now,
                assign=_config_changed(conn, f"meter:{meter.id}", meter_values),
            )


# The meters columns a ``MeterRow`` holds, in its field order (``meter_row`` reads them back).
METER_COLUMNS = (
    "id, account_id, bus_id, protocol, address, keep_power, last_register_wh, last_reading_at, relay, "
    "quarantined_reading_id, charged_exact, charged_minor, last_tariffs_json"
)
METER_COLUMN_COUNT = METER_COLUMNS.count(",") + 1


def meter_row(r: Sequence[Any]) -> MeterRow:
    """A ``MeterRow`` from the first ``METER_COLUMN_COUNT`` values of a row selected with ``METER_COLUMNS``."""
    return MeterRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], r[8], r[9], r[10], int(r[11]), r[12])


def get_meter(conn: sqlite3.Connection, meter_id: str) -> MeterRow | None:
    r = conn.execute(f"SELECT {METER_COLUMNS} FROM meters WHERE id = ?", (meter_id,)).fetchone()
    return None if r is None else meter_row(r)


def balance_minor(conn: sqlite3.Connection, account_id: str) -> int:
    """The account balance derived from its entries (the truth the cache is checked against)."""
    return int(
        conn.execute(
            "SELECT COALESCE(SUM(amount_minor), 0) FROM entries WHERE account_id = ?", (account_id,)
        ).fetchone()[0]
    )


_ENTRY_COLUMNS = (
    "INSERT INTO entries(account_id, kind, amount_minor, energy_wh, meter_id, reading_id, external_id, "
    "period_start, period_end, detail_json, created_at, debt_minor) "
)
_INSERT_ENTRY = _ENTRY_COLUMNS + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
# An entry without an external id (every charge): the NULL written in the SQL text rather than bound,
# which sqlite3 does only after a failed adapter lookup (about 3,000 instructions per None).
_INSERT_ENTRY_NO_EXTERNAL = _ENTRY_COLUMNS + "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)"
# A charge entry (no external id, no debt, created at its period's end) with those in the SQL text:
# each bound parameter is one more value for sqlite3 to convert and bind.
_INSERT_CHARGE_ENTRY = _ENTRY_COLUMNS + "VALUES (?1, 'charge', ?2, ?3, ?4, ?5, NULL, ?6, ?7, ?8, ?7, 0)"
_MOVE_BALANCE = (
    "UPDATE accounts SET balance_minor = balance_minor + ?, debt_minor = debt_minor + ?, updated_at = ? WHERE id = ?"
)
_MOVE_BALANCE_AND_CYCLE = (
    "UPDATE accounts SET balance_minor = balance_minor + ?, debt_minor = debt_minor + ?, updated_at = ?, "
    "cycle_start = ?, cycle_used_wh = ? WHERE id = ?"
)


def post_entry(
    conn: sqlite3.Connection,
    account_id: str,
    kind: str,
    amount_minor: int,
    now: datetime,
    *,
    energy_wh: int | None = None,
    meter_id: str | None = None,
    reading_id: int | None = None,
    external_id: str | None = None,
    period_start: datetime | None = None,
    period_end: datetime | None = None,
    detail_json: str = "{}",
    debt_minor: int = 0,
    cycle: tuple[str, int] | None = None,
    balance_before: int | None = None,
) -> PostedEntry:
    """Append one ledger entry and move the cached balance (and debt) with it, in the caller's transaction.

    ``amount_minor`` moves the balance the customer spends from; ``debt_minor`` moves the separate debt
    pocket (a ``debt`` entry raises it, a ``debt_recovery`` entry lowers both).  Both caches are the sums
    of their entry columns, which ``verify`` checks.  ``cycle`` is the account's new block position
    (cycle start, energy used in it) when the entry charges energy: stored in the same UPDATE.  The
    balance after the entry comes back from that UPDATE too (a charged reading's usage message needs it),
    or, when the caller read the cached balance earlier in this transaction (``balance_before``: a
    charged reading's meter query does), is that plus the amount — the UPDATE then has no RETURNING,
    which doubled its cost.
    """
    start_text = iso(period_start) if period_start else None
    end_text = iso(period_end) if period_end else None
    at = end_text if now is period_end else iso(now)  # a charge is posted at its period's end
    if kind == "charge" and at is end_text and external_id is None and debt_minor == 0:
        # every charged reading: the constants in the SQL text, created_at bound once (?7 twice)
        cur = conn.execute(
            _INSERT_CHARGE_ENTRY,
            (account_id, amount_minor, energy_wh, meter_id, reading_id, start_text, end_text, detail_json),
        )
    elif external_id is None:
        cur = conn.execute(
            _INSERT_ENTRY_NO_EXTERNAL,
            (account_id, kind, amount_minor, energy_wh, meter_id, reading_id, start_text, end_text, detail_json, at, debt_minor),
        )
    else:
        cur = conn.execute(
            _INSERT_ENTRY,
            (
                account_id,
                kind,
                amount_minor,
                energy_wh,
                meter_id,
                reading_id,
                external_id,
                start_text,
                end_text,
                detail_json,
                at,
                debt_minor,
            ),
        )
    entry_id = cur.lastrowid
    if cycle:
        update = _MOVE_BALANCE_AND_CYCLE
        params: tuple[object, ...] = (amount_minor, debt_minor, at, *cycle, account_id)
    else:
        update = _MOVE_BALANCE
        params = (amount_minor, debt_minor, at, account_id)
    assert entry_id is not None
    if balance_before is not None:
        if conn.execute(update, params).rowcount != 1:
            raise LookupError(f"no account '{account_id}'")
        return new_record(PostedEntry, (entry_id, balance_before + amount_minor))
    # fetchall: a RETURNING statement must run to its end before the commit
    rows = conn.execute(update + " RETURNING balance_minor", params).fetchall()
    if not rows:
        raise LookupError(f"no account '{account_id}'")
    return PostedEntry(entry_id, int(rows[0][0]))
