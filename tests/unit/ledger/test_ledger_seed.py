"""Seeding from configuration: wiring follows the file, head-office decisions survive a restart."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gateway.config import load_config
from gateway.ledger.accounts import seed_from_config
from gateway.store import open_store

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
BASE = """gateway_id = "gw"
database = "pmg.db"
[[buses]]
id = "b1"
protocol = "dlt645"
url = "/dev/ttyUSB0"
[[accounts]]
id = "a1"
protected = false
[[meters]]
id = "m1"
bus = "b1"
address = "000000000001"
account = "a1"
tariff = "flat-cn"
"""


def test_a_restart_keeps_what_the_head_office_changed(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(BASE)
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, load_config(path), NOW)
    with store.tx() as conn:  # the head office marks the customer protected and sets keep-power
        conn.execute(
            "UPDATE accounts SET protected = 1, protected_category = 'medical_equipment' WHERE id = 'a1'"
        )
        conn.execute("UPDATE meters SET keep_power = 1 WHERE id = 'm1'")
    seed_from_config(store, load_config(path), NOW)  # restart with the same file
    assert store.scalar("SELECT protected FROM accounts WHERE id = 'a1'") == 1
    assert store.scalar("SELECT keep_power FROM meters WHERE id = 'm1'") == 1

    path.write_text(BASE.replace('address = "000000000001"', 'address = "000000000007"'))
    seed_from_config(store, load_config(path), NOW)  # a technician rewired the meter: wiring follows the file
    assert store.scalar("SELECT address FROM meters WHERE id = 'm1'") == "000000000007"
    assert store.scalar("SELECT keep_power FROM meters WHERE id = 'm1'") == 1

    path.write_text(
        BASE.replace('address = "000000000001"\naccount = "a1"', 'address = "000000000001"\naccount = "a2"')
    )
    seed_from_config(store, load_config(path), NOW)  # the file changed the assignment: it applies
    assert store.scalar("SELECT account_id FROM meters WHERE id = 'm1'") == "a2"
    assert store.scalar("SELECT keep_power FROM meters WHERE id = 'm1'") == 0
    store.close()
