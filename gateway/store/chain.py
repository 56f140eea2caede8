"""The hash chain's SQL functions and its head (docs/ledger.md, "Tamper evidence").

The chain itself is written by triggers (the last entry of ``migrations.MIGRATIONS``): every insert
into ``entries``, ``payments`` and ``events``, and every insert or change of a ``relay_commands`` row,
appends one link to the ``chain`` table in the same transaction, so a crash leaves the row and its
link together or neither.  SQLite has no SHA-256 of its own, so the triggers call the functions
registered here; every connection pmg opens gets them (``db.open_store``).  A connection without them
(the ``sqlite3`` shell) cannot write the chained tables at all: a forger has to drop the triggers
first, and the row then sits outside the chain, where ``pmg ledger verify`` finds it.

A link's hash is ``sha256(previous hash + "\\n" + table + "\\n" + canonical JSON)``, hex; the first
link ("genesis") has no previous hash.  Canonical JSON is SQLite's ``json_object`` over the row's
columns in name order (compact, no whitespace), the same expression for the trigger that writes a
link and for the check that recomputes it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass

# The chained tables and, for each, the canonical JSON of a row as an SQL expression over its
# columns.  Must match the trigger bodies of the tamper-evidence migration (a link written by the
# trigger is recomputed from this expression by ``pmg ledger verify``; the ledger tests check both
# agree).  A column added to one of these tables later is not covered until a new migration
# extends the chain.
CANONICAL: dict[str, str] = {
    "entries": (
        "json_object('account_id', account_id, 'amount_minor', amount_minor, 'created_at', created_at, "
        "'debt_minor', debt_minor, 'detail_json', detail_json, 'energy_wh', energy_wh, "
        "'external_id', external_id, 'id', id, 'kind', kind, 'meter_id', meter_id, "
        "'period_end', period_end, 'period_start', period_start, 'reading_id', reading_id)"
    ),
    "payments": (
        "json_object('account_id', account_id, 'amount_minor', amount_minor, 'payment_id', payment_id, "
        "'received_at', received_at, 'result_json', result_json, 'source', source)"
    ),
    "events": (
        "json_object('account_id', account_id, 'actor', actor, 'at', at, 'detail_json', detail_json, "
        "'id', id, 'kind', kind, 'meter_id', meter_id, 'severity', severity)"
    ),
    "relay_commands": (
        "json_object('action', action, 'actor', actor, 'attempts', attempts, 'created_at', created_at, "
        "'id', id, 'meter_id', meter_id, 'not_before', not_before, 'outcome', outcome, "
        "'payment_id', payment_id, 'reason', reason, 'status', status, "
        "'trace_json', trace_json, 'updated_at', updated_at)"
    ),
}
# Relay commands change (status, attempts, outcome); the genesis digest covers the columns that never do.
GENESIS_CANONICAL: dict[str, str] = {
    **{t: CANONICAL[t] for t in ("entries", "events", "payments")},
    "relay_commands": (
        "json_object('action', action, 'actor', actor, 'created_at', created_at, 'id', id, "
        "'meter_id', meter_id, 'payment_id', payment_id, 'reason', reason)"
    ),
}
# Tables whose links keep the row's content (it changes later; each version is a link).
SNAPSHOT_TABLES = frozenset({"relay_commands"})


def link_hash(prev: str | None, table: str, content: str) -> str:
    """One link's hash: the previous link's hash, the table and the row's canonical JSON."""
    return hashlib.sha256(f"{prev or ''}\n{table}\n{content}".encode()).hexdigest()


class _Digest:
    """``pmg_digest(rowid, json)``: SHA-256 of the rows in rowid order (one ``rowid\\tjson\\n`` each).

    A full scan of a rowid table visits rows in rowid order; the check refuses anything else, so the
    genesis digest can never silently depend on a query plan."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._last: int | None = None

    def step(self, rowid: int, content: str) -> None:
        if self._last is not None and rowid <= self._last:
            raise ValueError("pmg_digest needs rows in rowid order")
        self._last = rowid
        self._h.update(f"{rowid}\t{content}\n".encode())

    def finalize(self) -> str:
        return self._h.hexdigest()


def register(conn: sqlite3.Connection) -> None:
    """Give a connection the functions the chain's triggers and checks call."""
    conn.create_function("pmg_chain_link", 3, link_hash, deterministic=True)
    conn.create_aggregate("pmg_digest", 2, _Digest)  # type: ignore[arg-type]  # typeshed: one-argument only


@dataclass(frozen=True)
class Head:
    """The chain's last link: what the gateway publishes and the head office keeps."""

    hash: str
    length: int

    def __str__(self) -> str:
        return f"{self.hash}:{self.length}"


def head(conn: sqlite3.Connection) -> Head | None:
    """The last link (one index seek), or None before the chain exists (an older schema)."""
    try:
        row = conn.execute("SELECT hash, seq FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:
        return None
    return None if row is None else Head(str(row[0]), int(row[1]))
