"""Hypothesis: random readings (rollover, quarantines and their resolution), payments (with replays),
debts, tariff changes, settlements and restarts keep the ledger exact and consistent.

An independent model follows the meters' true registers and decides — with the documented
plausibility rule — what must be charged, at which flat price, so the ledger is checked against
arithmetic it did not do itself: per meter the posted charges are round_half_even(Σ Wh × price) to the
minor unit; per account the balance is payments − charges − standing charges − debt recovery; the
debt is debts − recovery; ``verify`` finds nothing.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.ledger_books import T0, make_book, new_ledger, reading

from gateway.core.money import to_minor
from gateway.ledger import settlement
from gateway.ledger.accounts import ensure_account
from gateway.ledger.charging import MIN_PLAUSIBILITY_WINDOW_S, PLAUSIBILITY_SLACK_WH, record_reading
from gateway.ledger.credit import add_debt
from gateway.ledger.payments import apply_payment
from gateway.ledger.quarantine import accept_reading
from gateway.ledger.verify import verify
from gateway.store.db import open_store

PRICES = {"flat-cn": Decimal("0.5283"), "flat-b": Decimal("0.6117"), "standing-cn": Decimal("0.5283")}
STANDING = {"standing-cn": Decimal("0.3333")}
MODULUS = 10_000_000
MAX_POWER_W = 20_000
METERS = {"m1": "acc1", "m2": "acc2", "m3": "acc2"}
START_REGISTER = {"m1": 0, "m2": MODULUS - 4_000, "m3": 123_456}  # m2 rolls over early


@dataclass
class MeterModel:
    register: int
    last: int | None = None
    last_at: Any = None
    quarantined: tuple[int, Any] | None = None
    exact: Decimal = Decimal(0)
    energy: int = 0


@dataclass
class Model:
    now: Any = T0
    tariff: dict[str, str] = field(default_factory=lambda: {"acc1": "flat-cn", "acc2": "standing-cn"})
    meters: dict[str, MeterModel] = field(
        default_factory=lambda: {m: MeterModel(r) for m, r in START_REGISTER.items()}
    )
    payments: dict[str, tuple[str, int]] = field(default_factory=dict)
    applied: set[str] = field(default_factory=set)
    paid: dict[str, int] = field(default_factory=lambda: {"acc1": 0, "acc2": 0})
    recovered: dict[str, int] = field(default_factory=lambda: {"acc1": 0, "acc2": 0})
    debts: dict[str, int] = field(default_factory=lambda: {"acc1": 0, "acc2": 0})
    standing_exact: dict[str, Decimal] = field(
        default_factory=lambda: {"acc1": Decimal(0), "acc2": Decimal(0)}
    )


def _expect_outcome(m: MeterModel, seconds: float) -> tuple[str, int]:
    """The documented rule: delta since the last accepted register, wrap if smaller, bound by max power."""
    if m.quarantined is not None:
        return "ignored", 0
    if m.last is None:
        return "baseline", 0
    delta = m.register - m.last if m.register >= m.last else m.register + MODULUS - m.last
    bound = MAX_POWER_W * max(seconds, MIN_PLAUSIBILITY_WINDOW_S) / 3600 + PLAUSIBILITY_SLACK_WH
    return ("quarantined", delta) if delta > bound else ("charged", delta)


meter_st = st.sampled_from(sorted(METERS))
op_st = st.one_of(
    st.tuples(st.just("read"), meter_st, st.integers(0, 3_000), st.integers(30, 4 * 3600)),
    st.tuples(st.just("jump"), meter_st, st.integers(200_000, 900_000), st.integers(30, 3600)),
    st.tuples(st.just("back"), meter_st, st.integers(1, 50_000), st.integers(30, 3600)),
    st.tuples(st.just("resolve"), st.integers(0, 2), st.sampled_from(["charge", "rebaseline"])),
    st.tuples(st.just("pay"), st.integers(0, 5), st.integers(1, 20_000)),
    st.tuples(st.just("debt"), st.sampled_from(["acc1", "acc2"]), st.integers(1, 50_000)),
    st.tuples(st.just("tariff"), st.sampled_from(["acc1", "acc2"]), st.sampled_from(sorted(PRICES))),
    st.tuples(st.just("settle"), st.integers(1, 40)),
    st.tuples(st.just("restart")),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=30))
def test_random_histories_keep_the_ledger_exact(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run(Path(tmp), ops)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=60))
def test_random_histories_keep_the_ledger_exact_long(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _run(Path(tmp), ops)


def _run(tmp: Path, ops: list[tuple[Any, ...]]) -> None:
    book = make_book(tmp)
    path = tmp / "l.db"
    model = Model()
    store = new_ledger(path, accounts=sorted(model.tariff.items()), meters=sorted(METERS.items()))
    tz = ZoneInfo("Asia/Shanghai")
    ops = [("read", meter_id, 0, 60) for meter_id in sorted(METERS)] + ops  # baselines first
    for op in ops:
        kind = op[0]
        if kind in ("read", "jump", "back"):
            meter_id, amount, seconds = op[1], op[2], op[3]
            m = model.meters[meter_id]
            model.now += timedelta(seconds=seconds)
            m.register = (m.register + (-amount if kind == "back" else amount)) % MODULUS
            elapsed = (model.now - m.last_at).total_seconds() if m.last_at is not None else 0
            expected, delta = _expect_outcome(m, elapsed)
            with store.tx() as conn:
                got = record_reading(
                    conn,
                    meter_id,
                    reading(m.register, model.now),
                    book.pricer(conn),
                    max_power_w=MAX_POWER_W,
                    register_modulus_wh=MODULUS,
                )
            assert got.outcome == expected
            if expected == "quarantined":
                m.quarantined = (m.register, model.now)
            elif expected in ("baseline", "charged"):
                if delta:
                    m.exact += Decimal(delta) * PRICES[model.tariff[METERS[meter_id]]] / 1000
                    m.energy += delta
                m.last, m.last_at = m.register, model.now
        elif kind == "resolve":
            waiting = [k for k, v in sorted(model.meters.items()) if v.quarantined is not None]
            if not waiting:
                continue
            meter_id, mode = waiting[op[1] % len(waiting)], op[2]
            m = model.meters[meter_id]
            assert m.quarantined is not None
            q_register, q_at = m.quarantined
            with store.tx() as conn:
                accept_reading(
                    conn,
                    meter_id,
                    mode,
                    book.pricer(conn),
                    model.now,
                    reason="property",
                    actor="hyp",
                    register_modulus_wh=MODULUS,
                )
            if mode == "charge":
                assert m.last is not None
                delta = (q_register - m.last) % MODULUS
                m.exact += Decimal(delta) * PRICES[model.tariff[METERS[meter_id]]] / 1000
                m.energy += delta
            m.last, m.last_at, m.quarantined = q_register, q_at, None
        elif kind == "pay":
            pid, amount = f"pay-{op[1]}", op[2]
            account = "acc1" if op[1] % 2 else "acc2"
            first = model.payments.setdefault(pid, (account, amount))  # a replay repeats the original
            with store.tx() as conn:
                result = apply_payment(conn, pid, account, first[1], model.now, source="hyp")
            assert result.replayed == (pid in model.applied)
            if not result.replayed:
                model.applied.add(pid)
                model.paid[account] += first[1]
                model.recovered[account] += result.debt_recovery_minor
                assert result.debt_recovery_minor <= first[1] // 4
        elif kind == "debt":
            account, amount = op[1], op[2]
            with store.tx() as conn:
                if add_debt(
                    conn,
                    f"debt-{account}-{amount}",
                    account,
                    amount,
                    model.now,
                    reason="p",
                    actor="h",
                    share=Decimal("0.25"),
                ):
                    model.debts[account] += amount
        elif kind == "tariff":
            account, tariff = op[1], op[2]
            with store.tx() as conn:
                ensure_account(conn, account, tariff_id=tariff, currency="CNY", now=model.now)
            model.tariff[account] = tariff
        elif kind == "settle":
            model.now += timedelta(hours=op[1])
            with store.tx() as conn:
                result = settlement.settle(conn, book, tz, model.now)
            for account, tariff in model.tariff.items():
                model.standing_exact[account] += STANDING.get(tariff, Decimal(0)) * len(result.days)
        else:
            store.close()
            store = open_store(path)
    _check(store, model)
    store.close()


def _check(store: Any, model: Model) -> None:
    charged: dict[str, int] = {"acc1": 0, "acc2": 0}
    for meter_id, m in model.meters.items():
        row = store.one("SELECT charged_minor FROM meters WHERE id = ?", meter_id)
        assert row["charged_minor"] == to_minor(m.exact), meter_id
        energy = store.scalar(
            "SELECT COALESCE(SUM(energy_wh), 0) FROM entries WHERE kind = 'charge' AND meter_id = ?", meter_id
        )
        assert energy == m.energy
        charged[METERS[meter_id]] += row["charged_minor"]
    for account in ("acc1", "acc2"):
        row = store.one(
            "SELECT balance_minor, debt_minor, standing_minor FROM accounts WHERE id = ?", account
        )
        assert row["standing_minor"] == to_minor(model.standing_exact[account])
        expected = model.paid[account] - charged[account] - row["standing_minor"] - model.recovered[account]
        assert row["balance_minor"] == expected
        assert row["debt_minor"] == model.debts[account] - model.recovered[account] >= 0
    assert verify(store) == []
