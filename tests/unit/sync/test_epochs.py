"""Outbox epochs: every message carries one; a reinstall or a restored backup starts a new one, so that
no (epoch, seq) is ever published with two contents (docs/mqtt.md, "Epochs")."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.store import epochs, outbox
from gateway.store.db import Store, open_store

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _put(store: Store, n: int, topic: str = "events", *, retain: bool = False) -> list[int]:
    with store.tx() as conn:
        return [outbox.put(conn, topic, {"schema": "x/1", "i": i}, T0, retain=retain) for i in range(n)]


def _publish_all(store: Store) -> list[dict[str, object]]:
    """What the link does: record the last seq beside the database, then hand the messages out."""
    msgs = outbox.pending(store, 0, 10_000)
    if msgs:
        epochs.record_published(store.path, msgs[-1].epoch, msgs[-1].seq)
    outbox.mark_delivered(store, [m.seq for m in msgs], T0)
    return [json.loads(m.envelope("gw")) for m in msgs]


def test_a_new_database_has_a_random_epoch_that_every_message_carries(tmp_path: Path) -> None:
    a, b = open_store(tmp_path / "a.db"), open_store(tmp_path / "b.db")
    ea, eb = epochs.current(a.conn), epochs.current(b.conn)
    assert HEX32.match(ea) and HEX32.match(eb) and ea != eb
    assert ea[12] == "4" and ea[16] in "89ab"  # the shape of uuid4().hex
    _put(a, 2)
    _put(a, 1, "meters/m1/state", retain=True)
    bodies = _publish_all(a)
    assert [(m["epoch"], m["seq"]) for m in bodies] == [(ea, 1), (ea, 2), (ea, 3)]
    assert "snapshot" not in bodies[0] and bodies[2]["snapshot"] is True
    again = outbox.kept(a, ea, 1, 3).delivered[2]
    assert json.loads(again.envelope("gw", resent=True))["resent"] is True


def test_a_restored_backup_starts_a_new_epoch_at_its_next_seq(tmp_path: Path) -> None:
    db = tmp_path / "pmg.db"
    store = open_store(db)
    first = epochs.current(store.conn)
    _put(store, 3)
    _publish_all(store)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(db, tmp_path / "backup.db")  # a backup taken at seq 3
    _put(store, 4)
    published = _publish_all(store)  # seqs 4..7 reached the head office under the first epoch
    assert [m["seq"] for m in published] == [4, 5, 6, 7]
    store.close()

    shutil.copy(tmp_path / "backup.db", db)  # restored (the daemon was stopped; no -wal left)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = open_store(db)
    second = epochs.current(store.conn)
    assert second != first and HEX32.match(second)
    _put(store, 2)
    bodies = _publish_all(store)
    assert [(m["epoch"], m["seq"]) for m in bodies] == [(second, 4), (second, 5)]  # never (first, 4) again
    assert outbox.kept(store, first, 1, 7).delivered[-1].epoch == first  # old rows keep their epoch
    assert outbox.kept(store, first, 1, 7).gone == [[4, 7]]
    store.close()

    store = open_store(db)  # an ordinary restart: nothing changes
    assert epochs.current(store.conn) == second
    store.close()


def test_a_database_that_is_not_the_one_last_published_from_starts_a_new_epoch(tmp_path: Path) -> None:
    db = tmp_path / "pmg.db"
    store = open_store(db)
    _put(store, 2)
    _publish_all(store)
    store.close()
    recorded = epochs.read_published(db)
    assert recorded is not None and recorded.seq == 2
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = open_store(db)  # a reinstall: a new database beside the old record
    new = epochs.current(store.conn)
    assert new != recorded.epoch
    assert store.all("SELECT reason FROM outbox_epochs")[0][0] == "other_database"
    assert len(store.all("SELECT * FROM outbox_epochs")) == 1  # its unused first epoch was replaced
    store.close()
    assert epochs.current(open_store(db).conn) == new  # and it is not rotated again at the next start


def test_an_unreadable_record_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "pmg.db"
    first = epochs.current(open_store(db).conn)
    epochs.sidecar_path(db).write_text("{not json")
    assert epochs.current(open_store(db).conn) == first


def test_kept_reports_what_was_trimmed_as_gone(tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    epoch = epochs.current(store.conn)
    _put(store, 10)
    outbox.mark_delivered(store, list(range(1, 9)), T0)
    with store.tx() as conn:
        conn.execute("DELETE FROM outbox WHERE seq IN (3, 4)")  # trimmed (or coalesced)
    found = outbox.kept(store, epoch, 2, 12)
    assert [m.seq for m in found.delivered] == [2, 5, 6, 7, 8]
    assert found.undelivered == [9, 10]
    assert found.resent == [[2, 2], [5, 10]]
    assert found.gone == [[3, 4], [11, 12]]  # 11 and 12 were never allocated
    assert outbox.trim_delivered(store, T0 + timedelta(days=1), keep_last=0) == 6
    assert outbox.kept(store, epoch, 1, 10).gone == [[1, 8]]


class _Link:
    def __init__(self) -> None:
        self.sent: list[int] = []
        self.resends_waiting = 0

    def resend(self, messages: list[outbox.OutboxMessage]) -> None:
        self.sent.extend(m.seq for m in messages)


def test_a_resend_is_refused_with_a_reason_and_sends_nothing_for_a_bad_range(tmp_path: Path) -> None:
    import asyncio
    from types import SimpleNamespace

    import pytest
    from pydantic import ValidationError

    from gateway.sync.commands.handlers import CommandRejected, resend
    from gateway.sync.commands.schema import ResendCmd

    store = open_store(tmp_path / "pmg.db")
    epoch = epochs.current(store.conn)
    _put(store, 5)
    outbox.mark_delivered(store, [1, 2, 3, 4], T0)
    link = _Link()
    ctx = SimpleNamespace(store=store, mqtt=link)
    env = {"id": "r1", "type": "resend", "gateway_id": "gw1", "issued_at": "2026-03-01T00:00:00Z",
           "expires_at": "2026-03-01T01:00:00Z", "key_id": "k", "sig": "x"}  # fmt: skip

    def run(**fields: object) -> dict[str, object]:
        applied = asyncio.run(resend(ctx, ResendCmd.model_validate({**env, **fields}), T0))
        assert applied.after is not None
        applied.after()
        return applied.result

    for fields, words in (
        ({"from_seq": 5, "to_seq": 4}, "after to_seq"),
        ({"from_seq": 1, "to_seq": 10_001}, "at most 10000"),
    ):
        with pytest.raises(CommandRejected, match=words) as exc:
            run(epoch=epoch, **fields)
        assert exc.value.code == "invalid"
    for fields in ({"from_seq": 1.0, "to_seq": 2}, {"from_seq": True, "to_seq": 2}, {"from_seq": 0, "to_seq": 2},
                   {"from_seq": 1, "to_seq": 2, "epoch": "ABC"}):  # fmt: skip
        with pytest.raises(ValidationError):
            ResendCmd.model_validate({**env, "epoch": epoch, **fields})
    link.resends_waiting = 49_999
    with pytest.raises(CommandRejected, match="still waiting"):
        run(epoch=epoch, from_seq=1, to_seq=2)
    assert link.sent == []
    link.resends_waiting = 0
    assert run(epoch=epoch, from_seq=1, to_seq=10_000) == {
        "epoch": epoch, "from_seq": 1, "to_seq": 10_000, "resent": [[1, 5]], "gone": [[6, 10_000]]}  # fmt: skip
    assert link.sent == [1, 2, 3, 4]  # 5 is not delivered yet: the publisher sends it anyway
