"""The connection, its pragmas and the one way to write: ``with store.tx(): ...``.

Every change that moves money or power happens inside ``tx()`` — a ``BEGIN IMMEDIATE`` transaction
committed with ``synchronous=FULL`` — together with the outbox message and audit event that report it,
so a crash leaves the database before or after the whole change, never between.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.core.errors import OperationFailed
from gateway.store import chain, epochs
from gateway.store.migrations import migrate

if TYPE_CHECKING:  # imported on first use of ``Store.db``: the daemon never uses it
    import sqlite_utils


class StoreError(OperationFailed, RuntimeError):
    """The database cannot be opened or written (full disk, locked, corrupt)."""


class Store:
    """Owns one SQLite connection.  Not shared across threads: the daemon uses it from its loop."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._db: sqlite_utils.Database | None = None
        self._outer_durable = True  # the durability of the outermost open block
        self._depth = 0  # how many ``tx()`` blocks are open (nested ones join the outermost)
        self._durable_tx = Transaction(self, durable=True)
        self._fast_tx = Transaction(self, durable=False)

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils' view of the connection, made on first use: the daemon never asks for it, and
        importing sqlite-utils (with its plugin manager and date parser) costs a running daemon about
        5 MB of memory for nothing."""
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def tx(self, *, durable: bool = True) -> Transaction:
        """One transaction, durable unless asked otherwise: ``with store.tx() as conn: ...``.  Nested
        use joins the outer transaction (and its durability).

        ``durable=False`` commits with ``synchronous=NORMAL`` instead of ``FULL``: no fsync.  In WAL
        mode such a commit is still atomic and survives the process being killed (the WAL is in
        the OS's cache); only a power cut or kernel crash before the WAL is next synced can lose it
        — whole, never half — and the next durable commit syncs the WAL file, which carries every
        earlier commit with it (the WAL is appended in order).  So it is only for writes whose loss
        is harmless: marking outbox messages delivered (a lost mark sends the message again, and
        the head office deduplicates by seq).  Never for money, power or the outbox rows themselves.
        """
        return self._durable_tx if durable else self._fast_tx

    def _rollback(self) -> None:
        """Roll back what is open.  SQLite may already have rolled back itself (a full disk fails the
        COMMIT and ends the transaction); a second ROLLBACK would hide the real error."""
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.OperationalError:
                pass

    @property
    def in_tx(self) -> bool:
        return self._depth > 0

    def one(self, sql: str, *params: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.conn.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, params).fetchall())

    def scalar(self, sql: str, *params: Any) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def meta_get(self, key: str) -> str | None:
        row = self.one("SELECT value FROM meta WHERE key = ?", key)
        return None if row is None else str(row["value"])

    def meta_set(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def close(self) -> None:
        self.conn.close()


class Transaction:
    """What ``Store.tx()`` returns: a context manager for one transaction (or a nested block of one).

    A class rather than ``@contextmanager``: the daemon commits every charged reading alone, and the
    generator, its wrapper object and the ``next()`` calls on entry and exit were a measurable share
    of a reading's Python.  Holds no state of its own (the store counts the open blocks), so each
    store keeps one per durability and hands it out again; ``with`` blocks nest freely.
    """

    __slots__ = ("durable", "store")

    def __init__(self, store: Store, *, durable: bool) -> None:
        self.store = store
        self.durable = durable

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        conn = store.conn
        if store._depth:  # nested: join the outer transaction
            store._depth += 1
            return conn
        if not self.durable:
            conn.execute("PRAGMA synchronous = NORMAL")  # outside a transaction, as SQLite wants
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not self.durable:
                conn.execute("PRAGMA synchronous = FULL")  # every other commit stays durable
            raise StoreError(f"cannot start a transaction on {store.path}: {exc}") from None
        store._depth = 1
        store._outer_durable = self.durable
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        store = self.store
        if store._depth > 1:  # a nested block: the outermost one commits or rolls back
            store._depth -= 1
            return
        store._depth = 0
        durable = store._outer_durable
        try:
            if exc_type is not None:
                store._rollback()
                return  # the exception propagates
            try:
                store.conn.execute("COMMIT")
            except sqlite3.OperationalError as err:
                store._rollback()
                raise StoreError(f"cannot commit to {store.path}: {err}") from None
        finally:
            if not durable:
                store.conn.execute("PRAGMA synchronous = FULL")  # every other commit stays durable


def dumps(obj: Any) -> str:
    """Compact, stable JSON for stored detail columns."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def open_store(
    path: str | Path, *, readonly: bool = False, on_migrate: Callable[[int, int], None] | None = None
) -> Store:
    """Open (creating and migrating if needed) the gateway database; ``on_migrate(from, to)`` is told
    before each schema step on an existing database (``migrations.migrate``)."""
    p = Path(path)
    if readonly:
        if not p.exists():
            raise StoreError(f"no database at {p} (has the daemon ever run with this configuration?)")
        uri = f"file:{p}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    else:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {p.parent}: {exc.strerror}") from None
        try:
            conn = sqlite3.connect(p, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise StoreError(f"cannot open {p}: {exc}") from None
    conn.row_factory = sqlite3.Row
    chain.register(conn)  # the hash chain's triggers call it (gateway/store/chain.py)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            migrate(conn, on_migrate)
            epochs.check_restored(conn, p)  # a restored backup starts a new outbox epoch (docs/mqtt.md)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{p} is not a usable pmg database: {exc}") from None
    return Store(conn, p)
