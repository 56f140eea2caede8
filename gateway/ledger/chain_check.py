"""``pmg ledger verify``'s check of the hash chain (docs/ledger.md, "Tamper evidence").

Walks the chain from its genesis link and recomputes every link from the row it covers: a row changed
after it was chained, a chained row deleted, a link removed from the middle, a row written with the
chain's triggers dropped (so outside the chain) and a change to history older than the chain (the
genesis digest) each give one line naming the table and row.  A forger who rewrites the rows *and*
recomputes every hash after them leaves a chain that is consistent in itself; only a head seen
earlier (``--expect-head HASH:LENGTH``, as published in every status message) catches that: the
chain's first LENGTH links must still hash to HASH.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from gateway.core.errors import UserError
from gateway.store.chain import CANONICAL, GENESIS_CANONICAL, SNAPSHOT_TABLES, link_hash
from gateway.store.db import Store

MAX_REPORTED_UNCHAINED = 20  # rows outside the chain listed per table (then a count)
# The triggers that keep the chained tables append-only and write the chain: a missing one was dropped
# (rows written since then are outside the chain, and are listed too).
GUARD_TRIGGERS = (
    "entries_append_only_u",
    "entries_append_only_d",
    "payments_append_only_u",
    "payments_append_only_d",
    "events_append_only_u",
    "events_append_only_d",
    "chain_append_only_u",
    "chain_append_only_d",
    "chain_entries",
    "chain_payments",
    "chain_events",
    "chain_relay_commands_i",
    "chain_relay_commands_u",
)


@dataclass(frozen=True)
class ChainProblem:
    """One finding of the chain check, printed as one line."""

    subject: str  # e.g. "entries row 5"
    text: str

    def __str__(self) -> str:
        return f"chain: {self.subject} {self.text}"


class BadHead(UserError, ValueError):
    """``--expect-head`` that is not ``HASH`` or ``HASH:LENGTH``."""


def parse_head(text: str) -> tuple[str, int | None]:
    """``HASH`` or ``HASH:LENGTH`` (64 hex digits, a positive length) as the head office keeps it."""
    digest, _, length = text.strip().partition(":")
    digest = digest.lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise BadHead(f"--expect-head {text!r}: the hash must be 64 hex digits (HASH or HASH:LENGTH)")
    if not length:
        return digest, None
    if not length.isdigit() or int(length) < 1:
        raise BadHead(f"--expect-head {text!r}: the length must be a whole number of links >= 1")
    return digest, int(length)


def _walk_sql() -> str:
    current = " ".join(
        f"WHEN '{table}' THEN (SELECT {expr} FROM {table} WHERE rowid = c.row_id)"
        for table, expr in CANONICAL.items()
        if table not in SNAPSHOT_TABLES
    )
    return f"SELECT c.seq, c.tbl, c.row_id, c.content, c.hash, CASE c.tbl {current} END FROM chain c ORDER BY c.seq"


def check_chain(store: Store, expect: tuple[str, int | None] | None = None) -> list[ChainProblem]:
    """Every break in the chain (empty = intact); with ``expect``, also whether a head seen earlier
    is still the hash of the chain's first LENGTH links (or of some link, without a length)."""
    conn = store.conn
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'chain'").fetchone() is None:
        return [ChainProblem("table", "is missing: no tamper evidence (has the daemon migrated this database?)")]
    present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    out = [ChainProblem(f"trigger {name}", "is missing (dropped)") for name in GUARD_TRIGGERS if name not in present]
    prev: str | None = None  # the stored hash of the previous link: each link is checked on its own
    true_prev: str | None = None  # the hash recomputed from the rows alone, from genesis on
    expected_seq = 1
    genesis: dict[str, dict[str, object]] = {}
    snapshots: dict[int, tuple[int, str]] = {}  # relay command rowid -> (last link, its content)
    head_found = expect is None
    length = 0
    for seq, table, row_id, content, stored, current in conn.execute(_walk_sql()):
        length = seq
        if seq != expected_seq:
            out.append(ChainProblem(f"links {expected_seq}..{seq - 1}", "are missing (deleted from the chain)"))
        expected_seq = seq + 1
        subject = f"{table} row {row_id}" if row_id is not None else f"{table} link"
        if seq == 1:
            if table != "genesis":
                out.append(ChainProblem("link 1", f"is {table}, not the genesis link"))
            else:
                genesis = json.loads(content)
                out.extend(_check_genesis(conn, genesis))
        elif table == "genesis" or table not in CANONICAL:
            out.append(ChainProblem(f"link {seq}", f"has an unknown table {table!r}"))
        if table in SNAPSHOT_TABLES:
            current = content
            snapshots[int(row_id)] = (seq, content)
        elif table == "genesis":
            current = content
        if current is None:
            out.append(ChainProblem(subject, f"is missing (deleted after it was chained at link {seq})"))
            prev = true_prev = stored
        else:
            if link_hash(prev, table, current) != stored:
                what = "was altered in the chain" if content is not None else "changed after it was chained"
                out.append(ChainProblem(subject, f"{what} (link {seq})"))
            prev, true_prev = stored, link_hash(true_prev, table, current)
        if expect is not None and not head_found:
            want, at = expect
            head_found = true_prev == want and (at is None or at == seq)
            if at == seq and not head_found:
                out.append(ChainProblem(f"links 1..{seq}", f"no longer hash to the expected head {want} (history rewritten)"))
                head_found = True  # reported
    if length == 0:
        out.append(ChainProblem("genesis link", "is missing (the chain is empty)"))
    if expect is not None and not head_found:
        want, at = expect
        if at is not None:
            out.append(ChainProblem(f"link {at}", f"is missing: the chain has {length} links (links removed from its end)"))
        else:
            out.append(ChainProblem("head", f"{want} is not the hash of any link (history rewritten)"))
    out.extend(_check_snapshots(conn, snapshots))
    out.extend(_check_unchained(conn, genesis))
    return out


def _check_genesis(conn: sqlite3.Connection, genesis: dict[str, dict[str, object]]) -> list[ChainProblem]:
    """The rows older than the chain must still digest to what the genesis link recorded."""
    out: list[ChainProblem] = []
    for table, expr in GENESIS_CANONICAL.items():
        recorded = genesis.get(table) or {}
        last = recorded.get("last_rowid")
        rows, digest = conn.execute(
            f"SELECT COUNT(*), pmg_digest(rowid, {expr}) FROM {table} WHERE rowid <= ?", (last if last is not None else 0,)
        ).fetchone()
        if rows != recorded.get("rows") or (rows and digest != recorded.get("sha256")):
            out.append(
                ChainProblem(
                    f"{table} rows up to {last}" if last is not None else f"{table} rows before the chain",
                    f"changed since the chain began (genesis: {recorded.get('rows')} rows, now {rows})",
                )
            )
    return out


def _check_snapshots(conn: sqlite3.Connection, snapshots: dict[int, tuple[int, str]]) -> list[ChainProblem]:
    """A relay command's row must be its last chained version."""
    out: list[ChainProblem] = []
    expr = CANONICAL["relay_commands"]
    for row_id, (seq, content) in sorted(snapshots.items()):
        row = conn.execute(f"SELECT {expr} FROM relay_commands WHERE rowid = ?", (row_id,)).fetchone()
        if row is None:
            out.append(ChainProblem(f"relay_commands row {row_id}", f"is missing (deleted after link {seq})"))
        elif row[0] != content:
            out.append(ChainProblem(f"relay_commands row {row_id}", f"changed outside the chain (last chained at link {seq})"))
    return out


def _check_unchained(conn: sqlite3.Connection, genesis: dict[str, dict[str, object]]) -> list[ChainProblem]:
    """Rows newer than the genesis link that no link covers: written with the triggers dropped."""
    out: list[ChainProblem] = []
    for table in CANONICAL:
        last = (genesis.get(table) or {}).get("last_rowid")
        rows = conn.execute(
            f"SELECT rowid FROM {table} WHERE rowid > ? AND rowid NOT IN "
            "(SELECT row_id FROM chain WHERE tbl = ?) ORDER BY rowid",
            (last if last is not None else 0, table),
        ).fetchall()
        for (row_id,) in rows[:MAX_REPORTED_UNCHAINED]:
            out.append(ChainProblem(f"{table} row {row_id}", "is not in the chain (written with its triggers dropped)"))
        if len(rows) > MAX_REPORTED_UNCHAINED:
            out.append(ChainProblem(table, f"has {len(rows) - MAX_REPORTED_UNCHAINED} more rows outside the chain"))
    return out

