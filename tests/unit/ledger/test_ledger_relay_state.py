"""The relay state a reading carries is older than a read-back confirmed after it (gateway.ledger.charging).

Readings are committed in batches, so a reading taken just before a relay operation can be charged just
after the enforcer stored the operation's read-back.  Its relay state must not overwrite the newer one;
a reading taken after the read-back always updates it, and a read-back far ahead of the readings (a
clock stepped forward at the confirmation, then back) freezes nothing beyond ``STALE_RELAY_S``.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

from support.ledger_books import T0, make_book, new_ledger, reading

from drivers.base import RelayState
from gateway.core.timeutil import iso
from gateway.ledger.charging import STALE_RELAY_S, record_reading


def _state(tmp_path: Path, readback_after_s: float, reading_after_s: float) -> str:
    store = new_ledger(tmp_path / "pmg.db")
    book = make_book(tmp_path)
    try:
        with store.tx() as conn:
            first = dataclasses.replace(reading(1000, T0), relay=RelayState.OPEN)
            record_reading(conn, "m1", first, book.pricer(conn), max_power_w=10**6)
            # the enforcer's read-back after a close, as gateway.runtime.relay stores it
            conn.execute(
                "UPDATE meters SET relay = 'closed', relay_at = ? WHERE id = 'm1'",
                (iso(T0 + timedelta(seconds=readback_after_s)),),
            )
            late = dataclasses.replace(
                reading(1001, T0 + timedelta(seconds=reading_after_s)), relay=RelayState.OPEN
            )
            record_reading(conn, "m1", late, book.pricer(conn), max_power_w=10**6)
        return str(store.scalar("SELECT relay FROM meters WHERE id = 'm1'"))
    finally:
        store.close()


def test_a_reading_older_than_the_read_back_does_not_undo_it(tmp_path: Path) -> None:
    assert _state(tmp_path, readback_after_s=10, reading_after_s=5) == "closed"


def test_a_reading_after_the_read_back_is_the_relay_state(tmp_path: Path) -> None:
    assert _state(tmp_path, readback_after_s=10, reading_after_s=20) == "open"


def test_a_read_back_far_ahead_of_the_readings_freezes_nothing(tmp_path: Path) -> None:
    assert _state(tmp_path, readback_after_s=STALE_RELAY_S + 3600, reading_after_s=5) == "open"
