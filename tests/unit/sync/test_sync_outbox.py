"""The outbox: transactional, gap-free sequence numbers, bounded backlog that never drops billing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.store import outbox, outbox_bound
from gateway.store.db import Store, open_store
from hq.consumer import HqConsumer

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "gw.db")
    yield s
    s.close()


def test_a_rolled_back_change_leaves_no_message_and_no_seq_gap(store: Store) -> None:
    with store.tx() as conn:
        assert outbox.put(conn, "events", {"schema": "pmg.event/1", "n": 1}, T0) == 1
    with pytest.raises(RuntimeError), store.tx() as conn:
        outbox.put(conn, "events", {"schema": "pmg.event/1", "n": 2}, T0)
        raise RuntimeError("the change failed")
    with store.tx() as conn:
        assert outbox.put(conn, "events", {"schema": "pmg.event/1", "n": 3}, T0) == 2
    assert [m.seq for m in outbox.pending(store)] == [1, 2]


def test_backlog_metrics_report_size_and_age(store: Store) -> None:
    with store.tx() as conn:
        for i in range(3):
            outbox.put(conn, "events", {"schema": "pmg.event/1", "n": i}, T0 + timedelta(seconds=i))
    outbox.mark_delivered(store, [1], T0)
    m = outbox.backlog_metrics(store, T0 + timedelta(seconds=61))
    assert m == {
        "pmg_outbox_backlog_messages": 2,
        "pmg_outbox_backlog_billing_messages": 2,
        "pmg_outbox_backlog_oldest_age_seconds": 60.0,
        "pmg_outbox_last_seq": 3,
        "pmg_outbox_last_delivered_seq": 1,
    }


def test_over_the_bound_superseded_snapshots_coalesce_billing_is_kept_and_alarms_raised(store: Store) -> None:
    with store.tx() as conn:
        for i in range(1500):
            meter = f"m{i % 3}"
            outbox.put(
                conn,
                f"meters/{meter}/state",
                {"schema": "pmg.state/1", "i": i},
                T0,
                billing=False,
                retain=True,
            )
            if i % 5 == 0:
                outbox.put(conn, f"meters/{meter}/usage", {"schema": "pmg.usage/1", "i": i}, T0)
        for i in range(900):
            outbox.put(conn, "events", {"schema": "pmg.event/1", "i": i}, T0)
    billing_before = [m.seq for m in outbox.pending(store, 0, 10_000) if m.billing]
    result = outbox_bound.enforce_bound(store, 1000, T0)
    assert result.coalesced == 1497 and result.over
    pending = outbox.pending(store, 0, 10_000)
    assert set(billing_before) <= {m.seq for m in pending}, "a billing message was dropped"
    states = [m for m in pending if m.topic.endswith("/state")]
    assert sorted(m.topic for m in states) == ["meters/m0/state", "meters/m1/state", "meters/m2/state"]
    kinds = [r["kind"] for r in store.all("SELECT kind FROM events ORDER BY id")]
    assert kinds == ["outbox_coalesced", "outbox_over_bound"]
    again = outbox_bound.enforce_bound(store, 1000, T0 + timedelta(minutes=10))
    assert again.coalesced == 0 and again.over
    assert store.scalar("SELECT COUNT(*) FROM events") == 2, "the over-bound alarm repeats at most hourly"

    # The head office, given what remains, sees no gap: the coalesced seqs were announced.
    hq = HqConsumer("127.0.0.1", 1)
    hq.tracker.start_at("gw", 1)
    for m in outbox.pending(store, 0, 10_000):
        body = json.loads(m.envelope("gw"))
        hq.handle("gw", m.topic, m.seq, body)
    assert hq.tracker.gaps("gw") == []
    assert hq.tracker.highest("gw") == outbox.backlog(store).last_seq


def test_under_the_bound_nothing_changes(store: Store) -> None:
    with store.tx() as conn:
        for i in range(10):
            outbox.put(
                conn, "meters/m1/state", {"schema": "pmg.state/1", "i": i}, T0, billing=False, retain=True
            )
    assert outbox_bound.enforce_bound(store, 1000, T0) == outbox_bound.BoundResult(10, 0, False)
    assert len(outbox.pending(store)) == 10


def test_seq_ranges() -> None:
    assert outbox.seq_ranges([9, 1, 2, 3, 7, 10]) == [[1, 3], [7, 7], [9, 10]]
    assert outbox.seq_ranges([]) == []
