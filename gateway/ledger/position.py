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


# The reading the meter's last charge entry cites, as a scalar subquery over a meter row ``m`` (the
# per-reading meter query in ``charging`` embeds it: one statement for the meter and its check).
LAST_CHARGED_READING_SQL = (
    "(SELECT e.reading_id FROM entries e WHERE e.account_id = m.account_id AND e.kind = 'charge' "
    "AND e.meter_id = m.id ORDER BY e.created_at DESC LIMIT 1)"
)
_LAST_CHARGE = (
    "SELECT r.id, r.register_wh, r.taken_at, r.tariffs_json, r.meter_id FROM entries e "
    "JOIN readings r ON r.id = e.reading_id WHERE e.account_id = ? AND e.kind = 'charge' AND e.meter_id = ? "
    "ORDER BY e.created_at DESC LIMIT 1"
)
_READING = "SELECT id, register_wh, taken_at, tariffs_json, meter_id FROM readings WHERE id = ?"


def _position(row: Any, meter_id: str) -> LedgerPosition | None:
    if row is None or row[1] is None or row[4] != meter_id:
        return None
    return LedgerPosition(int(row[0]), int(row[1]), str(row[2]), row[3])


def disagreement(
    conn: sqlite3.Connection,
    meter_id: str,
    account_id: str,
    register_wh: int | None,
    reading_id: int | None,
) -> LedgerPosition | None:
    """The ledger's position when the meter row's (``register_wh`` at ``reading_id``) disagrees with
    it; None when they agree or there is nothing to compare (no charge yet, no position yet).

    A position with no reading (NULL after a meter replacement) re-baselines: it can charge nothing
    twice, so it is not a disagreement."""
    if register_wh is None or reading_id is None:
        return None
    last_charge = _position(conn.execute(_LAST_CHARGE, (account_id, meter_id)).fetchone(), meter_id)
    if last_charge is None:
        return None
    if reading_id == last_charge.reading_id:
        return None if register_wh == last_charge.register_wh else last_charge
    if reading_id < last_charge.reading_id:  # the row went back to a reading before the last charge
        return last_charge
    cited = _position(conn.execute(_READING, (reading_id,)).fetchone(), meter_id)
    if cited is None:  # the row cites a reading that is not this meter's (or none): the charge stands
        return last_charge
    return None if register_wh == cited.register_wh else cited
