"""Timed jobs registered on the daemon's apscheduler: settlement and housekeeping.

Jobs are written to catch up: a gateway that was off at midnight settles the missed days when it
comes back, because each job works from what the database says was last done, not from the trigger.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler

if TYPE_CHECKING:
    from gateway.daemon import Gateway

log = logging.getLogger("pmg.jobs")


def register_jobs(scheduler: AsyncIOScheduler, gateway: Gateway) -> None:
    """Add the periodic jobs; each is idempotent and safe to run late or twice."""
    del scheduler, gateway  # settlement and housekeeping jobs are added by their modules
