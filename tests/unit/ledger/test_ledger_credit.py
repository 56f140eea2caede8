"""Emergency credit, arrears and debt recovery: how a payment is split, and that the split is visible."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.ledger_books import T0, new_ledger

from gateway.ledger.accounts import balance_minor
from gateway.ledger.credit import CreditError, add_debt, parse_share, post_adjustment, split_payment
from gateway.ledger.payments import PaymentConflict, apply_payment
from gateway.ledger.verify import verify


def _dump(store) -> list[tuple]:  # type: ignore[no-untyped-def]
    return [tuple(r) for r in store.all("SELECT * FROM entries ORDER BY id")] + [
        tuple(r) for r in store.all("SELECT id, balance_minor, debt_minor, debt_recovery_share FROM accounts")
    ]


def test_split_repays_emergency_credit_first_then_arrears_then_the_debt_share() -> None:
    # balance -700 with a 500 emergency limit: 500 emergency, 200 arrears; debt 10,000 at 25 %
    split = split_payment(1000, -700, 500, 10_000, Decimal("0.25"))
    assert split.emergency_repayment_minor == 500
    assert split.arrears_repayment_minor == 200
    assert split.debt_recovery_minor == 75  # 25 % of the 300 left above zero
    assert split.credit_minor == 225


def test_split_rounds_recovery_down_and_never_beyond_the_debt() -> None:
    assert split_payment(999, 0, 0, 10_000, Decimal("0.25")).debt_recovery_minor == 249  # 249.75 -> 249
    assert split_payment(1000, 0, 0, 40, Decimal("0.25")).debt_recovery_minor == 40
    small = split_payment(200, -500, 500, 10_000, Decimal("0.25"))
    assert (small.emergency_repayment_minor, small.debt_recovery_minor, small.credit_minor) == (200, 0, 0)


@given(
    amount=st.integers(1, 10**7),
    balance=st.integers(-(10**6), 10**6),
    limit=st.integers(0, 10**5),
    debt=st.integers(0, 10**6),
    share=st.decimals(min_value=0, max_value=1, places=3),
)
def test_split_parts_always_sum_to_the_payment(
    amount: int, balance: int, limit: int, debt: int, share: Decimal
) -> None:
    s = split_payment(amount, balance, limit, debt, share)
    parts = (s.emergency_repayment_minor, s.arrears_repayment_minor, s.debt_recovery_minor, s.credit_minor)
    assert sum(parts) == amount
    assert all(p >= 0 for p in parts)
    assert s.debt_recovery_minor <= debt
    # nothing goes to the debt while the balance is still below zero after the repayments
    if balance + s.emergency_repayment_minor + s.arrears_repayment_minor < 0:
        assert s.debt_recovery_minor == 0 and s.credit_minor == 0


def test_payment_on_emergency_credit_with_debt_says_where_the_money_went(tmp_path: Path) -> None:
    store = new_ledger(tmp_path / "l.db", emergency_minor=500)
    with store.tx() as conn:
        post_adjustment(conn, "adj-1", "acc1", -300, T0, reason="used emergency credit", actor="test")
        assert add_debt(
            conn, "debt-1", "acc1", 10_000, T0, reason="old supplier", actor="hq", share=Decimal("0.25")
        )
        result = apply_payment(conn, "pay-1", "acc1", 1000, T0, source="test")
    assert (result.emergency_repayment_minor, result.arrears_repayment_minor) == (300, 0)
    assert (result.debt_recovery_minor, result.credit_minor) == (175, 525)
    assert result.balance_minor == 525 == balance_minor(store.conn, "acc1")
    assert result.debt_minor == 9825
    kinds = [
        (r["kind"], r["amount_minor"], r["debt_minor"])
        for r in store.all("SELECT * FROM entries ORDER BY id")
    ]
    assert kinds == [
        ("adjustment", -300, 0),
        ("debt", 0, 10_000),
        ("payment", 1000, 0),
        ("debt_recovery", -175, -175),
    ]
    event = store.one("SELECT detail_json FROM events WHERE kind = 'payment_applied'")
    assert (
        '"debt_recovery":"1.75"' in event["detail_json"]
        and '"emergency_repayment":"3.00"' in event["detail_json"]
    )
    assert verify(store) == []

    before = _dump(store)
    with store.tx() as conn:
        replay = apply_payment(conn, "pay-1", "acc1", 1000, T0, source="test")
    assert replay.replayed and replay.debt_recovery_minor == 175 and replay.balance_minor == 525
    assert _dump(store) == before
    store.close()


def test_debt_and_adjustment_ids_apply_once_and_a_reused_id_is_refused(tmp_path: Path) -> None:
    store = new_ledger(tmp_path / "l.db")
    with store.tx() as conn:
        add_debt(conn, "d1", "acc1", 5000, T0, reason="r", actor="a")
        assert not add_debt(conn, "d1", "acc1", 5000, T0, reason="r", actor="a")
        assert post_adjustment(conn, "a1", "acc1", 250, T0, reason="goodwill", actor="a")
        assert not post_adjustment(conn, "a1", "acc1", 250, T0, reason="goodwill", actor="a")
    before = _dump(store)
    for bad in (
        lambda c: add_debt(c, "d1", "acc1", 6000, T0, reason="r", actor="a"),
        lambda c: post_adjustment(c, "a1", "acc1", -250, T0, reason="r", actor="a"),
        lambda c: add_debt(c, "d2", "nobody", 10, T0, reason="r", actor="a"),
        lambda c: add_debt(c, "d3", "acc1", 0, T0, reason="r", actor="a"),
        lambda c: add_debt(c, "d4", "acc1", 10, T0, reason=" ", actor="a"),
        lambda c: add_debt(c, "d5", "acc1", 10, T0, reason="r", actor="a", share=Decimal("1.5")),
    ):
        with pytest.raises(CreditError) as err, store.tx() as conn:
            bad(conn)
        assert "\n" not in str(err.value)
    assert _dump(store) == before
    assert store.scalar("SELECT debt_minor FROM accounts") == 5000
    assert verify(store) == []
    store.close()


@pytest.mark.parametrize("text", ["abc", "-0.1", "1.01", "NaN", "Infinity"])
def test_bad_recovery_share_is_refused_with_one_line(text: str) -> None:
    with pytest.raises(CreditError, match="share"):
        parse_share(text)


def test_float_share_is_refused() -> None:
    with pytest.raises(CreditError, match="float"):
        parse_share(0.25)  # type: ignore[arg-type]


def test_verify_catches_a_tampered_debt_cache_and_a_payment_conflict_changes_nothing(tmp_path: Path) -> None:
    store = new_ledger(tmp_path / "l.db")
    with store.tx() as conn:
        add_debt(conn, "d1", "acc1", 1000, T0, reason="r", actor="a", share=Decimal("0.5"))
        apply_payment(conn, "p1", "acc1", 100, T0, source="t")
    assert verify(store) == []
    before = _dump(store)
    with pytest.raises(PaymentConflict), store.tx() as conn:
        apply_payment(conn, "p1", "acc1", 101, T0, source="t")
    assert _dump(store) == before
    store.conn.execute("UPDATE accounts SET debt_minor = debt_minor + 1")
    problems = [str(p) for p in verify(store)]
    assert problems == ["debt of account acc1: cached 951, derived from entries 950"]
    store.close()


def test_reconnection_waits_for_the_balance_after_debt_recovery(tmp_path: Path) -> None:
    """The policy's reconnect threshold (generic preset: 1.00) sees the balance after the split."""
    from gateway.core.calendar import WorkCalendar
    from gateway.policy.engine import PolicyEngine
    from gateway.policy.rules import load_preset

    store = new_ledger(tmp_path / "l.db")
    engine = PolicyEngine(load_preset("generic"), WorkCalendar("Asia/Shanghai", "CN"), {})
    with store.tx() as conn:
        post_adjustment(conn, "a1", "acc1", -50, T0, reason="consumed", actor="t")
        add_debt(conn, "d1", "acc1", 10_000, T0, reason="old arrears", actor="hq", share=Decimal("0.5"))
        conn.execute(
            "UPDATE accounts SET policy_state = 'disconnected', policy_state_since = ?",
            ("2026-03-01T00:00:00Z",),
        )
        conn.execute("UPDATE meters SET relay = 'open'")
        small = apply_payment(conn, "p1", "acc1", 240, T0, source="t")  # 190 above zero, half to the debt
        engine.evaluate_account(conn, "acc1", T0, payment_id="p1")
    assert (small.debt_recovery_minor, small.balance_minor) == (95, 95)  # 2.40 paid, 0.95 left: below 1.00
    assert store.scalar("SELECT COUNT(*) FROM relay_commands") == 0
    with store.tx() as conn:
        big = apply_payment(conn, "p2", "acc1", 20, T0, source="t")
        engine.evaluate_account(conn, "acc1", T0, payment_id="p2")
    assert big.balance_minor == 105
    assert store.scalar("SELECT action FROM relay_commands WHERE status = 'pending'") == "close_permitted"
    store.close()
