"""Reconciliation: the replicated ledger against a gateway's report and chain heads (real PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from test_ingest_store import EPOCH, msg

from hq.ingest.migrations import migrate
from hq.ingest.reconcile import reconcile
from hq.ingest.schema import Message, parse
from hq.ingest.store import configure, write_batch

pytestmark = pytest.mark.postgres


@pytest.fixture
def conn(pg_dsn: str) -> Any:
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        migrate(c)
        configure(c)
        yield c


def parsed(topic: str, body: dict[str, Any]) -> Message:
    m = parse(f"pmg/gw/{topic}", json.dumps({"gateway_id": "gw", "epoch": EPOCH, **body}).encode(), prefix="pmg")
    assert isinstance(m, Message), m
    return m


def report(seq: int, energy: int, charges: str, payments: str, closing: str) -> Message:
    return parsed("reports", {
        "schema": "pmg.report/1", "period": "day", "period_start": "2027-03-01T00:00:00Z",
        "period_end": "2027-03-02T00:00:00Z", "seq": seq,
        "accounts": [{"account_id": "a1", "energy_wh": energy, "charges": charges, "payments": payments,
                      "closing_balance": closing}]})


def status(length: int, head: str) -> Message:
    return parsed("status", {"schema": "pmg.status/1", "state": "online", "at": f"2027-03-02T00:00:0{length}Z",
                             "chain_head": head * 64, "chain_length": length})


def test_figures_that_agree_give_no_mismatch_and_a_rewritten_history_is_caught(conn: Any) -> None:
    pay = parsed("events", {"schema": "pmg.event/1", "event_id": 1, "at": "2027-03-01T12:30:00Z",
                            "kind": "payment_applied", "severity": "info", "account_id": "a1", "meter_id": None,
                            "actor": "hq", "detail": {"payment_id": "p1", "amount": "20.00", "balance": "29.00"},
                            "seq": 3})
    write_batch(conn, [msg("gw", 1, charge="0.50", balance="9.50"), msg("gw", 2, charge="0.50", balance="9.00"),
                       pay, msg("gw", 4, minute=40, charge="0.25", balance="28.75"),
                       report(5, 30, "1.25", "20.00", "28.75"), status(1, "a"), status(2, "b")])
    mismatches, counts = reconcile(conn)
    assert mismatches == [] and counts["reports"] == 1 and counts["accounts"] == 1 and counts["chain_heads"] == 2

    write_batch(conn, [report(6, 31, "1.20", "20.00", "28.70"), status(2, "c")])
    mismatches, _ = reconcile(conn, "gw")
    assert sorted(m.what for m in mismatches) == ["chain", "charges", "closing_balance", "energy_wh"]
    lines = [m.line() for m in mismatches]
    assert "gw: charges report day 2027-03-01T00:00:00Z account a1: head office 1.25, gateway 1.20" in lines
    assert reconcile(conn, "another")[0] == []
