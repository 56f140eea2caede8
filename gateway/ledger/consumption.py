"""How much an account consumed over a span, and since when its meters were read: the two questions
the forecast (days of credit left) and the risk grade ask of the history.

Both must cost the same with a week of history as with a year of it.  The daemon asks them for every
account every hour (and the risk job for every account every day); a scan over an account's readings
or entries grows with the history — 28 ms per account at a week of one-minute readings, stalling the
event loop for a minute at the top of each hour with 2,000 meters.  So:

- the first reading is found per meter by one index seek (``readings(meter_id, taken_at)``, walked
  in order and stopped at the first billing reading), never by ``MIN`` over a join;
- the energy comes from ``entries_account``, which covers ``(account_id, created_at, kind,
  energy_wh)``: the sum reads the index alone (schema 5), about 0.7 ms for a week of readings.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from gateway.core.timeutil import iso, parse_iso

_FIRST_READ = (
    "SELECT MIN(first) FROM (SELECT (SELECT r.taken_at FROM readings r WHERE r.meter_id = m.id "
    "AND r.taken_at >= ? AND r.taken_at <= ? AND r.outcome IN ('baseline', 'charged') "
    "ORDER BY r.taken_at LIMIT 1) AS first FROM meters m WHERE m.account_id = ?)"
)
_ENERGY = (
    "SELECT COALESCE(SUM(energy_wh), 0) FROM entries WHERE account_id = ? AND created_at > ? "
    "AND created_at <= ? AND kind = 'charge'"
)
_EARLIEST = "0000"  # sorts before every instant text
_LATEST = "9999"  # sorts after every instant text


def first_read_at(
    conn: sqlite3.Connection, account_id: str, since: datetime | None = None, until: datetime | None = None
) -> datetime | None:
    """The earliest baseline or charged reading of the account's meters in ``[since, until]``."""
    row = conn.execute(
        _FIRST_READ,
        (iso(since) if since else _EARLIEST, iso(until) if until else _LATEST, account_id),
    ).fetchone()
    return None if row is None or row[0] is None else parse_iso(row[0])


def charged_energy_wh(conn: sqlite3.Connection, account_id: str, after: datetime, until: datetime) -> int:
    """Energy charged to the account by entries posted in ``(after, until]``."""
    row = conn.execute(_ENERGY, (account_id, iso(after), iso(until))).fetchone()
    return int(row[0])
