"""Payment to power from any process: the daemon re-decides the accounts marked in ``policy_inbox``.

A payment the daemon takes itself (a signed MQTT top-up) is decided in its own transaction.  One
written by another process — ``pmg payment add`` at the office counter, a script — used to wait for the
policy sweep (up to ``POLICY_SWEEP_S``, ten minutes) while the customer sat in the dark.  Now every
transaction that raises an account's available credit leaves a mark in ``policy_inbox`` (the payment
itself, ``gateway.ledger.payments.mark_for_decision``; any other raise, a trigger), and this watcher:

* looks every ``WATCH_POLL_S`` whether any connection committed something: ``PRAGMA data_version``
  changes when *another* connection committed, ``total_changes`` when the daemon's own did (a signed
  ``account`` command raising emergency credit).  Neither costs a query of a table; only then is the
  inbox read, and only a non-empty inbox opens a transaction;
* re-decides each marked account and deletes its mark in the same transaction, so the close command
  is queued (at the head of its bus's queue, ``gateway.runtime.relay``) exactly when the mark goes: a crash
  in between leaves the mark, and the next start processes every mark before polling.

No socket: nothing new to secure, and it works whether the daemon is up, down or restarting.  The
rationale and the measured figures are in docs/enforcement.md ("Payment to power").
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable

from gateway.core.logfields import kv
from gateway.store.db import Store, StoreError

log = logging.getLogger("pmg.payment_watch")

WATCH_POLL_S = 0.1  # how often the database is asked whether anything was committed
MAX_PER_PASS = 200  # accounts re-decided per transaction (a backlog after a long stop goes in slices)

# Re-decide one account inside the caller's transaction: (conn, account_id, payment_id or None).
Decide = Callable[[sqlite3.Connection, str, str | None], None]


def clear(conn: sqlite3.Connection, account_id: str) -> None:
    """Delete an account's mark inside the transaction that has just re-decided it."""
    conn.execute("DELETE FROM policy_inbox WHERE account_id = ?", (account_id,))


def pending(conn: sqlite3.Connection) -> int:
    """How many accounts wait to be re-decided (for tests, ``pmg status`` and the benchmark)."""
    return int(conn.execute("SELECT COUNT(*) FROM policy_inbox").fetchone()[0])


class PaymentWatch:
    """Drains ``policy_inbox``: all of it at start (``drain_all``), then whenever a commit may have marked
    an account (``run``)."""

    def __init__(
        self,
        store: Store,
        decide: Decide,
        wake: Callable[[], None],
        *,
        poll_s: float = WATCH_POLL_S,
        check_time: Callable[[], object] | None = None,
        on_commit: Callable[[], object] | None = None,
    ):
        self.store = store
        self.decide = decide
        self.wake = wake
        # Before decisions: whether the wall clock is still to be believed (gateway.runtime.timeguard),
        # so a payment decided right after a clock step cannot cut on the stepped clock.
        self.check_time = check_time
        self.poll_s = poll_s
        # Also told of every commit seen (the read requests' drain, gateway.runtime.read_watch): one
        # look at data_version serves both, not a poll loop each.
        self.on_commit = on_commit
        self._seen: tuple[int, int] | None = None
        self._again = True  # look at the inbox on the first tick whatever the counters say

    def _committed(self) -> bool:
        """Whether any connection committed since the last look, without reading a table."""
        conn = self.store.conn
        now = (int(conn.execute("PRAGMA data_version").fetchone()[0]), conn.total_changes)
        changed = now != self._seen
        self._seen = now
        return changed

    def drain(self) -> int:
        """Re-decide up to ``MAX_PER_PASS`` marked accounts, clearing their marks in the same
        transaction; returns how many.  Payments go first, oldest first."""
        conn = self.store.conn
        if conn.execute("SELECT 1 FROM policy_inbox LIMIT 1").fetchone() is None:
            self._again = False  # nothing left: the next look waits for a commit (it looked 10 times a second)
            return 0
        if self.check_time is not None:
            self.check_time()
        with self.store.tx() as tx:
            rows = tx.execute(
                "SELECT account_id, payment_id FROM policy_inbox "
                "ORDER BY payment_id IS NULL, marked_at, account_id LIMIT ?",
                (MAX_PER_PASS,),
            ).fetchall()
            for account_id, payment_id in rows:
                tx.execute("SAVEPOINT inbox")
                try:
                    self.decide(tx, account_id, payment_id)
                except Exception:
                    # One account that cannot be decided must not hold up the others; the periodic
                    # sweep decides it again, and the failure is in the log.
                    tx.execute("ROLLBACK TO inbox")
                    log.exception("account could not be re-decided after its credit rose", extra=kv(account=account_id))
                tx.execute("RELEASE inbox")
                clear(tx, account_id)
        if rows:
            log.debug("re-decided %d account(s) whose credit rose", len(rows))
            self.wake()
        self._again = len(rows) == MAX_PER_PASS
        return len(rows)

    def drain_all(self) -> int:
        """Every mark, slice by slice: at start, before the first poll (a backlog left by payments taken
        while the daemon was down, or by a configuration that raised emergency credit)."""
        total = 0
        while (done := self.drain()) == MAX_PER_PASS:
            total += done
        return total + done

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            committed = self._committed()
            if committed and self.on_commit is not None:
                try:
                    self.on_commit()
                except StoreError as exc:  # the requests stay pending: the next commit tries again
                    log.error("read requests could not be processed: %s", exc)
            if not (committed or self._again):
                continue
            try:
                self.drain()
            except StoreError as exc:  # locked or full: the marks stay, try again on the next tick
                log.error("payments waiting for a decision could not be processed: %s", exc)
                self._again = True
                continue
            # Our own commit is not news; another connection's since the look above still is (its
            # data_version is left as seen before the inbox was read).
            if self._seen is not None:
                self._seen = (self._seen[0], self.store.conn.total_changes)
