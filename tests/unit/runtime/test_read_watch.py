"""Read requests (gateway.store.read_requests) and their watcher (gateway.runtime.read_watch).

Real SQLite files and two connections, as the daemon and ``pmg meter read-now`` have; the watcher
rides on a real ``PaymentWatch`` with a short tick, and its bus is a ten-line fake ``submit`` whose
futures the test resolves (tests/integration/test_read_now.py runs a real daemon and meter).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.waiting import async_wait_for

from gateway.runtime.payment_watch import PaymentWatch
from gateway.runtime.read_watch import ReadWatch, Served
from gateway.store import read_requests
from gateway.store.db import Store, open_store

NOW = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)


def test_put_take_finish(tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    with store.tx() as conn:
        a = read_requests.put(conn, "m1", "cli:ann", NOW)
        b = read_requests.put(conn, "m2", "web:bo", NOW + timedelta(seconds=1))
    assert [r.id for r in read_requests.take(store.conn)] == [a, b]
    assert [r.id for r in read_requests.take(store.conn, exclude={a})] == [b]
    with store.tx() as conn:
        assert read_requests.finish(conn, a, "done", NOW, "charged", reading_id=7)
        assert not read_requests.finish(conn, a, "failed", NOW, "late")  # finished once only
    got = read_requests.get(store.conn, a)
    assert got is not None and (got.status, got.reading_id, got.result) == ("done", 7, "charged")
    assert read_requests.pending_count(store.conn) == 1
    with pytest.raises(ValueError), store.tx() as conn:
        read_requests.finish(conn, b, "pending", NOW, "x")  # type: ignore[arg-type]
    audit = store.all("SELECT actor, meter_id FROM events WHERE kind = 'read_requested' ORDER BY id")
    assert [tuple(r) for r in audit] == [("cli:ann", "m1"), ("web:bo", "m2")]
    store.close()


class FakeBuses:
    """The daemon's ``_submit_read``: futures the test resolves; ``m9`` is not polled."""

    def __init__(self) -> None:
        self.futures: dict[str, asyncio.Future[Served]] = {}

    def submit(self, meter_id: str) -> asyncio.Future[Served] | str:
        if meter_id == "m9":
            return "no meter 'm9' is polled by this gateway"
        fut: asyncio.Future[Served] = asyncio.get_running_loop().create_future()
        self.futures[meter_id] = fut
        return fut


def _status(store: Store, rid: int) -> str:
    req = read_requests.get(store.conn, rid)
    assert req is not None
    return req.status


def test_the_watcher_serves_requests_from_another_connection(tmp_path: Path) -> None:
    daemon = open_store(tmp_path / "pmg.db")
    other = open_store(tmp_path / "pmg.db")
    buses = FakeBuses()
    stopping = False

    async def scenario() -> None:
        watch = ReadWatch(daemon, buses.submit, lambda: NOW, lambda: stopping, read_timeout_s=0.5)
        payments = PaymentWatch(daemon, lambda *_: None, lambda: None, poll_s=0.01, on_commit=watch.drain)
        task = asyncio.create_task(payments.run())
        try:
            with other.tx() as conn:
                ok = read_requests.put(conn, "m1", "cli:ann", NOW)
                unknown = read_requests.put(conn, "m9", "cli:ann", NOW)
                stale = read_requests.put(conn, "m2", "cli:ann", NOW - timedelta(seconds=61))
                slow = read_requests.put(conn, "m3", "cli:ann", NOW)
            await async_wait_for(lambda: "m1" in buses.futures, what="m1 submitted")
            await async_wait_for(lambda: _status(daemon, unknown) == "failed", what="unknown meter failed")
            assert _status(daemon, stale) == "expired" and "m2" not in buses.futures
            assert _status(daemon, ok) == "pending"  # being served: not taken twice
            buses.futures["m1"].set_result(Served(True, 42, "charged"))
            await async_wait_for(lambda: _status(daemon, ok) == "done", what="m1 done")
            req = read_requests.get(other.conn, ok)
            assert req is not None and (req.reading_id, req.result) == (42, "charged")
            await async_wait_for(lambda: _status(daemon, slow) == "failed", timeout=5, what="m3 timed out")
            assert buses.futures["m3"].cancelled()  # the bus skips it when its turn comes
            assert len(buses.futures) == 2  # nothing was submitted twice
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await watch.stop()

    asyncio.run(scenario())
    daemon.close()
    other.close()


def test_a_request_being_served_at_stop_stays_pending(tmp_path: Path) -> None:
    store = open_store(tmp_path / "pmg.db")
    buses = FakeBuses()

    async def scenario() -> None:
        watch = ReadWatch(store, buses.submit, lambda: NOW, lambda: True)
        with store.tx() as conn:
            rid = read_requests.put(conn, "m1", "cli:ann", NOW)
        assert watch.drain() == 1 and watch.serving == 1
        buses.futures["m1"].cancel()  # the bus stopped with the read still queued
        await async_wait_for(lambda: watch.serving == 0, what="served")
        assert _status(store, rid) == "pending"  # the next start serves it (or expires it)
        await watch.stop()

    asyncio.run(scenario())
    store.close()
