"""Daily settlement: standing charges exactly once per account and local day; risk grades; forecast."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from support.ledger_books import CST, T0, make_book, new_ledger, reading

from gateway.core.money import to_minor
from gateway.ledger import settlement
from gateway.ledger.accounts import post_entry
from gateway.ledger.charging import record_reading
from gateway.ledger.credit import post_adjustment
from gateway.ledger.forecast import days_of_credit_left
from gateway.ledger.risk import RiskInputs, RiskRule, grade
from gateway.ledger.verify import verify
from gateway.store.db import open_store

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _standing(store: Any, account: str = "acc1") -> list[int]:
    return [
        -r[0]
        for r in store.all(
            "SELECT amount_minor FROM entries WHERE kind = 'standing_charge' AND account_id = ? ORDER BY id",
            account,
        )
    ]


def test_each_ended_local_day_is_charged_once_with_cumulative_rounding(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db", accounts=[("acc1", "standing-cn"), ("acc2", "flat-cn")], meters=[])
    now = T0 + timedelta(days=30, hours=9)  # 30 local days have ended
    with store.tx() as conn:
        result = settlement.settle(conn, book, SHANGHAI, now)
    assert len(result.days) == 30 and result.days[0] == T0.date()
    charges = _standing(store)
    assert charges[:3] == [33, 34, 33]  # 0.3333, 0.6666 -> 0.67, 0.9999 -> 1.00
    assert sum(charges) == to_minor(Decimal("0.3333") * 30) == 1000
    assert _standing(store, "acc2") == []  # flat-cn has no standing charge
    assert store.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc1'") == -1000
    assert verify(store) == []
    store.close()


def test_running_twice_late_or_after_a_restart_charges_nothing_twice(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    path = tmp_path / "l.db"
    store = new_ledger(path, accounts=[("acc1", "standing-cn")], meters=[])
    for hours in (30, 30, 31):  # same instant twice, then an hour later
        with store.tx() as conn:
            settlement.settle(conn, book, SHANGHAI, T0 + timedelta(hours=hours))
    assert _standing(store) == [33]
    store.close()
    store = open_store(path)  # restart
    with store.tx() as conn:
        settlement.settle(conn, book, SHANGHAI, T0 + timedelta(days=3, hours=1))  # a late run: days 2 and 3
        settlement.settle(conn, book, SHANGHAI, T0 + timedelta(days=3, hours=2))
    assert _standing(store) == [33, 34, 33]
    # even with the watermark lost, the entries' keys stop a second charge
    store.conn.execute("DELETE FROM meta WHERE key = ?", (settlement.LAST_DAY_KEY,))
    with store.tx() as conn:
        settlement.settle(conn, book, SHANGHAI, T0 + timedelta(days=3, hours=3))
    assert _standing(store) == [33, 34, 33]
    assert verify(store) == []
    store.close()


def test_once_per_account_and_day_is_a_unique_constraint_not_only_a_check(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db", accounts=[("acc1", "standing-cn")], meters=[])
    with store.tx() as conn:
        settlement.settle(conn, book, SHANGHAI, T0 + timedelta(days=1, hours=1))
    start = store.scalar("SELECT period_start FROM entries WHERE kind = 'standing_charge'")
    before = store.scalar("SELECT COUNT(*) FROM entries")
    for external_id in (f"acc1/{T0.date().isoformat()}", "another-key"):  # same key; same day, other key
        with pytest.raises(sqlite3.IntegrityError), store.tx() as conn:
            post_entry(
                conn,
                "acc1",
                "standing_charge",
                -33,
                T0,
                external_id=external_id,
                period_start=datetime.fromisoformat(start.replace("Z", "+00:00")),
            )
    assert store.scalar("SELECT COUNT(*) FROM entries") == before
    assert verify(store) == []
    store.close()


def test_standing_charge_continues_during_emergency_credit_and_on_dst_days(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    london = ZoneInfo("Europe/London")
    start = datetime(2026, 3, 27, 12, tzinfo=london)  # DST begins Sunday 29 March 2026
    store = new_ledger(
        tmp_path / "l.db", accounts=[("acc1", "uk-standard")], meters=[], now=start, emergency_minor=500
    )
    with store.tx() as conn:
        post_adjustment(conn, "a1", "acc1", -200, start, reason="on emergency credit", actor="t")
        result = settlement.settle(conn, book, london, datetime(2026, 3, 31, 0, 30, tzinfo=london))
    assert [d.isoformat() for d in result.days] == ["2026-03-27", "2026-03-28", "2026-03-29", "2026-03-30"]
    assert _standing(store) == [53, 53, 53, 53]  # the 23-hour day costs a whole day
    spans = store.all(
        "SELECT period_start, period_end FROM entries WHERE kind = 'standing_charge' ORDER BY id"
    )
    hours = [
        (datetime.fromisoformat(e.replace("Z", "+00:00")) - datetime.fromisoformat(s.replace("Z", "+00:00")))
        / timedelta(hours=1)
        for s, e in spans
    ]
    assert hours == [24, 24, 23, 24]
    assert store.scalar("SELECT balance_minor FROM accounts") == -200 - 4 * 53
    store.close()


def _fake_gateway(store: Any, book: Any, tz: str, now: datetime, config_dir: Path) -> Any:
    evaluated: list[str] = []

    class Policy:
        def evaluate_account(self, conn: sqlite3.Connection, account_id: str, at: datetime) -> list[Any]:
            evaluated.append(account_id)
            return []

    cfg = SimpleNamespace(tz=ZoneInfo(tz), minor_digits=2, risk=RiskRule())
    gw = SimpleNamespace(
        clock=lambda: now,
        ended_now=lambda: now,
        cfg=cfg,
        store=store,
        parts=SimpleNamespace(book=book, policy=Policy()),
        config_path=config_dir / "gateway.toml",
        evaluated=evaluated,
    )
    return gw


def test_the_job_entry_point_settles_grades_and_re_decides_charged_accounts(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db", accounts=[("acc1", "standing-cn"), ("acc2", "flat-cn")], meters=[])
    gw = _fake_gateway(store, book, "Asia/Shanghai", T0 + timedelta(days=2, hours=1), tmp_path)
    result = asyncio.run(settlement.run(gw))
    assert len(result.charges) == 2 and gw.evaluated == ["acc1"]
    assert set(result.grades) == {"acc1", "acc2"}
    # acc1 is below zero after its standing charges: the highest grade, audited once
    assert store.scalar("SELECT risk_grade FROM accounts WHERE id = 'acc1'") == 3
    assert store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'risk_grade' AND account_id = 'acc1'") == 1
    again = asyncio.run(settlement.run(gw))
    assert again.charges == {} and again.grades == {}  # grades once per local day
    store.close()


def test_the_settlement_run_reads_no_side_file_only_the_validated_configuration(tmp_path: Path) -> None:
    """A broken ``risk.toml`` beside the configuration used to stop every settlement run (and with it the
    standing charges); the rule now comes from the configuration's ``[risk]`` section, checked at load."""
    (tmp_path / "risk.toml").write_text('days_left = ["3", "7", "14"]\nno_payment_dayz = 3\n')
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db", accounts=[("acc1", "standing-cn"), ("acc2", "flat-cn")], meters=[])
    gw = _fake_gateway(store, book, "Asia/Shanghai", T0 + timedelta(days=2, hours=1), tmp_path)
    gw.cfg.risk = RiskRule(no_payment_days=1)  # the default (30) leaves a 2-day-old account at grade 0
    result = asyncio.run(settlement.run(gw))
    assert {account for account, _ in result.charges} == {"acc1"}
    assert result.grades == {"acc1": 3, "acc2": 1}
    store.close()


def _inputs(**kw: Any) -> RiskInputs:
    base: dict[str, Any] = dict(
        balance_minor=1000,
        days_left=Decimal(30),
        account_age_days=Decimal(100),
        days_since_payment=Decimal(5),
        recent_wh_per_day=Decimal(5000),
        baseline_wh_per_day=Decimal(5000),
    )
    return RiskInputs(**{**base, **kw})


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, 0),
        ({"days_left": Decimal(14)}, 1),
        ({"days_left": Decimal("6.9")}, 2),
        ({"days_left": Decimal(3)}, 3),
        ({"days_left": None}, 0),
        ({"balance_minor": -1}, 3),
        ({"days_since_payment": Decimal(31)}, 1),
        ({"days_since_payment": None, "account_age_days": Decimal(10)}, 0),  # new account, not late
        ({"recent_wh_per_day": Decimal(7500)}, 1),  # +50 %
        ({"recent_wh_per_day": Decimal(7499)}, 0),
        ({"days_left": Decimal(5), "days_since_payment": Decimal(40), "recent_wh_per_day": Decimal(9000)}, 3),
    ],
)
def test_risk_grade_rule(changes: dict[str, Any], expected: int) -> None:
    g, reasons = grade(_inputs(**changes), RiskRule())
    assert g == expected
    assert bool(reasons) == bool(expected)


def test_days_of_credit_left_prices_recent_consumption_with_the_tariff(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    store = new_ledger(
        tmp_path / "l.db",
        accounts=[("acc1", "flat-cn"), ("acc2", "standing-cn")],
        meters=[("m1", "acc1"), ("m2", "acc2")],
    )
    with store.tx() as conn:
        for meter in ("m1", "m2"):
            for day in range(8):  # 2 kWh a day for a week
                record_reading(
                    conn,
                    meter,
                    reading(day * 2000, T0 + timedelta(days=day)),
                    book.pricer(conn),
                    max_power_w=30_000,
                )
    now = T0 + timedelta(days=7)
    with store.tx() as conn:
        flat = days_of_credit_left(conn, book, "acc1", 1000, now)
        standing = days_of_credit_left(conn, book, "acc2", 1000, now)
        broke = days_of_credit_left(conn, book, "acc1", -5, now)
    assert flat == Decimal("9.4")  # 10.00 / (2 x 0.5283 = 1.0566)
    assert standing == Decimal("7.1")  # 10.00 / (1.0566 + 0.3333) = 7.19
    assert broke == 0
    store.close()


def test_days_of_credit_left_sees_the_dearer_block_coming(tmp_path: Path) -> None:
    """Same 12 kWh a day; the account 10 kWh short of Zhejiang block 2 has fewer days than one far from it."""
    book = make_book(tmp_path)
    store = new_ledger(
        tmp_path / "l.db",
        accounts=[("near", "zhejiang-residential"), ("far", "zhejiang-residential")],
        meters=[("m1", "near"), ("m2", "far")],
    )
    start = datetime(2026, 1, 1, tzinfo=CST)
    plan = {
        "m1": [(0, 0), (140, 2_666_000), (147, 2_750_000)],  # 2,750 kWh used in the year's cycle
        "m2": [(140, 0), (147, 84_000)],  # 84 kWh used
    }
    with store.tx() as conn:
        for meter, points in plan.items():
            for day, register in points:
                at = start + timedelta(days=day)
                record_reading(conn, meter, reading(register, at), book.pricer(conn), max_power_w=10**7)
        now = start + timedelta(days=147)
        near = days_of_credit_left(conn, book, "near", 10_000, now)
        far = days_of_credit_left(conn, book, "far", 10_000, now)
    assert near is not None and far is not None
    assert far == Decimal("18.4")  # 100 / (12 x (14/24 x 0.568 + 10/24 x 0.288)) = 18.47
    assert near < far
    store.close()


def test_grading_yields_to_the_event_loop_between_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Grading every account is seconds of work on a big gateway: other tasks must run in between."""
    monkeypatch.setattr(settlement, "GRADES_PER_STEP", 2)
    book = make_book(tmp_path)
    accounts = [(f"acc{i}", "flat-cn") for i in range(7)]
    store = new_ledger(tmp_path / "l.db", accounts=accounts, meters=[])
    with store.tx() as conn:
        conn.execute("UPDATE accounts SET balance_minor = -100")  # in arrears: each grading sets grade 3
    gw = _fake_gateway(store, book, "Asia/Shanghai", T0 + timedelta(days=2, hours=1), tmp_path)
    graded_when_ticked: list[int] = []

    async def scenario() -> settlement.SettlementResult:
        async def ticker() -> None:
            while True:
                graded_when_ticked.append(int(store.scalar("SELECT COUNT(*) FROM accounts WHERE risk_grade = 3")))
                await asyncio.sleep(0)

        tick = asyncio.create_task(ticker())
        try:
            return await settlement.run(gw)
        finally:
            tick.cancel()

    result = asyncio.run(scenario())
    assert set(result.grades) == {a for a, _ in accounts}
    # the other task ran while grading was part-way: after 2, 4 and 6 accounts
    assert {2, 4, 6} <= set(graded_when_ticked), graded_when_ticked
    store.close()
