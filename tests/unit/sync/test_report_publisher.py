"""Period reports on ``reports``: the figures of ``pmg report``, queued once each period ended in the
gateway's time zone, exactly once per period (restarts, late or repeated runs, a daemon down over a
period's end), with an injected clock (docs/mqtt.md, "Reports")."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import jsonschema
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from support.ledger_books import CST, TARIFFS, make_book, reading

from gateway.config import load_config
from gateway.ledger import settlement
from gateway.ledger.accounts import seed_from_config
from gateway.ledger.charging import record_reading
from gateway.ledger.payments import apply_payment
from gateway.ledger.reports import usage_report
from gateway.runtime.jobs import register_jobs
from gateway.store import outbox
from gateway.store.db import Store, open_store
from gateway.sync import report_publisher
from gateway.sync.contract import load_schema

SHANGHAI = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 3, 1, 0, 0, tzinfo=CST)  # a Sunday


def _ledger(tmp_path: Path) -> Store:
    """Ten local days (1-10 March 2026) of 3 kWh a day on two accounts, a payment, standing charges."""
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(
        f'gateway_id = "gw"\ntimezone = "Asia/Shanghai"\ndatabase = "{tmp_path / "pmg.db"}"\n'
        f'tariff_dir = "{TARIFFS}"\n'
        '[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "/dev/null"\n'
        '[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n'
        '[[meters]]\nid = "m2"\nbus = "b1"\naddress = "000000000002"\naccount = "acc2"\ntariff = "uk-standard"\n'
    )
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, load_config(cfg_path), START)
    book = make_book(tmp_path)
    with store.tx() as conn:
        apply_payment(conn, "p1", "acc1", 5000, START + timedelta(hours=9), source="test")
        for meter in ("m1", "m2"):
            record_reading(conn, meter, reading(0, START), book.pricer(conn), max_power_w=30_000)
            for day in range(10):
                at = START + timedelta(days=day, hours=23, minutes=30)
                record_reading(conn, meter, reading((day + 1) * 3000, at), book.pricer(conn), max_power_w=30_000)
        settlement.settle(conn, book, SHANGHAI, START + timedelta(days=10, minutes=1))
    return store


def _publish(store: Store, now: datetime) -> list[str]:
    done = asyncio.run(report_publisher.publish_due(store, SHANGHAI, now, currency="CNY", digits=2))
    return [f"{d.period}:{d.start.isoformat()}" for d in done]


def _reports(store: Store) -> list[dict[str, object]]:
    return [json.loads(m.envelope("gw")) for m in outbox.pending(store, 0, 10_000) if m.topic == "reports"]


def test_each_period_is_published_once_after_it_ended_with_the_figures_of_pmg_report(tmp_path: Path) -> None:
    store = _ledger(tmp_path)
    assert _publish(store, START + timedelta(hours=23, minutes=59)) == []  # 1 March has not ended
    first = _publish(store, START + timedelta(days=3, minutes=30))  # 4 March, 00:30 local
    # the ISO week of 1 March (a Sunday) ended at its midnight, after the day
    assert first == ["day:2026-03-01", "week:2026-02-23", "day:2026-03-02", "day:2026-03-03"]
    assert _publish(store, START + timedelta(days=3, minutes=31)) == []  # a second run: nothing again
    store.close()

    store = open_store(tmp_path / "pmg.db")  # a restart, then a daemon down until 1 April 00:05
    later = _publish(store, datetime(2026, 4, 1, 0, 5, tzinfo=CST))
    assert later.count("month:2026-03-01") == 1 and later[-1] == "month:2026-03-01"
    assert [p for p in later if p.startswith("dekad")] == [
        "dekad:2026-03-01", "dekad:2026-03-11", "dekad:2026-03-21"]  # fmt: skip
    assert len([p for p in later if p.startswith("day")]) == 28  # 4-31 March
    assert _publish(store, datetime(2026, 4, 1, 0, 6, tzinfo=CST)) == []

    validator = jsonschema.Draft202012Validator(load_schema("report"))
    bodies = _reports(store)
    assert len(bodies) == len(first) + len(later)
    for body in bodies:
        errors = list(validator.iter_errors(body))
        assert not errors, f"{errors[0].message} in {body}"
    (march,) = [b for b in bodies if b["period"] == "month"]
    expected = usage_report(store.conn, SHANGHAI, "month", date(2026, 3, 1), date(2026, 3, 1))
    assert march["label"] == "2026-03" and march["period_start"] == "2026-02-28T16:00:00Z"
    assert march["period_end"] == "2026-03-31T16:00:00Z"
    acc1 = next(a for a in march["accounts"] if a["account_id"] == "acc1")  # type: ignore[union-attr]
    row = next(r for r in expected if r.account_id == "acc1")
    assert acc1 == {"account_id": "acc1", "energy_wh": 30_000, "charges": "15.85", "standing": "0.00",
                    "payments": "50.00", "other": "0.00", "closing_balance": f"{row.closing_balance_minor / 100:.2f}"}  # fmt: skip
    seqs = [r[0] for r in store.all("SELECT seq FROM reports_published ORDER BY seq")]
    assert seqs == [b["seq"] for b in bodies]  # each period's row names its message
    store.close()


def test_the_first_run_goes_back_at_most_a_month(tmp_path: Path) -> None:
    store = _ledger(tmp_path)
    now = datetime(2027, 1, 5, 12, tzinfo=UTC)  # ten months after the last entry
    done = _publish(store, now)
    assert done[0] == "day:2026-12-04" and "month:2026-12-01" in done and "month:2026-03-01" not in done
    assert store.meta_get(report_publisher.SINCE_KEY) == "2026-12-04"
    store.close()


def test_the_job_is_registered_and_uses_the_injected_clock(tmp_path: Path) -> None:
    store = _ledger(tmp_path)
    woken: list[bool] = []
    now = [START + timedelta(days=1, minutes=1)]
    ctx = SimpleNamespace(
        store=store,
        cfg=SimpleNamespace(tz=SHANGHAI, currency="CNY", minor_digits=2),
        ended_now=lambda: now[0],
        notify_outbox=lambda: woken.append(True),
        stopping=False,
    )
    assert [d.period for d in asyncio.run(report_publisher.run(ctx))] == ["day", "week"]  # type: ignore[arg-type]
    assert woken == [True]
    now[0] += timedelta(minutes=1)
    assert asyncio.run(report_publisher.run(ctx)) == []  # type: ignore[arg-type]

    async def jobs() -> list[str]:
        scheduler = AsyncIOScheduler()
        register_jobs(scheduler, ctx)  # type: ignore[arg-type]
        return [job.id for job in scheduler.get_jobs()]

    assert "reports" in asyncio.run(jobs())
    store.close()
