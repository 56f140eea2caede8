"""Helpers shared by the ledger tests: a real store, real tariffs, readings.  (No tests here.)

Tariffs: the shipped examples (gateway/tariffs/examples) plus small test tariffs written here, with prices chosen so
that rounding to the minor unit is exercised (a standing charge of ¥0.3333 a day, a flat ¥0.6117).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from drivers.base import Quality, Reading
from gateway.core.calendar import WorkCalendar
from gateway.ledger.accounts import ensure_account, ensure_meter
from gateway.ledger.tariff_book import TariffBook
from gateway.store.db import Store, open_store
from gateway.tariffs.model import load_tariff_dir

REPO = Path(__file__).resolve().parents[2]
TARIFFS = REPO / "gateway" / "tariffs" / "examples"
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=CST)  # a Monday

TEST_TARIFFS = {
    "flat-b": """id = "flat-b"
currency = "CNY"
minor_digits = 2
[[versions]]
version = 1
effective_from = 2026-01-01T00:00:00+08:00
timezone = "Asia/Shanghai"
price = "0.6117"
""",
    "standing-cn": """id = "standing-cn"
currency = "CNY"
minor_digits = 2
[[versions]]
version = 1
effective_from = 2026-01-01T00:00:00+08:00
timezone = "Asia/Shanghai"
price = "0.5283"
standing_charge_per_day = "0.3333"
""",
}


def make_book(tmp_path: Path) -> TariffBook:
    extra = tmp_path / "test-tariffs"
    extra.mkdir(exist_ok=True)
    for name, body in TEST_TARIFFS.items():
        (extra / f"{name}.toml").write_text(body)
    tariffs = {**load_tariff_dir(TARIFFS), **load_tariff_dir(extra)}
    return TariffBook(tariffs, WorkCalendar("Asia/Shanghai", "CN"))


def new_ledger(
    path: Path,
    accounts: Iterable[tuple[str, str]] = (("acc1", "flat-cn"),),
    meters: Iterable[tuple[str, str]] = (("m1", "acc1"),),
    *,
    now: datetime = T0,
    emergency_minor: int = 0,
) -> Store:
    store = open_store(path)
    with store.tx() as conn:
        for account_id, tariff in accounts:
            ensure_account(
                conn,
                account_id,
                tariff_id=tariff,
                currency="CNY",
                now=now,
                emergency_credit_minor=emergency_minor,
            )
        for i, (meter_id, account_id) in enumerate(meters):
            ensure_meter(
                conn,
                meter_id,
                account_id=account_id,
                bus_id="b1",
                protocol="dlt645",
                address=f"{i + 1:012d}",
                keep_power=False,
                now=now,
            )
    return store


def reading(register_wh: int | None, at: datetime, quality: Quality = Quality.OK) -> Reading:
    return Reading("000000000001", at.astimezone(UTC), quality, energy_import_wh=register_wh)
