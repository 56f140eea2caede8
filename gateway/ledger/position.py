"""A meter's billing position, checked against the ledger before energy is charged from it.

The meter row's ``last_register_wh`` says from which register value the next reading is charged.
It is a cache, and a writable one: rewind it by 300 Wh and the next reading charges those 300 Wh a
second time.  The truth is the ledger: the last charge entry of the meter (append-only and in the
hash chain, docs/ledger.md "Tamper evidence") cites the reading it charged, and that reading's
register is where charging stood.  A later reading that charged nothing (a zero delta, a baseline
after a meter replacement or a technician's rebaseline) may have moved the position since; the meter
row then cites it by ``last_reading_id`` and its register must match.

The check costs one index seek on ``entries_account`` (newest entry first; the account's charges
are the newest rows) and a primary-key read of the reading, so it runs before every charge
(``charging.record_reading``, which embeds both seeks in its meter query and calls ``disagreement``
only when they do not settle it) and for every meter in ``pmg ledger verify``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LedgerPosition:
    """Where the ledger says charging stands: a reading of the meter and its register."""

    reading_id: int
    register_wh: int
    taken_at: str
    tariffs_json: str | None


# How many of the account's newest charge entries are searched for the meter's last charge.  An
# account's meters charge in turn, so the meter's last charge is among the first few; a meter idle
# for long beside busy siblings may have none in the window, and is then checked against the reading
# its row cites alone (the scan stays bounded: this runs before every charge).
CHARGE_WINDOW = 64

# The reading the meter's last charge entry cites, as a scalar subquery over a meter row ``m`` (the
# per-reading meter query in ``charging`` embeds it: one statement for the meter and its check).  The
# window is a co-routine read newest first; the outer LIMIT stops at the first of this meter's.
LAST_CHARGED_READING_SQL = (
    "(SELECT w.reading_id FROM (SELECT e.reading_id, e.meter_id FROM entries e WHERE e.account_id = m.account_id "
    f"AND e.kind = 'charge' ORDER BY e.created_at DESC LIMIT {CHARGE_WINDOW}) w WHERE w.meter_id = m.id LIMIT 1)"
)
_CHARGES = (
    "SELECT e.meter_id, e.reading_id FROM entries e WHERE e.account_id = ? AND e.kind = 'charge' "
    f"ORDER BY e.created_at DESC LIMIT {CHARGE_WINDOW}"
)
_READING = "SELECT id, register_wh, taken_at, tariffs_json, meter_id FROM readings WHERE id = ?"


def _position(row: Any, meter_id: str) -> LedgerPosition | None:
    if row is None or row[1] is None or row[4] != meter_id:
        return None
    return LedgerPosition(int(row[0]), int(row[1]), str(row[2]), row[3])


def _reading(conn: sqlite3.Connection, reading_id: int | None, meter_id: str) -> LedgerPosition | None:
    if reading_id is None:
        return None
    return _position(conn.execute(_READING, (reading_id,)).fetchone(), meter_id)


def last_charged(conn: sqlite3.Connection, meter_id: str, account_id: str) -> LedgerPosition | None:
    """The reading the meter's last charge entry cites, if it is among the account's newest
    ``CHARGE_WINDOW`` charges (the cursor stops at the first of this meter's)."""
    for entry_meter, reading_id in conn.execute(_CHARGES, (account_id,)):
        if entry_meter == meter_id:
            return _reading(conn, reading_id, meter_id)
    return None


def disagreement(
    conn: sqlite3.Connection,
    meter_id: str,
    account_id: str,
    register_wh: int | None,
    reading_id: int | None,
) -> LedgerPosition | None:
    """The ledger's position when the meter row's (``register_wh`` at ``reading_id``) disagrees with
    it; None when they agree or there is nothing to compare.

    A position with no reading (NULL after a meter replacement) re-baselines: it can charge nothing
    twice, so it is not a disagreement."""
    if register_wh is None or reading_id is None:
        return None
    cited = _reading(conn, reading_id, meter_id)
    last_charge = last_charged(conn, meter_id, account_id)
    if last_charge is None:  # no charge in the window: the reading the row cites is the check
        return None if cited is None or cited.register_wh == register_wh else cited
    if reading_id == last_charge.reading_id:
        return None if register_wh == last_charge.register_wh else last_charge
    if reading_id < last_charge.reading_id or cited is None:
        return last_charge  # the row went back before the last charge, or cites no reading of this meter
    return None if register_wh == cited.register_wh else cited
