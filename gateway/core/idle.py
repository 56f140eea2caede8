"""An idle sleep that the event loop's own callbacks can cut short.

The bus workers and the MQTT pump spend most of their time waiting: for the next poll, for work to be
submitted, for PUBACKs.  ``asyncio.wait_for(event.wait())`` would do, but it makes a task and several
loop iterations per wait — at capacity one per poll per bus and one per message.  A bare future with
a timer costs one callback.
"""

from __future__ import annotations

import asyncio


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Idle:
    """``await idle.sleep(s)`` returns after ``s`` seconds or at the next ``idle.wake()``.

    Loop thread only.  A wake while nobody sleeps is not kept: callers look at what is due before they
    sleep, so a missed wake costs nothing."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter)
        self._waiters.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    def wake(self) -> None:
        for waiter in self._waiters:
            _resolve(waiter)
