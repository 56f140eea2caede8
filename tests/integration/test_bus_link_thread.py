"""Routine polls on the link's thread (``BusWorker`` with ``Dlt645Link.hold``), on real pseudo-terminals
and TCP sockets (docs/benchmarks.md, "Efficiency round, fifth part"; docs/operations.md, "Links that
drop").

Checked, each against what the loop-driven poll did before:
- a poll read on the link thread is the reading ``read`` gives, and it reaches the sink from that
  thread; the event loop is not woken by polls (fewer loop iterations than polls);
- a job submitted while the thread waits for the next due poll runs at once, not after that wait;
- stopping the bus ends the run after the poll in flight, with no failed reading and nothing doubled;
- a TCP serial server that goes away mid-run fails the poll that hit it, once, from the thread; the
  link reopens and polls resume on the thread.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from support.dlt645_fixtures import ManualClock
from support.waiting import async_wait_for

from drivers.base import Quality, Reading, RelayState
from drivers.dlt645.link import Dlt645Link
from drivers.dlt645.meter import Dlt645Meter
from gateway.core.timeutil import system_clock
from gateway.runtime.bus import POLL_POINTS, PRIORITY_RELAY, BusWorker, PolledMeter
from simulators.dlt645 import SimulatedDlt645Bus, make_models


@dataclass
class Sink:
    """Readings as the bus delivers them, with the thread that delivered each."""

    loop: asyncio.AbstractEventLoop
    want: int = 0
    got: list[tuple[str, Reading, int]] = field(default_factory=list)
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, meter_id: str, reading: Reading, _latency: float) -> None:
        self.got.append((meter_id, reading, threading.get_ident()))
        if self.want and len(self.got) == self.want:
            self.loop.call_soon_threadsafe(self.enough.set)  # the test's only wake-up of the loop


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its iterations: each one is a wake-up of the loop thread."""

    iterations = 0

    def _run_once(self) -> None:
        self.iterations += 1
        super()._run_once()  # type: ignore[misc]


@pytest.fixture
def sims() -> Iterator[list[SimulatedDlt645Bus]]:
    made: list[SimulatedDlt645Bus] = []
    yield made
    for sim in made:
        sim.stop()


def _bus(
    sims: list[SimulatedDlt645Bus], n: int, *, tcp_port: int | None = None
) -> tuple[SimulatedDlt645Bus, str, list[str]]:
    models = make_models(n, clock=ManualClock())
    sim = SimulatedDlt645Bus(models, response_delay_s=0.0, emulate_timing=False)
    sims.append(sim)
    url = sim.start_pty() if tcp_port is None else f"socket://127.0.0.1:{sim.start_tcp(port=tcp_port)}"
    return sim, url, [m.address for m in models]


def _worker(url: str, addresses: list[str], sink: Sink, interval_s: float) -> BusWorker:
    link = Dlt645Link(url, baud=9600, timeout_s=1.0, retries=1, inter_frame_gap_s=0.0)
    meters = [PolledMeter(f"m{i}", Dlt645Meter(link, a), interval_s) for i, a in enumerate(addresses)]
    return BusWorker("b1", link, meters, sink, clock=system_clock)


def _same(a: Reading, b: Reading) -> bool:
    return replace(a, taken_at=b.taken_at) == b


def test_polls_run_on_the_link_thread_without_waking_the_loop(sims: list[SimulatedDlt645Bus]) -> None:
    _sim, url, addresses = _bus(sims, 4)
    loop = CountingLoop()

    async def scenario() -> tuple[int, int, Sink, Reading, Reading]:
        sink = Sink(asyncio.get_running_loop(), want=40)
        worker = _worker(url, addresses, sink, interval_s=0.05)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(sink.enough.wait(), 20)
        start, polls_before = loop.iterations, len(sink.got)
        sink.want, sink.enough = polls_before + 40, asyncio.Event()
        await asyncio.wait_for(sink.enough.wait(), 20)
        iterations = loop.iterations - start
        polls = len(sink.got) - polls_before
        # the same meter read from the loop (a job) and on the thread must agree
        meter = worker.meter("m0")
        from_loop = await worker.submit(PRIORITY_RELAY, lambda: meter.read(POLL_POINTS))
        last_polled = [r for mid, r, _ in sink.got if mid == "m0"][-1]
        worker.stop()
        await asyncio.wait_for(task, 10)
        return iterations, polls, sink, from_loop, last_polled

    try:
        iterations, polls, sink, from_loop, polled = loop.run_until_complete(scenario())
    finally:
        loop.close()
    loop_thread = threading.main_thread().ident
    assert all(r.quality is Quality.OK for _, r, _ in sink.got)
    assert {t for _, _, t in sink.got} and loop_thread not in {t for _, _, t in sink.got}, "polls ran on the loop"
    # A poll driven from the loop costs it at least two iterations (the link thread's answer, the
    # timer until the next poll); polls on the link thread cost it none.
    assert iterations < polls / 4, f"{iterations} loop iterations for {polls} polls"
    assert from_loop.quality is Quality.OK and _same(polled, from_loop), "the thread's poll reads what read() reads"


def test_a_job_submitted_while_the_thread_waits_runs_at_once(sims: list[SimulatedDlt645Bus]) -> None:
    _sim, url, addresses = _bus(sims, 2)

    async def scenario() -> list[float]:
        sink = Sink(asyncio.get_running_loop(), want=2)
        worker = _worker(url, addresses, sink, interval_s=60.0)  # after the first cycle the thread waits
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(sink.enough.wait(), 20)
        waits = []
        meter = worker.meter("m1")
        for i in range(8):
            await asyncio.sleep(0.05 + 0.11 * i)  # land at different points of the thread's 1 s waits
            started = time.monotonic()
            state = await asyncio.wait_for(worker.submit(PRIORITY_RELAY, meter.read_relay), 5)
            waits.append(time.monotonic() - started)
            assert state is RelayState.CLOSED
        worker.stop()
        await asyncio.wait_for(task, 10)
        return waits

    waits = asyncio.run(scenario())
    # Without the interrupt a job would wait for the thread's sleep to end: 0.5 s on average.
    assert statistics.median(waits) < 0.3, f"jobs waited {waits}"


def test_stop_ends_the_run_after_the_poll_in_flight(sims: list[SimulatedDlt645Bus]) -> None:
    _sim, url, addresses = _bus(sims, 3)

    async def scenario() -> tuple[float, Sink, BusWorker]:
        sink = Sink(asyncio.get_running_loop(), want=30)
        worker = _worker(url, addresses, sink, interval_s=0.01)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(sink.enough.wait(), 20)
        started = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, 10)
        return time.monotonic() - started, sink, worker

    took, sink, worker = asyncio.run(scenario())
    assert took < 1.0, f"the bus took {took:.2f} s to stop"
    assert all(r.quality is Quality.OK for _, r, _ in sink.got), "stopping failed a poll"
    assert worker.stats.polls_ok == len(sink.got) and worker.stats.polls_failed == 0
    assert not worker.link.is_open  # type: ignore[attr-defined]


def test_a_serial_server_that_goes_away_fails_one_poll_on_the_thread_then_polls_resume(
    sims: list[SimulatedDlt645Bus],
) -> None:
    sim, url, addresses = _bus(sims, 3, tcp_port=0)
    port = int(url.rsplit(":", 1)[1])

    async def scenario() -> tuple[Sink, int, int, Any]:
        loop = asyncio.get_running_loop()
        sink = Sink(loop, want=12)
        worker = _worker(url, addresses, sink, interval_s=0.1)
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(sink.enough.wait(), 20)
        sim.stop()  # the serial server goes away: its connection closes under the held bus
        await async_wait_for(lambda: any(r.quality is not Quality.OK for _, r, _ in sink.got), what="a failed poll")
        dropped_at = len(sink.got)
        await asyncio.sleep(0.5)  # the link is down for a while: polls fail from the loop, on its backoff
        models = make_models(3, clock=ManualClock())
        again = SimulatedDlt645Bus(models, response_delay_s=0.0, emulate_timing=False)
        sims.append(again)
        again.start_tcp(port=port)
        restored_at = len(sink.got)
        await async_wait_for(
            lambda: sum(r.quality is Quality.OK for _, r, _ in sink.got[restored_at:]) >= 6, what="polls to resume"
        )
        worker.stop()
        await asyncio.wait_for(task, 10)
        return sink, dropped_at, restored_at, worker.link.stats  # type: ignore[attr-defined]

    sink, dropped_at, restored_at, stats = asyncio.run(scenario())
    loop_thread = threading.main_thread().ident
    failed_on_thread = [r for _, r, t in sink.got if r.quality is not Quality.OK and t != loop_thread]
    assert len(failed_on_thread) == 1, "the run ends at the poll that found the port dead"
    assert stats.reopens >= 1
    resumed = sink.got[restored_at:]
    assert any(r.quality is Quality.OK and t != loop_thread for _, r, t in resumed), "polls went back to the thread"
    assert dropped_at < restored_at


def test_sighup_reopens_a_held_link_at_once(sims: list[SimulatedDlt645Bus]) -> None:
    """A device server that keeps the connection but answers nothing never fails the port: the
    operator's reopen (SIGHUP, ``reopen_link``) must not wait for the run of polls to end by itself."""
    _sim, url, addresses = _bus(sims, 2, tcp_port=0)

    async def scenario() -> tuple[int, float]:
        sink = Sink(asyncio.get_running_loop(), want=2)
        worker = _worker(url, addresses, sink, interval_s=60.0)  # the run idles on the thread
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(sink.enough.wait(), 20)
        stats = worker.link.stats  # type: ignore[attr-defined]
        before = stats.reopens
        started = time.monotonic()
        worker.reopen_link()
        await async_wait_for(lambda: stats.reopens > before, timeout=5, what="the reopen")
        took = time.monotonic() - started
        worker.stop()
        await asyncio.wait_for(task, 10)
        return stats.reopens - before, took

    reopened, took = asyncio.run(scenario())
    assert reopened == 1
    assert took < 0.5, f"the reopen waited {took:.2f} s for the run to end"
