"""Meter clock check and broadcast time sync for DL/T 645 buses.

A DL/T 645 meter switches its own tariff registers (T1..T4) by its own clock, so a meter whose clock
runs off puts energy in the wrong time-of-use bucket and the gateway's apportioning no longer matches
the meter's.  Each check reads every DL/T 645 meter's clock (together with a normal billing read, so
the read is charged like any poll rather than counting as a failure), and on a bus where any meter
is further off than ``housekeeping.clock_max_drift_s`` sends one broadcast time frame (function 08,
no reply — DL/T 645-2007 §7.6) with the gateway's local wall time, then reads the drifted meters again
to verify.  The drifts found and the broadcast are audited as events.  A DLMS meter (also switching
tariffs by its own clock) has each drifted clock set on its own (a SET of the clock object's time,
``DlmsMeter.set_clock``), audited as the broadcast is; both only while our own time is trusted.

All bus traffic goes through the bus worker (``read_now`` / ``submit``): the worker is the only owner
of the line, and a relay command still outranks these reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from drivers.base import Point, Quality, Reading
from drivers.dlt645.link import Dlt645Link
from drivers.dlt645.meter import broadcast_time
from gateway.core.logfields import kv
from gateway.runtime.bus import POLL_POINTS, PRIORITY_READ_NOW, BusWorker
from gateway.store import events
from gateway.store.db import Store

if TYPE_CHECKING:
    from gateway.runtime.ports import JobContext

log = logging.getLogger("pmg.clocksync")

CLOCK_POINTS = frozenset({*POLL_POINTS, Point.METER_TIME})
READ_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BusClockResult:
    bus_id: str
    drift_s: dict[str, float]  # meter id -> meter clock minus gateway clock (seconds)
    unreadable: tuple[str, ...]
    broadcast: bool
    after_s: dict[str, float]  # drift re-read after the broadcast (drifted meters only)
    withheld: bool = False  # drifted meters, but our own clock was untrusted: nothing broadcast


def drift_seconds(meter_time: datetime, now: datetime, tz: ZoneInfo) -> float:
    """Meter clock (naive local wall time) minus the gateway's instant in the same zone."""
    local_now = now.astimezone(tz).replace(tzinfo=None)
    return (meter_time - local_now).total_seconds()


async def _read_clock(worker: BusWorker, meter_id: str) -> Reading | None:
    """The meter's reading with its clock, or None (no answer in time, or the bus stopped)."""
    try:
        fut = worker.read_now(meter_id, CLOCK_POINTS)
    except KeyError:  # the meter left the bus on a reload
        return None
    try:
        return await asyncio.wait_for(fut, READ_TIMEOUT_S)
    except TimeoutError:
        return None
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if fut.cancelled() and task is not None and not task.cancelling():
            return None  # the worker stopped before reading; we ourselves were not cancelled
        raise


async def check_bus(
    worker: BusWorker,
    meter_ids: list[str],
    tz: ZoneInfo,
    clock: Callable[[], datetime],
    max_drift_s: float,
    may_broadcast: Callable[[dict[str, float]], bool] = lambda _drift: True,
) -> BusClockResult:
    """Read each meter's clock; broadcast time on this bus if any is beyond ``max_drift_s`` and
    ``may_broadcast(drift)`` — told the drifts, it says whether our own clock is to be believed."""
    drift: dict[str, float] = {}
    unreadable: list[str] = []
    for meter_id in meter_ids:
        reading = await _read_clock(worker, meter_id)
        if reading is None or reading.quality is not Quality.OK or reading.meter_time is None:
            unreadable.append(meter_id)
            continue
        drift[meter_id] = round(drift_seconds(reading.meter_time, reading.taken_at, tz), 1)
    drifted = [m for m, d in drift.items() if abs(d) > max_drift_s]
    after: dict[str, float] = {}
    trusted = may_broadcast(drift) if drift else True  # every check is a witness, drifted or not
    if drifted and not trusted:
        return BusClockResult(worker.bus_id, drift, tuple(unreadable), False, after, withheld=True)
    if drifted:
        link = worker.link
        if isinstance(link, Dlt645Link):

            async def send() -> None:
                # The time is taken when the frame goes out, not when the job was queued.
                await broadcast_time(link, clock().astimezone(tz).replace(tzinfo=None))

            await worker.submit(PRIORITY_READ_NOW, send)
        else:  # DLMS has no broadcast here: each drifted meter's clock is SET (class 8, attribute 2)
            for meter_id in drifted:
                set_clock: Callable[[datetime], Awaitable[object]] | None = getattr(
                    worker.meter(meter_id), "set_clock", None
                )
                if set_clock is None:
                    raise TypeError(f"bus {worker.bus_id}: meter {meter_id} cannot have its clock set")

                async def set_now(set_clock: Callable[[datetime], Awaitable[object]] = set_clock) -> None:
                    await set_clock(clock())  # the time is taken when the request goes out

                await worker.submit(PRIORITY_READ_NOW, set_now)
        for meter_id in drifted:
            reading = await _read_clock(worker, meter_id)
            if reading is not None and reading.quality is Quality.OK and reading.meter_time is not None:
                after[meter_id] = round(drift_seconds(reading.meter_time, reading.taken_at, tz), 1)
    return BusClockResult(worker.bus_id, drift, tuple(unreadable), bool(drifted), after)


def audit(store: Store, result: BusClockResult, now: datetime, max_drift_s: float) -> None:
    """One event per drifted meter and one for the broadcast, in one transaction."""
    with store.tx() as conn:
        for meter_id, d in result.drift_s.items():
            if abs(d) > max_drift_s:
                events.record(
                    conn,
                    "meter_clock_drift",
                    now,
                    severity="warning",
                    meter_id=meter_id,
                    detail={
                        "bus": result.bus_id,
                        "drift_s": d,
                        "threshold_s": max_drift_s,
                        "after_sync_s": result.after_s.get(meter_id),
                    },
                    publish=True,
                )
        if result.withheld:
            events.record(
                conn,
                "time_broadcast_withheld",
                now,
                severity="warning",
                detail={"bus": result.bus_id, "reason": "the gateway's own clock is untrusted"},
            )
        if result.broadcast:
            still = sorted(m for m, d in result.after_s.items() if abs(d) > max_drift_s)
            events.record(
                conn,
                "time_broadcast",
                now,
                severity="warning" if still else "info",
                detail={"bus": result.bus_id, "meters_drifted": len(result.after_s), "still_drifted": still},
            )


async def run(gateway: JobContext) -> list[BusClockResult]:
    """The scheduler's entry point (``gateway.runtime.jobs``): every DL/T 645 and DLMS bus, one after another."""
    threshold = float(gateway.cfg.housekeeping.clock_max_drift_s)
    results: list[BusClockResult] = []
    for bus in gateway.cfg.buses:
        worker = gateway.workers.get(bus.id)
        if bus.protocol not in ("dlt645", "dlms") or worker is None:
            continue
        meter_ids = [m.id for m in gateway.cfg.meters_on(bus.id) if m.id in worker.meters]
        try:
            result = await check_bus(
                worker, meter_ids, gateway.cfg.tz, gateway.clock, threshold, _trust_witness(gateway)
            )
        except Exception as exc:  # one bad bus must not stop the others' checks
            log.error("clock check failed: %s", exc, extra=kv(bus=bus.id))
            continue
        audit(gateway.store, result, gateway.clock(), threshold)
        _log(result)
        results.append(result)
    return results


def _trust_witness(gateway: JobContext) -> Callable[[dict[str, float]], bool]:
    """The meters' clocks are a witness on ours (gateway.runtime.timetrust); no broadcast of a doubted time."""
    from gateway.runtime import timeguard

    def may_broadcast(drift: dict[str, float]) -> bool:
        trust = gateway.timetrust
        if trust is None:
            return True
        timeguard.observed(gateway, trust.meters_observed(drift))
        return timeguard.observe(gateway)

    return may_broadcast


def _log(result: BusClockResult) -> None:
    if result.withheld:
        log.warning(
            "time broadcast withheld (our clock is untrusted)",
            extra=kv(bus=result.bus_id, drift_s=_rounded(result.drift_s)),
        )
    elif result.broadcast:
        log.warning(
            "time broadcast",
            extra=kv(bus=result.bus_id, drift_s=_rounded(result.drift_s), after_s=_rounded(result.after_s)),
        )
    else:
        log.info(
            "clock check", extra=kv(bus=result.bus_id, checked=len(result.drift_s), unreadable=len(result.unreadable))
        )


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    """Per-meter seconds to a tenth (``drift_s.M-01=-316.7``): a clock read is no finer."""
    return {meter: round(value, 1) for meter, value in seconds.items()}
