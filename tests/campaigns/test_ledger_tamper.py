"""Tamper evidence (docs/ledger.md, "Tamper evidence"): no ledger silently rewritten.

Each tamper is made the way someone with a shell on the gateway would make it: a plain ``sqlite3``
connection to the database file (no pmg code, so none of the functions pmg registers), dropping the
append-only triggers where they stand in the way.  ``verify`` must then name the table and row, and
a rewound billing position must never charge energy twice.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from support.ledger_books import T0, TARIFFS, make_book, new_ledger, reading

from drivers.base import RelayAction
from gateway.cli.main import cli
from gateway.config import MqttConfig, load_config
from gateway.ledger.accounts import seed_from_config
from gateway.ledger.charging import record_reading
from gateway.ledger.payments import apply_payment
from gateway.ledger.verify import verify
from gateway.store import migrations, relay_queue
from gateway.store.db import Store, open_store

H = timedelta(hours=1)


@contextmanager
def shell(db: Path) -> Iterator[sqlite3.Connection]:
    """The tamperer's ``sqlite3`` shell: a bare connection, autocommit."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def without(sh: sqlite3.Connection, *triggers: str) -> Iterator[None]:
    """Drop triggers for a tamper and put them back after it (covering one's tracks)."""
    saved = [
        sh.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = ?", (name,)).fetchone()[0]
        for name in triggers
    ]
    for name in triggers:
        sh.execute(f"DROP TRIGGER {name}")
    yield
    for sql in saved:
        sh.execute(sql)


def _read(store: Store, book: Any, register: int, at: Any) -> Any:
    with store.tx() as conn:
        return record_reading(conn, "m1", reading(register, at), book.pricer(conn), max_power_w=10_000)


def _history(tmp_path: Path) -> tuple[Store, Any]:
    """A ledger with a payment, three charged readings and an event."""
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db")
    with store.tx() as conn:
        apply_payment(conn, "pay-1", "acc1", 10_000, T0, source="test")
    for i, register in enumerate((1_000, 1_500, 2_100, 2_800)):
        _read(store, book, register, T0 + i * H)
    assert verify(store) == []
    return store, book


def _lines(problems: list[Any]) -> list[str]:
    return [str(p) for p in problems]


def test_a_rewound_billing_position_charges_nothing_twice_and_verify_names_the_meter(tmp_path: Path) -> None:
    store, book = _history(tmp_path)
    charged_wh = store.scalar("SELECT SUM(energy_wh) FROM entries WHERE kind = 'charge'")
    assert charged_wh == 1_800
    with shell(store.path) as sh:
        sh.execute("UPDATE meters SET last_register_wh = last_register_wh - 300")
    problems = _lines(verify(store))
    out = _read(store, book, 3_000, T0 + 4 * H)
    assert (out.outcome, out.delta_wh) == ("charged", 200)  # from the ledger's 2,800, not the row's 2,500
    assert store.scalar("SELECT SUM(energy_wh) FROM entries WHERE kind = 'charge'") == 2_000  # = 3,000 - 1,000
    assert problems and any("meter m1" in p and "2500" in p and "2800" in p for p in problems), problems
    alarm = store.one("SELECT severity, detail_json FROM events WHERE kind = 'billing_position_mismatch'")
    assert alarm is not None and alarm["severity"] == "alarm"
    assert json.loads(alarm["detail_json"]) == {
        "ledger_reading_id": json.loads(alarm["detail_json"])["ledger_reading_id"],
        "ledger_register_wh": 2_800,
        "meter_reading_id": json.loads(alarm["detail_json"])["meter_reading_id"],
        "meter_register_wh": 2_500,
    }
    assert verify(store) == []  # the reading wrote the ledger's position back
    store.close()


def test_a_rewound_position_after_readings_that_charged_nothing_is_caught_too(tmp_path: Path) -> None:
    """A zero-delta reading moves the position without a charge entry: its reading row is the check."""
    store, book = _history(tmp_path)
    assert _read(store, book, 2_800, T0 + 4 * H).delta_wh == 0
    with shell(store.path) as sh:
        sh.execute("UPDATE meters SET last_register_wh = 2000")
    assert any("meter m1" in p for p in _lines(verify(store)))
    assert _read(store, book, 2_900, T0 + 5 * H).delta_wh == 100
    assert store.scalar("SELECT SUM(energy_wh) FROM entries WHERE kind = 'charge'") == 1_900
    store.close()


def test_a_meter_idle_beside_a_busy_sibling_is_checked_by_the_reading_it_cites(tmp_path: Path) -> None:
    """The search for a meter's last charge is bounded (``CHARGE_WINDOW`` of the account's newest
    charges: it runs before every reading); beyond it, the row's cited reading is the check."""
    from gateway.ledger.position import CHARGE_WINDOW

    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db", meters=(("m1", "acc1"), ("m2", "acc1")))

    def read(meter: str, register: int, at: Any) -> Any:
        with store.tx() as conn:
            return record_reading(conn, meter, reading(register, at), book.pricer(conn), max_power_w=10_000)

    read("m1", 1_000, T0)
    read("m1", 1_400, T0 + H)
    for i in range(CHARGE_WINDOW + 2):
        read("m2", 100 * i, T0 + H + i * timedelta(minutes=1))
    with shell(store.path) as sh:
        sh.execute("UPDATE meters SET last_register_wh = 1100 WHERE id = 'm1'")
    assert any("meter m1" in p for p in _lines(verify(store)))
    assert read("m1", 1_500, T0 + 3 * H).delta_wh == 100
    assert store.scalar("SELECT SUM(energy_wh) FROM entries WHERE meter_id = 'm1'") == 500
    assert verify(store) == []
    store.close()


def test_a_meter_replacement_is_not_a_position_mismatch(tmp_path: Path) -> None:
    from gateway.ledger.quarantine import replace_meter

    store, book = _history(tmp_path)
    with store.tx() as conn:
        replace_meter(conn, "m1", 2_900, "000000000009", book.pricer(conn), T0 + 4 * H, reason="burnt", actor="t")
    assert _read(store, book, 40, T0 + 5 * H).outcome == "baseline"
    assert _read(store, book, 140, T0 + 6 * H).delta_wh == 100
    assert store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'billing_position_mismatch'") == 0
    assert verify(store) == []
    store.close()


def test_a_changed_entry_timestamp_is_detected(tmp_path: Path) -> None:
    store, _ = _history(tmp_path)
    entry = store.scalar("SELECT id FROM entries WHERE kind = 'charge' ORDER BY id LIMIT 1")
    with shell(store.path) as sh, without(sh, "entries_append_only_u"):
        sh.execute("UPDATE entries SET created_at = '2026-01-01T00:00:00Z' WHERE id = ?", (entry,))
    problems = _lines(verify(store))
    assert problems == [f"chain: entries row {entry} changed after it was chained (link {_link(store, 'entries', entry)})"]
    store.close()


def test_deleted_events_are_detected(tmp_path: Path) -> None:
    store, _ = _history(tmp_path)
    with store.tx() as conn:
        from gateway.store import events

        first = events.record(conn, "note", T0, detail={"n": 1})
        second = events.record(conn, "note", T0, detail={"n": 2})
    with shell(store.path) as sh, without(sh, "events_append_only_d"):
        sh.execute("DELETE FROM events WHERE id IN (?, ?)", (first, second))
    problems = _lines(verify(store))
    assert len(problems) == 2 and all(p.startswith("chain: events row ") and "is missing" in p for p in problems)
    assert f"events row {first} " in problems[0] and f"events row {second} " in problems[1]
    store.close()


def _forge_payment(sh: sqlite3.Connection) -> None:
    """A payment with its entry and the balance cache moved with it: every cache check agrees."""
    sh.execute("BEGIN")
    sh.execute(
        "INSERT INTO payments(payment_id, account_id, amount_minor, received_at, source, result_json) "
        "VALUES ('forged', 'acc1', 50000, '2026-03-02T05:00:00Z', 'cash', ?)",
        (json.dumps({"credit_minor": 50000}),),
    )
    sh.execute(
        "INSERT INTO entries(account_id, kind, amount_minor, external_id, created_at) "
        "VALUES ('acc1', 'payment', 50000, 'forged', '2026-03-02T05:00:00Z')"
    )
    sh.execute("UPDATE accounts SET balance_minor = balance_minor + 50000 WHERE id = 'acc1'")
    sh.execute("COMMIT")


def test_a_consistent_forged_payment_is_detected(tmp_path: Path) -> None:
    store, _ = _history(tmp_path)
    with shell(store.path) as sh:
        with pytest.raises(sqlite3.OperationalError):  # the chain's triggers need pmg's functions
            _forge_payment(sh)
        sh.execute("ROLLBACK")
        names = ("chain_entries", "chain_payments")
        with without(sh, *names):
            _forge_payment(sh)
            dropped = _lines(verify(store))
    payment = store.scalar("SELECT rowid FROM payments WHERE payment_id = 'forged'")
    entry = store.scalar("SELECT id FROM entries WHERE external_id = 'forged'")
    assert dropped[:2] == [f"chain: trigger {name} is missing (dropped)" for name in names]
    assert _lines(verify(store)) == dropped[2:] == [
        f"chain: entries row {entry} is not in the chain (written with its triggers dropped)",
        f"chain: payments row {payment} is not in the chain (written with its triggers dropped)",
    ]
    store.close()


def _link(store: Store, table: str, row_id: int) -> int:
    return int(store.scalar("SELECT seq FROM chain WHERE tbl = ? AND row_id = ?", table, row_id))


def _rehash(sh: sqlite3.Connection) -> None:
    """What a forger who knows the scheme does after changing rows: recompute every link's hash."""
    from gateway.store.chain import CANONICAL, SNAPSHOT_TABLES, link_hash

    prev = None
    for seq, table, row_id, content in sh.execute("SELECT seq, tbl, row_id, content FROM chain ORDER BY seq").fetchall():
        if table in CANONICAL and table not in SNAPSHOT_TABLES:
            content = sh.execute(f"SELECT {CANONICAL[table]} FROM {table} WHERE rowid = ?", (row_id,)).fetchone()[0]
        prev = link_hash(prev, table, content)
        sh.execute("UPDATE chain SET hash = ? WHERE seq = ?", (prev, seq))


def test_a_rewritten_chain_is_caught_by_a_head_seen_earlier(tmp_path: Path) -> None:
    from gateway.ledger.chain_check import parse_head
    from gateway.store.chain import head

    store, book = _history(tmp_path)
    seen = head(store.conn)
    assert seen is not None and seen.length == store.scalar("SELECT COUNT(*) FROM chain")
    _read(store, book, 3_000, T0 + 4 * H)  # the chain grows after the head office saw it
    assert verify(store, expect_head=parse_head(str(seen))) == []
    assert verify(store, expect_head=parse_head(seen.hash)) == []  # some link has it
    entry = store.scalar("SELECT id FROM entries WHERE kind = 'charge' ORDER BY id LIMIT 1")
    with shell(store.path) as sh, without(sh, "entries_append_only_u", "chain_append_only_u"):
        sh.execute("UPDATE entries SET amount_minor = amount_minor + 1 WHERE id = ?", (entry,))
        sh.execute("UPDATE accounts SET balance_minor = balance_minor + 1")
        sh.execute("UPDATE meters SET charged_minor = charged_minor - 1, charged_exact = charged_exact - 0.01")
        _rehash(sh)
    assert verify(store) == []  # consistent in itself: only an earlier head tells
    assert _lines(verify(store, expect_head=parse_head(str(seen)))) == [
        f"chain: links 1..{seen.length} no longer hash to the expected head {seen.hash} (history rewritten)"
    ]
    longer = parse_head(f"{seen.hash}:{seen.length + 50}")
    assert any("links removed from its end" in p for p in _lines(verify(store, expect_head=longer)))
    store.close()


def test_a_silent_change_of_a_relay_command_is_detected(tmp_path: Path) -> None:
    store, _ = _history(tmp_path)
    with store.tx() as conn:
        cid = relay_queue.request(conn, "m1", RelayAction.TRIP, T0 + 5 * H, reason="no credit", actor="policy")
    assert cid is not None
    with store.tx() as conn:
        conn.execute("UPDATE relay_commands SET status = 'confirmed', outcome = 'ok' WHERE id = ?", (cid,))
    assert verify(store) == []
    assert store.scalar("SELECT COUNT(*) FROM chain WHERE tbl = 'relay_commands'") == 2  # each version
    with shell(store.path) as sh:
        with pytest.raises(sqlite3.OperationalError, match="pmg_chain_link"):  # the shell cannot change it
            sh.execute("UPDATE relay_commands SET actor = 'technician' WHERE id = ?", (cid,))
        with without(sh, "chain_relay_commands_u"):
            sh.execute("UPDATE relay_commands SET actor = 'technician' WHERE id = ?", (cid,))
    problems = _lines(verify(store))
    assert problems and all(f"relay_commands row {cid}" in p for p in problems), problems
    store.close()


def test_a_database_with_history_is_migrated_in_place(tmp_path: Path) -> None:
    """The chain starts at its migration; what came before is one genesis digest."""
    step = next(i for i, m in enumerate(migrations.MIGRATIONS) if "CREATE TABLE chain" in m)
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for script in migrations.MIGRATIONS[:step]:  # the previous release's schema
        for statement in migrations._split(script):
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {step}")
    old = Store(conn, db)
    book = make_book(tmp_path)
    from gateway.ledger.accounts import ensure_account, ensure_meter

    with old.tx() as c:
        ensure_account(c, "acc1", tariff_id="flat-cn", currency="CNY", now=T0)
        ensure_meter(c, "m1", account_id="acc1", bus_id="b1", protocol="dlt645", address="1", keep_power=False, now=T0)
        apply_payment(c, "pay-old", "acc1", 5_000, T0, source="test")
        relay_queue.request(c, "m1", RelayAction.TRIP, T0, reason="old", actor="policy")
    for i, register in enumerate((100, 600, 900)):
        _read(old, book, register, T0 + i * H)
    old.close()

    store = open_store(db)  # migrates
    assert store.scalar("PRAGMA user_version") == len(migrations.MIGRATIONS)
    genesis = json.loads(store.scalar("SELECT content FROM chain WHERE seq = 1"))
    assert genesis["entries"]["rows"] == 3 and genesis["payments"]["rows"] == 1
    assert store.scalar("SELECT COUNT(*) FROM chain") == 1
    assert verify(store) == []
    with store.tx() as c:
        apply_payment(c, "pay-new", "acc1", 1_000, T0 + 3 * H, source="test")
    _read(store, book, 1_000, T0 + 4 * H)
    assert store.scalar("SELECT COUNT(*) FROM chain") == 1 + 4
    assert verify(store) == []
    first = store.scalar("SELECT id FROM entries ORDER BY id LIMIT 1")
    with shell(db) as sh, without(sh, "entries_append_only_u"):  # covered by the genesis digest
        sh.execute("UPDATE entries SET created_at = '2026-01-01T00:00:00Z' WHERE id = ?", (first,))
    assert _lines(verify(store)) == [
        "chain: entries rows up to 3 changed since the chain began (genesis: 3 rows, now 3)"
    ]
    store.close()


def _cli_config(tmp_path: Path) -> Path:
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(
        f'gateway_id = "gw"\ntimezone = "Asia/Shanghai"\ndatabase = "{tmp_path / "pmg.db"}"\n'
        f'tariff_dir = "{TARIFFS}"\n'
        '[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "/dev/null"\n'
        '[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n'
        "max_power_w = 10000\n"
    )
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, load_config(cfg_path), T0)
    book = make_book(tmp_path)
    for i, register in enumerate((1_000, 1_500, 2_100)):
        _read(store, book, register, T0 + i * H)
    store.close()
    return cfg_path


def test_cli_verify_names_each_tamper_in_one_line_and_checks_a_head(tmp_path: Path) -> None:
    cfg_path = _cli_config(tmp_path)
    runner = CliRunner()
    base = ["ledger", "verify", "-c", str(cfg_path)]
    ok = runner.invoke(cli, [*base, "--json"])
    assert ok.exit_code == 0, ok.output
    body = json.loads(ok.output)
    head = f"{body['chain_head']}:{body['chain_length']}"
    assert runner.invoke(cli, [*base, "--expect-head", head]).exit_code == 0
    bad = runner.invoke(cli, [*base, "--expect-head", "abc:1"])
    assert bad.exit_code == 2 and bad.output.strip().splitlines() == [
        "pmg: error: --expect-head 'abc:1': the hash must be 64 hex digits (HASH or HASH:LENGTH)"
    ]
    with shell(tmp_path / "pmg.db") as sh:
        sh.execute("UPDATE meters SET last_register_wh = last_register_wh - 300")
        with without(sh, "entries_append_only_u"):
            sh.execute("UPDATE entries SET created_at = '2026-01-01T00:00:00Z' WHERE id = 1")
    res = runner.invoke(cli, [*base, "--expect-head", head])
    assert res.exit_code == 1
    mismatches = [line for line in res.output.splitlines() if line.startswith("MISMATCH")]
    assert mismatches == [
        "MISMATCH billing position (register Wh) of meter m1: cached 1800, derived from entries 2100",
        "MISMATCH chain: entries row 1 changed after it was chained (link 2)",
        f"MISMATCH chain: links 1..{body['chain_length']} no longer hash to the expected head "
        f"{body['chain_head']} (history rewritten)",
    ]


def test_status_messages_carry_the_chain_head(tmp_path: Path) -> None:
    from gateway.core.timeutil import system_clock
    from gateway.runtime.status import collect
    from gateway.sync.contract import load_schema
    from gateway.sync.mqtt import MqttLink

    store, book = _history(tmp_path)
    stored = store.one("SELECT hash, seq FROM chain ORDER BY seq DESC LIMIT 1")
    assert collect(store, T0)["chain"] == {"head": stored[0], "length": stored[1]}
    link = MqttLink(MqttConfig(host="localhost"), "gw", store, system_clock)
    link.refresh_chain_head()
    body = json.loads(link._status_payload("online"))
    assert (body["chain_head"], body["chain_length"]) == (stored[0], stored[1])
    jsonschema.Draft202012Validator(load_schema("status")).validate(body)
    _read(store, book, 3_000, T0 + 4 * H)
    link.refresh_chain_head()
    assert json.loads(link._status_payload("offline"))["chain_length"] == stored[1] + 1
    # the head is recomputable by anyone holding the rows: sha256(previous hash, table, canonical row)
    last = store.one("SELECT tbl, row_id FROM chain ORDER BY seq DESC LIMIT 1")
    row = store.one(
        "SELECT json_object('account_id', account_id, 'amount_minor', amount_minor, 'created_at', created_at, "
        "'debt_minor', debt_minor, 'detail_json', detail_json, 'energy_wh', energy_wh, 'external_id', external_id, "
        "'id', id, 'kind', kind, 'meter_id', meter_id, 'period_end', period_end, 'period_start', period_start, "
        "'reading_id', reading_id) FROM entries WHERE id = ?",
        last["row_id"],
    )
    assert last["tbl"] == "entries"
    text = f"{stored[0]}\nentries\n{row[0]}"
    assert json.loads(link._status_payload("online"))["chain_head"] == hashlib.sha256(text.encode()).hexdigest()
    store.close()


@pytest.mark.campaign
def test_kill_9_mid_write_leaves_a_valid_chain(tmp_path: Path) -> None:
    """The writer of the ledger's crash campaign (payments and readings, each its own transaction),
    killed with SIGKILL at random instants: every committed row is in the chain and the chain verifies."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from support.ledger_books import REPO
    from test_ledger_crash import WRITER

    db, side, script = tmp_path / "l.db", tmp_path / "committed.txt", tmp_path / "writer.py"
    new_ledger(db).close()
    script.write_text(WRITER)
    rng = random.Random(20261202)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(4):
        before = len(side.read_text().splitlines()) if side.exists() else 0
        proc = subprocess.Popen(
            [sys.executable, str(script), str(db), str(side), str(TARIFFS)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            target = before + 1 + rng.randint(10, 80)
            deadline = time.monotonic() + 60
            while (len(side.read_text().splitlines()) if side.exists() else 0) < target:
                assert proc.poll() is None, "writer died"
                assert time.monotonic() < deadline, "writer made no progress"
                time.sleep(0.005)  # polling the side file; the kill instant is whatever the writer is doing
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
    store = open_store(db)
    try:
        rows = sum(
            store.scalar(f"SELECT COUNT(*) FROM {table}") for table in ("entries", "payments", "events")
        ) + store.scalar("SELECT COUNT(*) FROM relay_commands")
        assert rows > 40
        assert store.scalar("SELECT COUNT(*) FROM chain") == 1 + rows  # genesis + one link per row
        assert verify(store) == []
    finally:
        store.close()


def test_the_head_office_receives_fresh_heads_while_connected(tmp_path: Path, mosquitto: Any) -> None:
    """The birth message carries the head of its connection; as the ledger grows, the retained status
    is republished with the new head (at most every ``STATUS_REPUBLISH_S``, only when it moved)."""
    import asyncio

    from support.gateway_harness import subscriber
    from support.signed_commands import running_gateway
    from support.waiting import async_wait_for, wait_for

    from gateway.store.chain import head
    from gateway.sync.mqtt import STATUS_REPUBLISH_S

    with subscriber(mosquitto.port, "pmg/#") as hq:

        async def scenario() -> None:
            async with running_gateway(tmp_path, mosquitto.port) as run:
                link = run.gateway.mqtt
                assert link is not None
                await async_wait_for(lambda: link.stats.subscribed, what="link subscribed")
                await async_wait_for(lambda: hq.of("/status"), what="birth message")
                birth = hq.of("/status")[0]
                assert birth["state"] == "online" and birth["chain_length"] >= 1
                with run.store.tx() as conn:
                    apply_payment(conn, "pay-hq", "acc1", 1_000, run.gateway.clock(), source="test")
                now = head(run.store.conn)
                assert now is not None and now.length > birth["chain_length"]
                link.refresh_chain_head()
                t = run.gateway.monotonic()
                assert link.publish_status(t)
                assert not link.publish_status(t + 1)  # the head did not move
                with run.store.tx() as conn:
                    apply_payment(conn, "pay-hq-2", "acc1", 1_000, run.gateway.clock(), source="test")
                link.refresh_chain_head()
                assert not link.publish_status(t + 1)  # too soon
                await async_wait_for(
                    lambda: any(s.get("chain_head") == now.hash for s in hq.of("/status")), what="fresh head"
                )
                assert link.publish_status(t + STATUS_REPUBLISH_S + 1)

        asyncio.run(scenario())
        wait_for(lambda: hq.of("/status")[-1]["state"] == "offline", what="last will / clean stop")
        heads = [(s["chain_head"], s["chain_length"]) for s in hq.of("/status")]
        assert len(set(heads)) >= 3 and [n for _, n in heads] == sorted(n for _, n in heads)
