"""The ingest's checks, its batch writes and its gap tracking, against a real PostgreSQL (tests start it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.sync.signing import Verifier, generate_key, key_id_for, public_key_b64, sign_command
from hq.ingest import gaps
from hq.ingest.migrations import MIGRATIONS, migrate
from hq.ingest.schema import Command, Message, Rejected, parse
from hq.ingest.store import configure, ensure_month, write_batch

pytestmark = pytest.mark.postgres
EPOCH = "0123456789abcdef0123456789abcdef"
T0 = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


def usage(gw: str, seq: int, *, epoch: str = EPOCH, charge: str = "0.50", balance: str = "10.00",
          minute: int = 0, **extra: Any) -> bytes:
    end = (T0 + timedelta(minutes=minute or seq)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = {"schema": "pmg.usage/1", "meter_id": "m1", "account_id": "a1", "interval_start": None,
            "interval_end": end, "register_wh": 1000 + seq, "energy_wh": 10, "charge": charge,
            "balance": balance, "gateway_id": gw, "seq": seq, "epoch": epoch, **extra}
    return json.dumps(body).encode()


def msg(gw: str, seq: int, **kw: Any) -> Message:
    m = parse(f"pmg/{gw}/meters/m1/usage", usage(gw, seq, **kw), prefix="pmg")
    assert isinstance(m, Message), m
    return m


@pytest.fixture
def conn(pg_dsn: str) -> Any:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        assert migrate(c) == list(range(1, len(MIGRATIONS) + 1))
        assert migrate(c) == []  # versioned: a second run applies nothing
        configure(c)
        yield c


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("pmg/gw/meters/m1/usage", b"{not json", "not JSON"),
        ("pmg/gw/meters/m1/usage", b"[1]", "not a JSON object"),
        ("pmg/gw/meters/m1/usage", usage("gw", 1, charge=0.5), "charge: not a decimal string"),  # type: ignore[arg-type]
        ("pmg/gw/meters/m1/usage", usage("other", 1), "gateway_id: does not match"),
        ("pmg/gw/meters/m2/usage", usage("gw", 1), "meter_id: does not match"),
        ("pmg/gw/meters/m1/usage", usage("gw", 1, epoch="XYZ"), "epoch: not 32"),
        ("pmg/gw/meters/m1/usage", usage("gw", 0), "seq: not a positive"),
        ("pmg/gw/events", usage("gw", 1), "schema: expected 'pmg.event/1'"),
        ("pmg/gw/whatever", b"{}", "unknown topic"),
        ("elsewhere/x", b"{}", "not a gateway topic"),
    ],
)
def test_bad_messages_are_rejected_with_the_reason(topic: str, payload: bytes, reason: str) -> None:
    r = parse(topic, payload, prefix="pmg")
    assert isinstance(r, Rejected) and reason in r.reason and r.payload == payload


def test_a_command_without_a_valid_signature_is_rejected_as_unsigned() -> None:
    key = generate_key()
    kid = key_id_for(key.public_key())
    verifier = Verifier({kid: public_key_b64(key.public_key())})
    body = {"id": "c1", "type": "ping", "gateway_id": "gw", "issued_at": "2027-01-01T00:00:00Z",
            "expires_at": "2027-01-01T01:00:00Z"}
    bad = parse("pmg/gw/commands/ping", json.dumps(body).encode(), prefix="pmg", verifier=verifier)
    assert isinstance(bad, Rejected) and bad.reason.startswith("unsigned command")
    ok = parse("pmg/gw/commands/ping", json.dumps(sign_command(body, key, kid)).encode(), prefix="pmg",
               verifier=verifier)
    assert isinstance(ok, Command)


def test_a_batch_is_stored_once_however_often_it_is_delivered(conn: Any) -> None:
    ensure_month(conn, datetime(2027, 3, 1).date())
    batch = [msg("gw", s) for s in (1, 2, 3)] + [msg("gw", 2)]
    out = write_batch(conn, batch)
    assert (out.stored, out.duplicates) == (3, 1)
    again = write_batch(conn, [msg("gw", 3), msg("gw", 4)])
    assert (again.stored, again.duplicates) == (1, 1)
    assert conn.execute("SELECT count(*) FROM usage").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM usage_2027_03").fetchone()[0] == 4  # the month's partition
    # the same seq in another epoch (a reinstalled gateway) is another message
    write_batch(conn, [msg("gw", 1, epoch="f" * 32)])
    assert conn.execute("SELECT count(*) FROM received").fetchone()[0] == 5


def test_ledger_keeps_charges_payments_and_the_latest_balance_exactly(conn: Any) -> None:
    pay = {"schema": "pmg.event/1", "event_id": 9, "at": "2027-03-01T12:10:30Z", "kind": "payment_applied",
           "severity": "info", "account_id": "a1", "meter_id": None, "actor": "hq",
           "detail": {"payment_id": "p1", "amount": "50.00", "balance": "58.90"},
           "gateway_id": "gw", "seq": 11, "epoch": EPOCH}
    ev = parse("pmg/gw/events", json.dumps(pay).encode(), prefix="pmg")
    assert isinstance(ev, Message)
    write_batch(conn, [msg("gw", 10, charge="1.10", balance="8.90"), ev, msg("gw", 12, minute=20, balance="58.40")])
    rows = conn.execute("SELECT kind, amount, balance FROM ledger ORDER BY seq").fetchall()
    assert [(k, str(a), str(b)) for k, a, b in rows] == [
        ("charge", "-1.10", "8.90"), ("payment", "50.00", "58.90"), ("charge", "-0.50", "58.40")]
    assert str(conn.execute("SELECT balance FROM balances WHERE account_id = 'a1'").fetchone()[0]) == "58.40"


def test_quarantine_keeps_the_payload_and_the_reason(conn: Any) -> None:
    bad = parse("pmg/gw/meters/m1/usage", b"\xff\x00garbage", prefix="pmg")
    assert isinstance(bad, Rejected)
    write_batch(conn, [msg("gw", 1)], [bad])
    assert conn.execute("SELECT reason, payload FROM quarantine").fetchall() == [("not JSON", b"\xff\x00garbage")]


def test_gaps_open_after_settle_ignore_snapshots_and_close_when_filled(conn: Any) -> None:
    write_batch(conn, [msg("gw", s) for s in (5, 6, 9)])
    assert gaps.scan(conn, T0, settle=timedelta(seconds=5))
    assert gaps.open_gaps(conn) == []  # the epoch is new: its floor is not set before settle
    gaps.scan(conn, T0 + timedelta(seconds=6))
    [g] = gaps.open_gaps(conn)
    assert (g.from_seq, g.to_seq, g.opened_at) == (7, 8, T0 + timedelta(seconds=6))
    # a snapshot far ahead fills its own seq but opens no gap below it
    state = {"schema": "pmg.state/1", "meter_id": "m1", "account_id": "a1", "relay": "on", "balance": "1.00",
             "policy_state": "ok", "register_wh": 1, "at": "2027-03-01T12:00:00Z", "gateway_id": "gw",
             "seq": 40, "epoch": EPOCH, "snapshot": True}
    snap = parse("pmg/gw/meters/m1/state", json.dumps(state).encode(), prefix="pmg")
    assert isinstance(snap, Message) and not snap.counted
    write_batch(conn, [snap, msg("gw", 8)])
    gaps.scan(conn, T0 + timedelta(seconds=60))
    [g] = gaps.open_gaps(conn)
    assert (g.from_seq, g.to_seq, g.opened_at) == (7, 7, T0 + timedelta(seconds=6))  # keeps its age
    write_batch(conn, [msg("gw", 7)])
    gaps.scan(conn, T0 + timedelta(seconds=61))
    assert gaps.open_gaps(conn) == []
    assert conn.execute("SELECT floor_seq FROM epochs").fetchone()[0] == 9


def test_resend_is_signed_after_the_delay_and_gone_ranges_stop_being_gaps(conn: Any) -> None:
    key = generate_key()
    kid = key_id_for(key.public_key())
    write_batch(conn, [msg("gw", s) for s in (1, 2, 6)])
    gaps.scan(conn, T0)
    gaps.scan(conn, T0 + timedelta(seconds=10))
    sent: list[tuple[str, dict[str, Any]]] = []

    def ask(at: datetime) -> int:
        return gaps.request_resends(conn, at, lambda gw, c: sent.append((gw, c)), key, kid,
                                    delay=timedelta(seconds=30), retry=timedelta(seconds=300))

    assert ask(T0 + timedelta(seconds=20)) == 0  # not yet: the gap is 10 s old
    assert ask(T0 + timedelta(seconds=41)) == 1
    assert ask(T0 + timedelta(seconds=60)) == 0  # asked already; again only after the retry
    [(gw, cmd)] = sent
    assert gw == "gw" and (cmd["type"], cmd["epoch"], cmd["from_seq"], cmd["to_seq"]) == ("resend", EPOCH, 3, 5)
    Verifier({kid: public_key_b64(key.public_key())}).verify(cmd)
    ack = {"schema": "pmg.ack/1", "command_id": cmd["id"], "type": "resend", "status": "applied",
           "code": "applied", "reason": None, "result": {"resent": [[3, 3]], "gone": [[4, 5]]},
           "at": "2027-03-01T12:01:00Z", "gateway_id": "gw", "seq": 7, "epoch": EPOCH}
    parsed = parse("pmg/gw/acks", json.dumps(ack).encode(), prefix="pmg")
    assert isinstance(parsed, Message)
    write_batch(conn, [parsed, msg("gw", 3, resent=True)])
    gaps.scan(conn, T0 + timedelta(seconds=70))
    assert gaps.open_gaps(conn) == []
    assert gaps.lost(conn) == [("gw", EPOCH, 4, 5)]
