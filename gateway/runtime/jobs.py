"""Timed jobs registered on the daemon's apscheduler: settlement, housekeeping, clock sync, reports.

Jobs are written to catch up: a gateway that was off at midnight settles the missed days when it
comes back, because each job works from what the database says was last done, not from the trigger
time.  Each job module exposes ``run(gateway)``; a module that does not exist yet is skipped.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

if TYPE_CHECKING:
    from gateway.runtime.ports import JobContext

log = logging.getLogger("pmg.jobs")

# (job id, module providing ``run(gateway)``, interval in seconds of real time)
JOBS: tuple[tuple[str, str, float], ...] = (
    ("settlement", "gateway.ledger.settlement", 60.0),  # standing charges for every local day that ended
    ("housekeeping", "gateway.runtime.housekeeping", 3600.0),  # downsample readings, trim delivered outbox, backup
    ("clock_sync", "gateway.runtime.clocksync", 3600.0),  # read meter clocks, broadcast time to those that drifted
    ("reports", "gateway.sync.report_publisher", 60.0),  # day/week/dekad/month reports once each period ended
)


def _job(gateway: JobContext, run: Callable[[JobContext], Any], name: str) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        try:
            result = run(gateway)
            if hasattr(result, "__await__"):
                await result
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling() and not gateway.stopping:
                raise
            log.info("job=%s stopped: its bus work was cancelled (the gateway is stopping)", name)
        except Exception:
            log.exception("job=%s failed", name)

    return job


def register_jobs(scheduler: AsyncIOScheduler, gateway: JobContext) -> None:
    """Add the periodic jobs; each is idempotent and safe to run late or twice."""
    for name, module_name, interval in JOBS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        scheduler.add_job(
            _job(gateway, module.run, name),
            "interval",
            seconds=interval,
            id=name,
            misfire_grace_time=int(interval),
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now(UTC) + timedelta(seconds=2),  # catch up soon after start
        )
