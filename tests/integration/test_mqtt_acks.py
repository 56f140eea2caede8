"""Delivery at a trickle: acks marked in batches without an fsync, and nothing lost for it.

The link queues PUBACKs off the loop, marks them delivered in batches (``ACK_FLUSH_S``/``ACK_BATCH``)
with a non-durable commit, and reads the outbox only when something may be waiting.  These tests pin
down what that must not change: every ack is marked on stop; a crash between the PUBACK and the mark
sends the message again with the same seq (a duplicate the head office drops), never a gap; a writer
that forgets ``notify()`` is still picked up; the other commits stay durable.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.broker import Mosquitto
from support.waiting import async_wait_for, wait_for

from gateway.config import MqttConfig
from gateway.core.timeutil import system_clock
from gateway.store import outbox
from gateway.store.db import Store, open_store
from gateway.sync import mqtt
from gateway.sync.mqtt import MqttLink
from hq.consumer import HqConsumer, Received

T0 = datetime(2026, 3, 1, tzinfo=UTC)


class OutboxReads:
    """How many times the outbox was read (``outbox.pending`` calls) during a test."""

    count = 0


@pytest.fixture
def outbox_reads(monkeypatch: pytest.MonkeyPatch) -> OutboxReads:
    reads = OutboxReads()
    real_pending = outbox.pending

    def counting_pending(*args: object, **kwargs: object) -> list[outbox.OutboxMessage]:
        reads.count += 1
        return real_pending(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(outbox, "pending", counting_pending)
    return reads


def plain(port: int, client_id: str = "") -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1", port=port, tls=False, allow_plaintext=True, keepalive_s=5, client_id=client_id
    )


def put(store: Store, n: int) -> int:
    with store.tx() as conn:
        return outbox.put(conn, "events", {"schema": "pmg.event/1", "n": n}, T0)


@pytest.fixture
def hq(mosquitto: Mosquitto) -> Iterator[tuple[HqConsumer, list[Received]]]:
    received: list[Received] = []
    consumer = HqConsumer(
        "127.0.0.1", mosquitto.port, tls=None, client_id="hq-acks", on_received=received.append
    )
    consumer.tracker.start_at("gw-acks", 1)
    consumer.start()
    try:
        assert consumer.subscribed.wait(10)
        yield consumer, received
    finally:
        consumer.stop()


def _synchronous(store: Store) -> int:
    return int(store.scalar("PRAGMA synchronous"))


def test_a_non_durable_transaction_commits_without_fsync_and_restores_full(tmp_path: Path) -> None:
    store = open_store(tmp_path / "gw.db")
    try:
        levels: list[int] = []
        statements: list[str] = []
        store.conn.set_trace_callback(statements.append)
        seq = put(store, 1)
        outbox.mark_delivered(store, [seq], T0)
        levels.append(_synchronous(store))
        with pytest.raises(RuntimeError), store.tx(durable=False):
            raise RuntimeError("the body failed")
        levels.append(_synchronous(store))
        with store.tx(), store.tx(durable=False) as conn:  # nested: joins the durable outer one
            conn.execute("UPDATE outbox SET delivered_at = NULL")
            levels.append(_synchronous(store))
        store.conn.set_trace_callback(None)
        assert levels == [2, 2, 2], "every commit but the marks stays synchronous=FULL"
        # the put committed under FULL, the mark under NORMAL, then FULL again
        pragmas_and_commits = [s for s in statements if s.startswith(("COMMIT", "PRAGMA synchronous ="))]
        assert pragmas_and_commits[:4] == [
            "COMMIT",
            "PRAGMA synchronous = NORMAL",
            "COMMIT",
            "PRAGMA synchronous = FULL",
        ]
        assert outbox.backlog(store).messages == 1, "the rolled-back and the nested changes behaved"
    finally:
        store.close()


def test_a_trickle_is_read_once_per_message_and_marked_in_batches(
    mosquitto: Mosquitto,
    hq: tuple[HqConsumer, list[Received]],
    tmp_path: Path,
    outbox_reads: OutboxReads,
) -> None:
    consumer, received = hq
    store = open_store(tmp_path / "gw.db")
    link = MqttLink(plain(mosquitto.port), "gw-acks", store, system_clock)
    n = 30

    async def scenario() -> tuple[float, int, int]:
        task = asyncio.create_task(link.run())
        try:
            await async_wait_for(lambda: link.stats.connected, what="connected")
            await async_wait_for(lambda: outbox_reads.count >= 1, what="the first read after connecting")
            start = time.monotonic()
            for i in range(n):
                put(store, i)
                link.notify()
                # one message at a time, as at a trickle: each its own read and publish
                await async_wait_for(
                    lambda seq=i + 1: consumer.tracker.highest("gw-acks") == seq,
                    interval=0.002,
                    what="through",
                )
            await async_wait_for(lambda: link.stats.acknowledged == n, what="all marked delivered")
            return time.monotonic() - start, outbox_reads.count, link.stats.ack_flushes  # before stop's own
        finally:
            await link.stop(2.0)
            await asyncio.gather(task, return_exceptions=True)

    try:
        elapsed, trickle_reads, flushes = asyncio.run(scenario())
        assert outbox.backlog(store).messages == 0
        # one read on connecting, then one per notify plus the POLL_S fallback; before, every
        # PUBACK woke the pump into a read of its own as well (2 per message)
        assert trickle_reads <= 1 + n + elapsed / mqtt.POLL_S + 1, (trickle_reads, elapsed)
        # marked every ACK_FLUSH_S, not one transaction per message
        assert flushes <= elapsed / mqtt.ACK_FLUSH_S + 1, (flushes, elapsed)
        assert flushes < n
        wait_for(lambda: consumer.tracker.highest("gw-acks") >= n, what="the head office has them all")
        assert consumer.tracker.gaps("gw-acks") == []
        assert sorted(r.seq for r in received if r.topic == "events") == list(range(1, n + 1))
    finally:
        store.close()


def test_a_fast_trickle_goes_out_in_bursts_of_what_gathered(
    mosquitto: Mosquitto,
    hq: tuple[HqConsumer, list[Received]],
    tmp_path: Path,
    outbox_reads: OutboxReads,
) -> None:
    consumer, received = hq
    store = open_store(tmp_path / "gw.db")
    link = MqttLink(plain(mosquitto.port), "gw-linger", store, system_clock)
    n = 40

    async def scenario() -> tuple[float, int]:
        task = asyncio.create_task(link.run())
        try:
            await async_wait_for(lambda: link.stats.connected, what="connected")
            await async_wait_for(lambda: outbox_reads.count >= 1, what="the first read after connecting")
            before = outbox_reads.count
            start = time.monotonic()
            for i in range(n):  # a producer committing a message every 10 ms, as 8 busy buses do
                put(store, i)
                link.notify()
                await asyncio.sleep(0.01)
            await async_wait_for(lambda: consumer.tracker.highest("gw-linger") == n, what="all through")
            return time.monotonic() - start, outbox_reads.count - before
        finally:
            await link.stop(2.0)
            await asyncio.gather(task, return_exceptions=True)

    try:
        elapsed, trickle_reads = asyncio.run(scenario())
        # one read per LINGER_S (plus the last), not one per message
        assert trickle_reads <= elapsed / mqtt.LINGER_S + 2, (trickle_reads, elapsed)
        assert trickle_reads < n / 4
        assert consumer.tracker.gaps("gw-linger") == []
        assert sorted(r.seq for r in received if r.topic == "events") == list(range(1, n + 1))
    finally:
        store.close()


def test_acks_waiting_to_be_marked_are_marked_on_stop(
    mosquitto: Mosquitto,
    hq: tuple[HqConsumer, list[Received]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer, _ = hq
    monkeypatch.setattr(mqtt, "ACK_FLUSH_S", 3600.0)  # only the first ack would be marked on time
    store = open_store(tmp_path / "gw.db")
    link = MqttLink(plain(mosquitto.port), "gw-acks", store, system_clock)
    n = 20

    async def scenario() -> None:
        task = asyncio.create_task(link.run())
        try:
            await async_wait_for(lambda: link.stats.connected, what="connected")
            for i in range(n):
                put(store, i)
                link.notify()
                await async_wait_for(
                    lambda seq=i + 1: link.stats.published == seq, interval=0.002, what="published"
                )
            await async_wait_for(
                lambda: consumer.tracker.highest("gw-acks") >= n, what="the broker has delivered them all"
            )
            assert outbox.backlog(store).messages >= n - 1, "acks are held back for their batch"
        finally:
            await link.stop(2.0)
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
        assert outbox.backlog(store).messages == 0, "stop marks every acknowledged message"
        assert link.stats.acknowledged == n
    finally:
        store.close()


def test_a_message_committed_without_notify_is_still_sent(
    mosquitto: Mosquitto, hq: tuple[HqConsumer, list[Received]], tmp_path: Path
) -> None:
    consumer, _ = hq
    store = open_store(tmp_path / "gw.db")
    link = MqttLink(plain(mosquitto.port), "gw-acks", store, system_clock)

    async def scenario() -> None:
        task = asyncio.create_task(link.run())
        try:
            await async_wait_for(lambda: link.stats.connected, what="connected")
            put(store, 0)
            link.notify()
            await async_wait_for(lambda: link.stats.acknowledged == 1, what="first marked")
            put(store, 1)  # a writer that does not notify (a scheduled job, say)
            await async_wait_for(
                lambda: link.stats.acknowledged == 2, timeout=5, what="picked up by the poll"
            )
        finally:
            await link.stop(2.0)
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
        wait_for(lambda: consumer.tracker.highest("gw-acks") >= 2, what="the head office has both")
    finally:
        store.close()


# A gateway that publishes, sees every PUBACK, but marks none of them (the batch would close in an
# hour): it prints ACKED and waits to be killed.
_CHILD = """
import asyncio, sys, time
from datetime import UTC, datetime
from gateway.config import MqttConfig
from gateway.store.db import open_store
from gateway.sync import mqtt
from gateway.store import outbox
from gateway.core.timeutil import system_clock

mqtt.ACK_FLUSH_S = 3600.0
db, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = open_store(db)
cfg = MqttConfig(host="127.0.0.1", port=port, tls=False, allow_plaintext=True, client_id="gw-kill")
link = mqtt.MqttLink(cfg, "gw-acks", store, system_clock)
# The first acks are otherwise marked at once (no mark yet); here none may be until the kill.
link._last_flush = time.monotonic()

async def main():
    task = asyncio.create_task(link.run())
    while not link.stats.connected:
        await asyncio.sleep(0.01)
    for i in range(n):
        with store.tx() as conn:
            outbox.put(conn, "events", {"schema": "pmg.event/1", "n": i}, datetime.now(UTC))
        link.notify()
        await asyncio.sleep(0.005)
    while link.stats.published < n or link._inflight or link._ack_queue:
        await asyncio.sleep(0.01)
        link._take_acks()
    print("ACKED", len(link._acked), flush=True)
    await task

asyncio.run(main())
"""


def _undelivered(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0])
    finally:
        conn.close()


def test_kill_9_after_puback_before_the_mark_resends_with_the_same_seq(
    mosquitto: Mosquitto, hq: tuple[HqConsumer, list[Received]], tmp_path: Path
) -> None:
    consumer, received = hq
    db = tmp_path / "gw.db"
    n = 25
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db), str(mosquitto.port), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("ACKED"), line + child.stdout.read()
        unmarked = int(line.split()[1])
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert unmarked >= n - 1, "the broker acknowledged them; the child had not marked them"
    assert _undelivered(db) >= n - 1, "the kill lost the unmarked acks"
    wait_for(lambda: consumer.tracker.highest("gw-acks") >= n, what="the head office has the first run's")

    store = open_store(db)
    link = MqttLink(plain(mosquitto.port, "gw-kill"), "gw-acks", store, system_clock)

    async def restart() -> None:
        task = asyncio.create_task(link.run())
        try:
            await async_wait_for(lambda: outbox.backlog(store).messages == 0, what="re-sent and marked")
        finally:
            await link.stop(2.0)
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(restart())
    finally:
        store.close()
    wait_for(
        lambda: consumer.tracker.duplicates.get("gw-acks", 0) >= unmarked,
        what="the head office saw the re-sent ones",
    )
    assert consumer.tracker.gaps("gw-acks") == []
    seqs = [r.seq for r in received if r.topic == "events"]
    assert sorted(set(seqs)) == list(range(1, n + 1))
    duplicated = sorted(r.seq for r in received if r.topic == "events" and r.duplicate)
    assert len(duplicated) >= unmarked and set(duplicated) <= set(range(1, n + 1))
