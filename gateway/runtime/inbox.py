"""The readings the buses deliver, waiting to be charged together on the event loop.

Buses that poll on their link threads (``gateway.runtime.bus``) deliver readings from those threads;
the event loop charges them in one transaction a short while after the first of a batch arrived
(``gateway.runtime.daemon``, ``READING_BATCH_S``).  The loop is woken once per batch, not once per
reading: at 2,000 meters, with the polls on the link threads, that took a quarter off the loop
thread's CPU and almost half its wake-ups (docs/benchmarks.md, "Efficiency round, fifth part").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("pmg.inbox")

_Item = TypeVar("_Item")


class BatchInbox(Generic[_Item]):
    """Items put from any thread, handed to ``on_batch`` on the loop at most ``delay_s`` after the
    first item of a batch arrived.  ``take`` (loop thread) empties it at once, for a caller that
    must charge now (a read request, a reload, the stop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_batch: Callable[[], Any], delay_s: float) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()  # made on the loop's thread (the daemon's start)
        self._on_batch = on_batch
        self._delay_s = delay_s
        self._lock = threading.Lock()
        self._items: list[_Item] = []
        self._armed = False  # a batch is waiting: its timer is set or being set
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def put(self, item: _Item) -> None:
        """Queue ``item``; the first of a batch arms the timer (a thread other than the loop's asks the
        loop to, the only time it wakes the loop)."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._items.append(item)
                if self._armed:
                    return
                self._armed = True
        if not closed:
            try:
                if threading.get_ident() == self._loop_thread:
                    self._arm()
                else:
                    self._loop.call_soon_threadsafe(self._arm)
                return
            except RuntimeError:  # the loop is closed
                pass
        log.error("a reading arrived after the gateway stopped; it is not charged (the next poll charges the energy)")

    def close(self) -> None:
        """After the last charge (the gateway's stop): later items are refused with one error line,
        not queued where nothing would charge them; the batch timer is cancelled."""
        with self._lock:
            self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def take(self) -> list[_Item]:
        """Everything queued, in arrival order; the batch's timer is cancelled (loop thread)."""
        with self._lock:
            items, self._items = self._items, []
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return items

    def pending(self) -> list[_Item]:
        """A copy of what is queued, left in place (a test's view of the batch to come)."""
        with self._lock:
            return list(self._items)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(self._delay_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._on_batch()
