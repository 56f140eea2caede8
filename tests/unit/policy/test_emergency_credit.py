"""Emergency credit over time, through the real ``PolicyEngine`` and a real SQLite store (docs/enforcement.md,
"Emergency credit").

The failures these guard against only show over successive decisions: each step re-decides the
account, the stand-in enforcer carries out the queued relay commands and writes the read-back, and the
account is decided again — as the daemon does after every confirmed relay outcome.  Relay operations
are counted from the confirmed commands.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from test_enforce_properties import World, flat_pricer  # noqa: F401  (flat_pricer: 0.0005 a Wh)

from drivers.base import RelayAction, RelayState
from gateway.core.calendar import WorkCalendar
from gateway.ledger.accounts import ensure_account, ensure_meter
from gateway.policy.engine import MeterCaps, PolicyEngine
from gateway.policy.rules import load_preset
from gateway.store.db import open_store

LONDON = WorkCalendar("Europe/London", "GB", "ENG")
UK = load_preset("uk")
WEDNESDAY_11 = datetime(2026, 12, 2, 11, 0, tzinfo=UTC)  # a weekday, 11:00 GMT: cuts are allowed
WH_PER_PENNY = 20  # flat_pricer: 0.0005 a Wh


@contextmanager
def uk_world(emergency_minor: int, opening_minor: int = 0) -> Iterator[World]:
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "pmg.db")
        with store.tx() as conn:
            ensure_account(conn, "a1", tariff_id="flat", currency="GBP", now=WEDNESDAY_11,
                           emergency_credit_minor=emergency_minor)
            ensure_meter(conn, "m1", account_id="a1", bus_id="b1", protocol="dlt645", address="000000000001",
                         keep_power=False, now=WEDNESDAY_11)
        world = World(store, PolicyEngine(UK, LONDON, {"m1": MeterCaps()}), UK, LONDON, WEDNESDAY_11)
        try:
            if opening_minor:
                world.pay(opening_minor)
            world.read(0)  # baseline
            yield world
        finally:
            store.close()


def settle(world: World, rounds: int = 20) -> None:
    """Decide, carry out what was queued, read back, decide again — a second apart, ``rounds`` times."""
    for _ in range(rounds):
        world.now += timedelta(seconds=1)
        world.review()
        world.execute()


def operations(world: World) -> list[str]:
    rows = world.store.all("SELECT action FROM relay_commands WHERE status = 'confirmed' ORDER BY id")
    return [r["action"] for r in rows if r["action"] != RelayAction.ALARM_ON.value]


def queued(world: World) -> list[tuple[str, str]]:
    """Every relay command the policy asked for, whatever became of it."""
    rows = world.store.all("SELECT action, status FROM relay_commands ORDER BY id")
    return [(r["action"], r["status"]) for r in rows]


def kinds(world: World, kind: str) -> int:
    return int(world.store.scalar("SELECT COUNT(*) FROM events WHERE kind = ?", kind))


def balance(world: World) -> int:
    return int(world.store.scalar("SELECT balance_minor FROM accounts WHERE id = 'a1'"))


def test_emergency_credit_at_zero_balance_never_makes_the_relay_chatter() -> None:
    with uk_world(500) as world:
        assert balance(world) == 0
        settle(world)
        assert operations(world) == [], f"relay operated: {operations(world)}"
        assert queued(world) == [], f"relay commands queued: {queued(world)}"
        assert world.relay is RelayState.CLOSED
        assert kinds(world, "policy_offer_emergency_credit") == 1
        assert kinds(world, "policy_disconnect") == 0
        # The customer runs on the emergency credit, then uses it up: one cut, and it stays cut.
        world.now += timedelta(minutes=30)
        world.read(500 * WH_PER_PENNY + 12 * WH_PER_PENNY)
        assert balance(world) == -512
        settle(world)
        assert operations(world) == [RelayAction.TRIP.value]
        assert world.relay is RelayState.OPEN
        assert kinds(world, "policy_offer_emergency_credit") == 1  # not offered a second time
        # A £3.00 top-up (balance -2.12) does not lend the emergency credit again.
        world.pay(300)
        settle(world)
        assert balance(world) == -212
        assert operations(world) == [RelayAction.TRIP.value] and world.relay is RelayState.OPEN
        # Emergency credit used plus £1 repaid: supply returns, and a new cycle may offer it again.
        world.pay(312)
        settle(world)
        assert operations(world) == [RelayAction.TRIP.value, RelayAction.DIRECT_CLOSE.value]
        assert world.relay is RelayState.CLOSED
        alerts = json.loads(world.store.scalar("SELECT alerts_json FROM accounts WHERE id = 'a1'"))
        assert alerts == {}


def test_emergency_credit_is_not_lent_again_after_a_partial_top_up() -> None:
    # £1.00 of credit, then £6.12 of consumption in one reading: balance -5.12, the emergency credit is gone.
    with uk_world(500, opening_minor=100) as world:
        world.now += timedelta(hours=1)
        world.read(612 * WH_PER_PENNY)
        assert balance(world) == -512
        settle(world, 5)
        assert world.relay is RelayState.OPEN
        world.pay(300)  # balance -2.12: below the reconnect threshold (+1.00)
        settle(world, 5)
        assert balance(world) == -212
        assert world.relay is RelayState.OPEN, "a partial top-up restored supply on emergency credit"
        pending = world.store.all("SELECT action FROM relay_commands WHERE status IN ('pending', 'sending')")
        assert pending == []
        world.pay(312)  # +1.00: the emergency credit used plus £1 repaid
        settle(world, 5)
        assert world.relay is RelayState.CLOSED


def test_no_emergency_credit_offer_to_an_account_without_any() -> None:
    with uk_world(0) as world:
        settle(world, 5)
        assert kinds(world, "policy_offer_emergency_credit") == 0
        assert operations(world) == [RelayAction.TRIP.value]  # credit out on a weekday at 11:00: cut once
        settle(world, 10)
        assert operations(world) == [RelayAction.TRIP.value]
