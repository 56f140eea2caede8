"""One worker per physical bus: the only owner of that line.

An RS-485 bus is half-duplex, so exactly one conversation is in flight.  Relay commands outrank
on-demand reads, which outrank routine polls; polls rotate by due time so a flaky meter cannot starve
the rest, and a meter that keeps failing backs off (its timeout is the most it can cost a cycle).
The worker's heartbeat advances every iteration (a hung loop stops it); ``last_answer`` advances only
when a meter answered.  Loop ticks prove nothing about the line — a bus whose link is dead ticks on —
so a bus is *unhealthy* when none of its meters has answered for ``unhealthy_after_s``, and the
watchdog counts answers, not ticks (docs/operations.md, "Links that drop").
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from drivers.base import (
    BILLING_POINTS,
    DriverError,
    HeldLink,
    LinkError,
    Meter,
    Point,
    Quality,
    Reading,
    RelayState,
    ThreadPolledMeter,
)
from drivers.factory import Link
from gateway.core.idle import Idle
from gateway.core.logfields import kv
from gateway.core.timeutil import Clock

log = logging.getLogger("pmg.bus")

PRIORITY_RELAY = 0
PRIORITY_READ_NOW = 1

POLL_POINTS = frozenset({*BILLING_POINTS, Point.ENERGY_IMPORT_TARIFFS})
MAX_BACKOFF_FACTOR = 8
UNHEALTHY_AFTER_S = 300.0
# Qualities that prove the meter heard us and answered (a refusal or an odd value is still an answer).
ANSWERED = frozenset({Quality.OK, Quality.REFUSED, Quality.IMPLAUSIBLE})


@dataclass
class PolledMeter:
    meter_id: str
    meter: Meter
    interval_s: float
    next_due: float = 0.0
    failures: int = 0


@dataclass
class BusStats:
    polls_ok: int = 0
    polls_failed: int = 0
    failed_by_kind: dict[str, int] = field(default_factory=dict)
    relay_ok: int = 0
    relay_failed: int = 0
    last_latency_s: float = 0.0
    cycles: int = 0


ReadingSink = Callable[[str, Reading, float], None]
"""(meter_id, reading, latency seconds) -> None.  Called from the bus's link thread when the bus polls
there (see ``BusWorker``), so it must be thread-safe and must not block: queue the reading and let the
event loop charge it (``gateway.runtime.daemon``)."""

ReadObserver = Callable[[str, str, float], None]
"""(bus_id, quality, latency seconds) -> None: metrics; thread-safe like the sink; must not block or raise."""


class BusWorker:
    """Runs one bus: its jobs (relay commands, reads on request) from the event loop, its routine polls
    either from the event loop or, when the link and every meter on it can (``HeldLink``,
    ``ThreadPolledMeter``: DL/T 645), on the link's own thread.  There the polls run back to back
    while the bus is held (``_poll_run``), the thread sleeping until the next is due, and the event
    loop is not woken by a poll at all: at 2,000 meters that took a quarter off the loop thread's
    CPU (docs/benchmarks.md, "Efficiency round, fifth part").  Submitting a
    job or stopping the bus interrupts the run after the poll in flight, so a relay command waits
    for at most one poll, as it does between polls from the loop."""

    def __init__(
        self,
        bus_id: str,
        link: Link,
        meters: list[PolledMeter],
        on_reading: ReadingSink,
        *,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
        observe: ReadObserver | None = None,
        unhealthy_after_s: float = UNHEALTHY_AFTER_S,
    ) -> None:
        self.bus_id = bus_id
        self.observe = observe
        self.link = link
        self.meters = {m.meter_id: m for m in meters}
        self.on_reading = on_reading
        self.clock = clock
        self.monotonic = monotonic
        self.stats = BusStats()
        self.heartbeat = monotonic()
        self.started_at = self.heartbeat
        self.last_answer: float | None = None  # monotonic time a meter last answered (None: not yet)
        self.unhealthy_after_s = unhealthy_after_s
        self.running = False  # the loop runs (the link opened); False while the first open is retried
        self.busy_since: float | None = None
        self._jobs: list[tuple[int, int, Callable[[], Awaitable[Any]], asyncio.Future[Any]]] = []
        self._counter = itertools.count()
        # (next_due, configured position, meter id): the next poll is the heap's top, O(log n) per poll
        # instead of scanning every meter on the bus for the earliest due time.
        self._due: list[tuple[float, int, str]] = []
        self._idle = Idle()  # the loop's sleep between polls, cut short when work is submitted
        self._stopping = False
        self._opened = False
        self._thread_polls = (
            isinstance(link, HeldLink)
            and bool(meters)
            and all(isinstance(m.meter, ThreadPolledMeter) for m in meters)
        )
        self._interrupt = threading.Event()  # ends a poll run on the link thread (work submitted, stop)
        self._abandoned = threading.Event()  # the run's caller was cancelled: deliver nothing more

    # -- submitting work -------------------------------------------------------------------------
    def submit(self, priority: int, work: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        """Queue ``work`` ahead of routine polls; the future carries its result or exception.

        The future is cancelled if the bus stops before the work runs.
        """
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._stopping:  # nobody will run it: say so now rather than leave the caller waiting
            fut.cancel()
            return fut
        heapq.heappush(self._jobs, (priority, next(self._counter), work, fut))
        self._interrupt.set()
        self._idle.wake()
        return fut

    def meter(self, meter_id: str) -> Meter:
        return self.meters[meter_id].meter

    def read_now(
        self,
        meter_id: str,
        points: frozenset[Point] = POLL_POINTS,
        then: Callable[[Reading], Any] | None = None,
    ) -> asyncio.Future[Any]:
        """Read one meter ahead of routine polls (behind relay commands).  The reading goes to
        ``on_reading`` like a poll's; ``then`` (when given) runs on it at once, before the bus moves
        on, and the future carries what it returns (the daemon charges the reading there, so a
        read request learns its reading's id)."""

        async def work() -> Any:
            reading = await self._read(self.meters[meter_id], points)
            return reading if then is None else then(reading)

        return self.submit(PRIORITY_READ_NOW, work)

    # -- the loop ----------------------------------------------------------------------------------
    def silent_for(self, now_mono: float) -> float:
        """Seconds since a meter on this bus last answered (since the worker started if none has)."""
        since = self.started_at if self.last_answer is None else self.last_answer
        return max(0.0, now_mono - since)

    def healthy(self, now_mono: float) -> bool:
        """False when the bus has meters and none of them answered for ``unhealthy_after_s``."""
        return not self.meters or self.silent_for(now_mono) <= self.unhealthy_after_s

    async def run(self) -> None:
        await self._open()
        self.running = True
        try:
            await self._loop()
        finally:
            self.running = False
        self.abandon_queued()
        await self._close()

    async def _loop(self) -> None:
        now = self.monotonic()
        for i, pm in enumerate(self.meters.values()):
            pm.next_due = now + 0.001 * i  # first cycle straight away, in configured order
        self._due = [(pm.next_due, i, pm.meter_id) for i, pm in enumerate(self.meters.values())]
        heapq.heapify(self._due)
        while not self._stopping:
            self.heartbeat = self.monotonic()
            if self._jobs:
                _, _, work, fut = heapq.heappop(self._jobs)
                if fut.cancelled():
                    continue
                self.busy_since = self.monotonic()
                try:
                    result = await work()
                    if isinstance(result, RelayState):  # a relay read back (reads count in _read; a
                        self.last_answer = self.monotonic()  # broadcast proves nothing: no one answers it)
                    fut.set_result(result)
                except Exception as exc:  # delivered to whoever submitted it
                    if not fut.cancelled():
                        fut.set_exception(exc)
                finally:
                    self.busy_since = None
                continue
            if self._thread_polls and not self.link.down and await self._polls_on_link_thread():
                continue
            nxt = self.meters[self._due[0][2]] if self._due else None
            if nxt is not None and nxt.next_due <= self.monotonic():
                _, position, _ = heapq.heappop(self._due)
                reading = await self._read(nxt, POLL_POINTS)
                self._schedule_next(nxt, reading)
                heapq.heappush(self._due, (nxt.next_due, position, nxt.meter_id))
                continue
            delay = 1.0 if nxt is None else max(0.0, min(1.0, nxt.next_due - self.monotonic()))
            await self._idle.sleep(delay)  # until the next poll is due or work is submitted

    def abandon_queued(self) -> None:
        """Work still queued when the bus stops never ran: cancel its futures so no submitter waits
        forever (a relay command stays durable in the database and is resumed after restart)."""
        while self._jobs:
            _, _, _, fut = heapq.heappop(self._jobs)
            fut.cancel()

    async def _open(self) -> None:
        try:
            await self.link.open()
            self._opened = True
        except (OSError, DriverError) as exc:
            log.error("cannot open link: %s", exc, extra=kv(bus=self.bus_id))
            raise

    async def _close(self) -> None:
        for pm in self.meters.values():
            try:
                await pm.meter.close()
            except Exception:  # closing is best effort
                log.debug("meter close failed", exc_info=True, extra=kv(bus=self.bus_id, meter=pm.meter_id))
        if self._opened:
            await self.link.close()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def reopen_link(self) -> None:
        """SIGHUP: the link closes and reopens before its next exchange, whatever its backoff says; a
        run of polls on the link thread ends after the poll in flight so that the reopen happens now
        (a device server that still accepts the connection but answers nothing never fails the port)."""
        self.link.request_reopen()
        self._interrupt.set()

    def stop(self) -> None:
        """Finish the frame in flight, then leave the loop."""
        self._stopping = True
        self._interrupt.set()
        self._idle.wake()


    def _schedule_next(self, pm: PolledMeter, reading: Reading) -> None:
        if reading.quality is Quality.OK:
            pm.failures = 0
            pm.next_due += pm.interval_s
            if pm.next_due < self.monotonic():  # we fell behind: do not burst to catch up
                pm.next_due = self.monotonic() + pm.interval_s
            self.stats.cycles += 1
        else:
            pm.failures += 1
            factor = min(2 ** (pm.failures - 1), MAX_BACKOFF_FACTOR)
            pm.next_due = self.monotonic() + pm.interval_s * factor

    async def _read(self, pm: PolledMeter, points: frozenset[Point]) -> Reading:
        started = self._begin_read()
        try:
            reading = await pm.meter.read(points)
        except DriverError as exc:  # drivers should return a quality, but never let one kill the bus
            reading = Reading(pm.meter.address, self.clock(), Quality.BAD_FRAME, error=str(exc))
        finally:
            self.busy_since = None
        return self._finish_read(pm, reading, started)

    def _begin_read(self) -> float:
        started = self.monotonic()
        self.busy_since = started
        return started

    def _finish_read(self, pm: PolledMeter, reading: Reading, started: float) -> Reading:
        """Count a read, time-stamp it, hand it to the metrics and the sink (either thread)."""
        latency = self.monotonic() - started
        reading = dataclasses.replace(reading, taken_at=self.clock())
        self.stats.last_latency_s = latency
        if reading.quality in ANSWERED:
            self.last_answer = self.monotonic()
        if reading.quality is Quality.OK:
            self.stats.polls_ok += 1
        else:
            self.stats.polls_failed += 1
            kind = reading.quality.value
            self.stats.failed_by_kind[kind] = self.stats.failed_by_kind.get(kind, 0) + 1
        if self.observe is not None:
            try:
                self.observe(self.bus_id, reading.quality.value, latency)
            except Exception:  # metrics must never stop a bus
                log.debug("metrics observer failed", exc_info=True, extra=kv(bus=self.bus_id))
        try:
            self.on_reading(pm.meter_id, reading, latency)
        except Exception:
            log.exception("reading could not be recorded", extra=kv(bus=self.bus_id, meter=pm.meter_id))
        return reading

    # -- routine polls on the link thread ----------------------------------------------------------
    async def _polls_on_link_thread(self) -> bool:
        """Hold the bus for routine polls on the link thread until work is submitted or the bus
        stops; False when the link would not be held (its port is down): the caller polls from the
        loop, where a down link fails each due poll at once, as it always has."""
        if self._jobs or self._stopping:
            return True
        self._interrupt.clear()  # the loop thread runs submit(): nothing can slip in between
        self._abandoned.clear()
        try:
            await cast(HeldLink, self.link).hold(self._poll_run, on_cancel=self._abandon_run)
        except LinkError:
            return False
        return True

    def _abandon_run(self) -> None:
        """The bus task was cancelled (a stop that timed out): the poll in flight is not delivered, as
        a poll cancelled on the loop never was; set before the link fails the run's later exchanges."""
        self._abandoned.set()
        self._interrupt.set()

    def _poll_run(self, exchange: Callable[[Any], Any]) -> None:
        """On the link thread: the due polls in turn, sleeping until the next is due, until
        interrupted.  The due heap, the meters' schedules and the statistics are this thread's while
        the run lasts (the event loop only waits for it).  A port failure ends the run after the poll
        it hit, which fails like any poll on a dead link; the link is dropped and reopened as usual."""
        link_failed = False

        def watched(frames: Any) -> Any:
            nonlocal link_failed
            try:
                return exchange(frames)
            except LinkError:
                link_failed = True
                raise

        interrupt = self._interrupt
        while not interrupt.is_set() and not link_failed:
            now = self.monotonic()
            self.heartbeat = now
            if not self._due:
                interrupt.wait(1.0)
                continue
            pm = self.meters[self._due[0][2]]
            if pm.next_due > now:
                interrupt.wait(min(1.0, pm.next_due - now))
                continue
            _, position, _ = heapq.heappop(self._due)
            started = self._begin_read()
            try:
                reading = cast(ThreadPolledMeter, pm.meter).poll_blocking(watched, POLL_POINTS)
            except DriverError as exc:  # as in _read: a driver's slip never kills the bus
                reading = Reading(pm.meter.address, self.clock(), Quality.BAD_FRAME, error=str(exc))
            finally:
                self.busy_since = None
            if self._abandoned.is_set():  # the gateway gave up waiting: this poll never happened
                heapq.heappush(self._due, (pm.next_due, position, pm.meter_id))
                return
            self._finish_read(pm, reading, started)
            self._schedule_next(pm, reading)
            heapq.heappush(self._due, (pm.next_due, position, pm.meter_id))
