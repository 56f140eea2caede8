"""The decision inbox and its watcher (gateway.runtime.payment_watch; docs/enforcement.md, "Payment to power").

Real SQLite files and two connections, as a running daemon and ``pmg payment add`` have; the watcher
runs on a real event loop with a short tick.  What it decides is recorded by the ``decide`` it is
given (the daemon gives it the policy engine; tests/integration/test_payment_to_power.py runs that end to end).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.waiting import async_wait_for

from gateway.ledger.accounts import ensure_account, post_entry
from gateway.ledger.payments import PaymentError, apply_payment
from gateway.runtime.payment_watch import MAX_PER_PASS, PaymentWatch, pending
from gateway.store.db import Store, open_store

NOW = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)


def _accounts(store: Store, n: int) -> None:
    with store.tx() as conn:
        for i in range(n):
            ensure_account(conn, f"a{i}", tariff_id="flat-cn", currency="CNY", now=NOW)


def _inbox(store: Store) -> list[tuple[str, str | None]]:
    return [(r[0], r[1]) for r in store.all("SELECT account_id, payment_id FROM policy_inbox ORDER BY account_id")]


def test_a_payment_marks_its_account_in_its_own_transaction(tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    _accounts(store, 1)
    with store.tx() as conn:
        apply_payment(conn, "p1", "a0", 500, NOW, source="test")
        apply_payment(conn, "p2", "a0", 500, NOW, source="test")
    assert _inbox(store) == [("a0", "p2")]  # one mark per account; the latest payment's id
    with pytest.raises(PaymentError), store.tx() as conn:
        apply_payment(conn, "p3", "nobody", 500, NOW, source="test")
    assert _inbox(store) == [("a0", "p2")]  # a refused payment marks nothing
    with store.tx() as conn:
        conn.execute("DELETE FROM policy_inbox")
        apply_payment(conn, "p1", "a0", 500, NOW, source="test")  # a replay applies nothing ...
    assert _inbox(store) == []  # ... and asks for no decision
    store.close()


def test_any_raise_of_available_credit_marks_the_account_and_nothing_else_does(tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    _accounts(store, 1)
    with store.tx() as conn:
        post_entry(conn, "a0", "charge", -300, NOW, period_end=NOW)  # consumption: credit falls
        ensure_account(conn, "a0", tariff_id="flat-cn", currency="CNY", now=NOW, name="renamed")
    assert _inbox(store) == []
    with store.tx() as conn:  # a signed account command granting emergency credit
        ensure_account(conn, "a0", tariff_id="flat-cn", currency="CNY", now=NOW, emergency_credit_minor=500)
    assert _inbox(store) == [("a0", None)]
    with store.tx() as conn:
        conn.execute("DELETE FROM policy_inbox")
        ensure_account(conn, "a0", tariff_id="flat-cn", currency="CNY", now=NOW, emergency_credit_minor=200)
        post_entry(conn, "a0", "adjustment", 100, NOW, external_id="goodwill")  # a refund raises it
    assert _inbox(store) == [("a0", None)]
    store.close()


def _watch(store: Store, decided: list[tuple[str, str | None]], wakes: list[int]) -> PaymentWatch:
    def decide(conn: object, account_id: str, payment_id: str | None) -> None:
        if account_id == "broken":
            raise LookupError("no meter")
        decided.append((account_id, payment_id))

    return PaymentWatch(store, decide, lambda: wakes.append(1), poll_s=0.01)


def test_the_watcher_decides_what_another_connection_committed_and_clears_the_marks(tmp_path: Path) -> None:
    daemon = open_store(tmp_path / "pmg.db")
    counter = open_store(tmp_path / "pmg.db")  # pmg payment add's connection
    _accounts(daemon, 3)
    daemon.conn.execute("DELETE FROM policy_inbox")
    decided: list[tuple[str, str | None]] = []
    wakes: list[int] = []
    watch = _watch(daemon, decided, wakes)

    async def scenario() -> None:
        task = asyncio.create_task(watch.run())
        try:
            await asyncio.sleep(0.05)
            assert decided == [] and wakes == []  # nothing committed: nothing decided
            with counter.tx() as conn:
                apply_payment(conn, "cash-1", "a1", 1000, NOW, source="cli:counter")
            await async_wait_for(lambda: decided, timeout=5, what="the payment decided")
            assert decided == [("a1", "cash-1")]
            assert pending(daemon.conn) == 0 and wakes == [1]
            with counter.tx() as conn:
                apply_payment(conn, "cash-2", "a2", 1000, NOW, source="cli:counter")
            await async_wait_for(lambda: len(decided) == 2, timeout=5, what="the second payment decided")
            assert decided[1] == ("a2", "cash-2")
            await asyncio.sleep(0.05)
            assert len(decided) == 2  # each mark once
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    daemon.close()
    counter.close()


def test_the_daemons_own_commit_is_noticed_too(tmp_path: Path) -> None:
    """A signed account command commits on the daemon's own connection, which data_version does not
    report: the watcher also notices the connection's own changes."""
    store = open_store(tmp_path / "pmg.db")
    _accounts(store, 1)
    store.conn.execute("DELETE FROM policy_inbox")
    decided: list[tuple[str, str | None]] = []
    watch = _watch(store, decided, [])

    async def scenario() -> None:
        task = asyncio.create_task(watch.run())
        try:
            await asyncio.sleep(0.05)
            with store.tx() as conn:
                ensure_account(conn, "a0", tariff_id="flat-cn", currency="CNY", now=NOW, emergency_credit_minor=500)
            await async_wait_for(lambda: decided, timeout=5, what="the emergency credit decided")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert decided == [("a0", None)] and pending(store.conn) == 0
    store.close()


def test_a_backlog_is_decided_in_slices_and_one_bad_account_holds_up_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    _accounts(store, MAX_PER_PASS + 5)
    with store.tx() as conn:
        conn.execute("DELETE FROM policy_inbox")
        ensure_account(conn, "broken", tariff_id="flat-cn", currency="CNY", now=NOW)
        apply_payment(conn, "p-broken", "broken", 100, NOW, source="test")
        for i in range(MAX_PER_PASS + 5):
            apply_payment(conn, f"p{i}", f"a{i}", 100, NOW, source="test")
    decided: list[tuple[str, str | None]] = []
    wakes: list[int] = []
    watch = _watch(store, decided, wakes)
    assert watch.drain() == MAX_PER_PASS  # one slice per transaction ...
    assert pending(store.conn) == 6

    async def scenario() -> None:
        task = asyncio.create_task(watch.run())
        try:
            await async_wait_for(lambda: pending(store.conn) == 0, timeout=5, what="the backlog decided")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert len(decided) == MAX_PER_PASS + 5  # every account but the broken one, whose mark is gone too
    assert ("broken", "p-broken") not in decided
    store.close()


def test_at_start_every_mark_is_processed(tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    _accounts(store, 2 * MAX_PER_PASS + 1)
    with store.tx() as conn:
        for i in range(2 * MAX_PER_PASS + 1):
            apply_payment(conn, f"p{i}", f"a{i}", 100, NOW, source="test")
    decided: list[tuple[str, str | None]] = []
    wakes: list[int] = []
    assert _watch(store, decided, wakes).drain_all() == 2 * MAX_PER_PASS + 1
    assert pending(store.conn) == 0 and len(wakes) == 3
    assert decided[0] == ("a0", "p0")  # by time, then account: a stable order
    store.close()


def test_with_nothing_committed_the_inbox_is_not_read_again(tmp_path: Path) -> None:
    """An idle gateway's watcher asks only ``data_version``; it read the inbox on every tick (10 a
    second) because an empty inbox left the "look again" flag of the first tick set."""
    store = open_store(tmp_path / "pmg.db")
    _accounts(store, 1)
    store.conn.execute("DELETE FROM policy_inbox")
    watch = _watch(store, [], [])
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)

    async def scenario() -> None:
        task = asyncio.create_task(watch.run())
        try:
            await async_wait_for(
                lambda: sum("data_version" in s for s in statements) >= 10, timeout=5, what="ten ticks"
            )
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    store.conn.set_trace_callback(None)
    assert sum("policy_inbox" in s for s in statements) == 1  # the first tick's look only
    store.close()
