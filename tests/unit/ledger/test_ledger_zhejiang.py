"""A year of the Zhejiang block + peak/valley tariff charged through the ledger matches the hand figure.

The profile and the hand-computed total (¥4,170.58) are those of tests/unit/tariffs/test_tariffs_zhejiang.py
(tariff numbers: docs/sources/tariffs.md, gateway/tariffs/examples/zhejiang-residential.toml):
1 kWh every hour 08:00–22:00 and 0.5 kWh every other hour, 365 days of 2026, read every two hours
(period edges 08:00 and 22:00 fall on readings, so each interval is wholly peak or valley) and, in the
slow variant, every hour.  Here the
readings go through ``record_reading`` — cumulative register, block position from the ledger's own
entries, cumulative rounding — and the posted charges must equal the exact total to the minor unit.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from support.ledger_books import CST, make_book, new_ledger, reading

from gateway.core.money import to_minor
from gateway.ledger.charging import record_reading
from gateway.ledger.verify import verify

EXPECTED_TOTAL = Decimal("4170.580")  # tests/unit/tariffs/test_tariffs_zhejiang.py, worked by hand there
EXPECTED_WH = {
    (1, "peak"): 2_031_000,
    (1, "valley"): 729_000,
    (2, "peak"): 1_505_000,
    (2, "valley"): 535_000,
    (3, "peak"): 1_574_000,
    (3, "valley"): 561_000,
}


@pytest.mark.parametrize("step_h", [2, pytest.param(1, marks=pytest.mark.slow)])
def test_a_year_of_readings_through_the_ledger_costs_the_hand_computed_4170_58(
    tmp_path: Path, step_h: int
) -> None:
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db", accounts=[("acc1", "zhejiang-residential")])
    hour = datetime(2026, 1, 1, tzinfo=CST)
    register = 0
    with store.tx() as conn:
        record_reading(conn, "m1", reading(register, hour), book.pricer(conn), max_power_w=30_000)
    while hour.year == 2026:
        with store.tx() as conn:  # one transaction per local day keeps the test fast; charging is per reading
            for _ in range(24 // step_h):
                for _ in range(step_h):
                    register += 1000 if 8 <= hour.hour < 22 else 500
                    hour += timedelta(hours=1)
                out = record_reading(
                    conn, "m1", reading(register, hour), book.pricer(conn), max_power_w=30_000
                )
                assert out.outcome == "charged"
    total_minor = -store.scalar("SELECT SUM(amount_minor) FROM entries WHERE kind = 'charge'")
    assert total_minor == to_minor(EXPECTED_TOTAL) == 417_058
    assert store.scalar("SELECT charged_exact FROM meters WHERE id = 'm1'") == str(EXPECTED_TOTAL)
    by_key: dict[tuple[int, str], int] = defaultdict(int)
    for (detail,) in store.all("SELECT detail_json FROM entries WHERE kind = 'charge'"):
        for line in json.loads(detail)["lines"]:
            by_key[(line["block"], line["period"])] += line["energy_wh"]
    assert dict(by_key) == EXPECTED_WH
    assert store.scalar("SELECT balance_minor FROM accounts") == -417_058
    assert verify(store) == []
    store.close()
