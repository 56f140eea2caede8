"""The hand-built JSON of the per-reading path is byte for byte what ``dumps`` writes.

The charge detail and the usage message are built with f-strings because every reading writes one
of each; these properties hold them to the encoder's output (sorted keys, compact, names escaped),
so a stored detail or a published message cannot tell which path wrote it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.money import format_money
from gateway.core.timeutil import iso
from gateway.ledger.charging import _line_json, charge_detail_json, usage_json
from gateway.store.db import dumps
from gateway.tariffs.pricing import ChargeLine

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)
T0 = datetime(2026, 3, 2, tzinfo=UTC)
names = st.text(min_size=1, max_size=12)  # any unicode: quotes, backslashes, controls, CJK
amounts = st.decimals(min_value=0, max_value=Decimal("1e6"), allow_nan=False, allow_infinity=False, places=6)
instants = st.integers(0, 10**12).map(lambda us: T0 + timedelta(microseconds=us))


@st.composite
def lines(draw: st.DrawFn) -> ChargeLine:
    start = draw(instants)
    return ChargeLine(
        tariff_id=draw(names),
        version=draw(st.integers(1, 99)),
        start=start,
        end=start + timedelta(seconds=draw(st.integers(1, 86_400))),
        period=draw(st.none() | names),
        block=draw(st.none() | st.integers(1, 5)),
        energy_wh=draw(st.integers(0, 10**7)),
        unit_price=draw(amounts),
        amount=draw(amounts),
    )


@SETTINGS
@given(exact=amounts, priced=st.lists(lines(), max_size=4))
def test_charge_detail_is_what_dumps_writes(exact: Decimal, priced: list[ChargeLine]) -> None:
    expected = dumps({"exact": str(exact), "lines": [_line_json(line) for line in priced]})
    assert charge_detail_json(exact, priced) == expected
    assert json.loads(expected)["exact"] == str(exact)


@SETTINGS
@given(
    meter=names,
    account=names,
    start=st.none() | instants,
    end=instants,
    register=st.integers(0, 10**12),
    delta=st.integers(0, 10**9),
    charge=st.integers(-(10**9), 10**9),
    balance=st.integers(-(10**12), 10**12),
    digits=st.integers(0, 3),
)
def test_usage_message_is_what_dumps_writes(
    meter: str,
    account: str,
    start: datetime | None,
    end: datetime,
    register: int,
    delta: int,
    charge: int,
    balance: int,
    digits: int,
) -> None:
    body = {
        "schema": "pmg.usage/1",
        "meter_id": meter,
        "account_id": account,
        "interval_start": iso(start) if start else None,
        "interval_end": iso(end),
        "register_wh": register,
        "energy_wh": delta,
        "charge": format_money(charge, digits),
        "balance": format_money(balance, digits),
    }
    assert usage_json(meter, account, start, end, register, delta, charge, balance, digits) == dumps(body)
