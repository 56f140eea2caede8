"""The daemon publishes period reports on ``reports`` through its own scheduler (apscheduler) and clock.

A real gateway whose clock runs a day a second (the meters' too), a simulated meter on a pty, a private
Mosquitto: within seconds the scheduled job (run every second here) has queued the reports of the days (and any week, dekad or
month) that ended, each exactly once, validating against gateway/contract/report.json.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
from support.broker import Mosquitto
from support.gateway_harness import subscriber
from support.signed_commands import running_gateway
from support.waiting import async_wait_for

from gateway.runtime import jobs
from gateway.sync.contract import load_schema


def test_the_running_gateway_publishes_each_ended_day_once(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the job every real second rather than every minute: at a day a second, a run a day
    monkeypatch.setattr(
        jobs, "JOBS", tuple((n, m, 1.0 if n == "reports" else i) for n, m, i in jobs.JOBS)
    )
    with subscriber(mosquitto.port, "pmg/gw-test/reports") as hq:

        async def scenario() -> None:
            async with running_gateway(tmp_path, mosquitto.port, meters=1, speed=86_400.0) as run:
                await async_wait_for(lambda: len(hq.of("/reports")) >= 2, timeout=30, what="two reports")
                queued = run.store.scalar("SELECT COUNT(*) FROM reports_published")
                await async_wait_for(
                    lambda: len(hq.of("/reports")) >= queued, timeout=10, what="every queued report"
                )

        asyncio.run(scenario())
        reports = hq.of("/reports")
    validator = jsonschema.Draft202012Validator(load_schema("report"))
    for body in reports:
        errors = list(validator.iter_errors(body))
        assert not errors, f"{errors[0].message} in {body}"
    periods = Counter((b["period"], b["period_start"]) for b in reports)
    assert periods and max(periods.values()) == 1, periods
    days = sorted(b["period_start"] for b in reports if b["period"] == "day")
    assert days, reports
    assert all(b["accounts"] and b["accounts"][0]["account_id"] == "acc1" for b in reports)
    assert len({b["epoch"] for b in reports}) == 1
