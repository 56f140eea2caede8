"""The readings' inbox (``gateway.runtime.inbox``): items from other threads reach the loop in one batch,
with one wake-up of the loop per batch, and nothing is lost or handed over twice."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from gateway.runtime.inbox import BatchInbox


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts the callbacks other threads hand to the loop (each one wakes it)."""

    handed = 0

    def call_soon_threadsafe(self, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        self.handed += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_items_from_threads_arrive_in_one_batch_with_one_wake_up() -> None:
    loop = CountingLoop()
    batches: list[list[int]] = []

    async def scenario() -> None:
        done = asyncio.Event()
        inbox: BatchInbox[int] = BatchInbox(loop, lambda: (batches.append(inbox.take()), done.set()), 0.2)

        def put(first: int) -> None:
            for i in range(first, first + 50):
                inbox.put(i)

        threads = [threading.Thread(target=put, args=(k * 50,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        await asyncio.wait_for(done.wait(), 5)

    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert len(batches) == 1 and sorted(batches[0]) == list(range(200)), "every item once, in one batch"
    assert loop.handed == 1, f"the loop was woken {loop.handed} times for one batch"


def test_take_empties_the_inbox_and_cancels_the_batch_timer() -> None:
    fired: list[list[str]] = []

    async def scenario() -> list[str]:
        inbox: BatchInbox[str] = BatchInbox(asyncio.get_running_loop(), lambda: fired.append(inbox.take()), 0.05)
        inbox.put("a")
        inbox.put("b")
        taken = inbox.take()
        await asyncio.sleep(0.2)  # long past the batch's delay: a timer left armed would have fired
        inbox.put("c")  # a new batch arms a new timer
        await asyncio.sleep(0.2)
        return taken

    taken = asyncio.run(scenario())
    assert taken == ["a", "b"]
    assert fired == [["c"]]


def test_an_item_after_the_loop_closed_is_one_error_line(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    inbox: BatchInbox[int] = BatchInbox(loop, lambda: None, 0.1)
    loop.close()
    worker = threading.Thread(target=inbox.put, args=(1,))
    with caplog.at_level(logging.ERROR, logger="pmg.inbox"):
        worker.start()
        worker.join()
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "after the gateway stopped" in caplog.records[0].getMessage()


def test_puts_racing_takes_hand_every_item_over_exactly_once() -> None:
    """A thread puts while the loop takes, again and again: no item lost, none handed over twice."""
    seen: list[int] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        inbox: BatchInbox[int] = BatchInbox(loop, lambda: seen.extend(inbox.take()), 0.001)
        finished = threading.Event()

        def put() -> None:
            for i in range(20_000):
                inbox.put(i)
            finished.set()

        worker = threading.Thread(target=put)
        worker.start()
        while not finished.is_set():
            seen.extend(inbox.take())
            await asyncio.sleep(0)
        worker.join()
        seen.extend(inbox.take())

    asyncio.run(scenario())
    assert sorted(seen) == list(range(20_000))


def test_after_close_an_item_is_refused_in_one_line_and_no_batch_fires(caplog: pytest.LogCaptureFixture) -> None:
    fired: list[list[int]] = []

    async def scenario() -> None:
        inbox: BatchInbox[int] = BatchInbox(asyncio.get_running_loop(), lambda: fired.append(inbox.take()), 0.01)
        inbox.close()
        with caplog.at_level(logging.ERROR, logger="pmg.inbox"):
            inbox.put(1)
        await asyncio.sleep(0.05)
        assert inbox.pending() == []

    asyncio.run(scenario())
    assert fired == []
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
