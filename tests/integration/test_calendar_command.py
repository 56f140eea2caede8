"""The head office's ``calendar`` command on a running gateway (real SQLite, a private Mosquitto).

The gateway's clock starts on Monday 28 December 2026, when ``holidays`` 0.109 has no 2027
arrangement for China: it warns once (``calendar_stale``), refuses bad arrangements with a reason in
the ack and no change, accepts a signed one, keeps it across a restart and cuts by it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from support.broker import Mosquitto
from support.calendar_2027 import (
    DAYS_OFF_2027,
    NOTICE_2027,
    NOTICE_DAY_OFF,
    SWAPPED_SATURDAY,
    WORKDAYS_2027,
    cuts,
    exhausted_decision,
)
from support.gateway_harness import base_config, write_config
from support.signed_commands import command, keys_toml, signed

from gateway.config import load_config
from gateway.core.timeutil import ScaledClock
from gateway.runtime.daemon import Gateway
from gateway.sync.commands.processor import CommandProcessor
from gateway.sync.contract import load_schema

START = datetime(2026, 12, 28, 2, 0, tzinfo=UTC)


def _config(tmp_path: Path, port: int) -> Path:
    body = base_config(tmp_path / "pmg.db", mqtt_port=port, policy='[policy]\npreset = "cn"\n') + keys_toml()
    body += f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{tmp_path / "no-such-port"}"\n'
    body += '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n'
    return write_config(tmp_path / "gw.toml", body)


def _run(cfg: Path, body: Callable[[Gateway], Awaitable[None]]) -> None:
    async def main() -> None:
        gw = Gateway(cfg, load_config(cfg), clock=ScaledClock(1.0, start=START))
        await gw.start()
        try:
            await body(gw)
        finally:
            await gw.stop()

    asyncio.run(main())


def _fields(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "country": "CN",
        "year": 2027,
        "days_off": [d.isoformat() for d in DAYS_OFF_2027],
        "workdays": [d.isoformat() for d in WORKDAYS_2027],
        "source": NOTICE_2027,
    }
    base.update(kw)
    return base


def _stale(gw: Gateway) -> list[dict[str, Any]]:
    rows = gw.store.all("SELECT detail_json FROM events WHERE kind = 'calendar_stale' ORDER BY id")
    return [json.loads(r["detail_json"]) for r in rows]


def test_calendar_command_makes_2027_official_and_rejects_bad_ones(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = _config(tmp_path, mosquitto.port)

    async def first_run(gw: Gateway) -> None:
        cal = gw.parts.calendar
        stale = _stale(gw)
        assert [(s["year"], s["country"], s["source"]) for s in stale] == [(2027, "CN", "holidays 0.109")]
        await gw.review_slice()
        assert len(_stale(gw)) == 1  # once per year and start
        assert not cuts(exhausted_decision(cal, SWAPPED_SATURDAY))
        proc = CommandProcessor(gw)
        now = gw.clock()

        async def send(cmd: dict[str, Any]) -> dict[str, Any]:
            return await proc.handle("calendar", json.dumps(cmd).encode())

        bad = [
            (command("calendar", now, **_fields()), "unauthenticated", "unsigned"),
            (signed("calendar", now - timedelta(hours=2), **_fields()), "expired", "expired at"),
            (signed("calendar", now, **_fields(days_off=["2027-01-01", "2028-01-01"])), "invalid",
             "days_off: 2028-01-01 is not in 2027"),
            (signed("calendar", now, **_fields(workdays=["2027-02-20", "2027-02-11"])), "invalid",
             "2027-02-11 is listed both as a day off and as a working day"),
            (signed("calendar", now, **_fields(country="US")), "invalid", "country 'US' is not this gateway's"),
            (signed("calendar", now, **_fields(year=2029, days_off=["2029-01-01"], workdays=[])), "invalid",
             "year 2029 is out of range (2025-2027)"),
            (signed("calendar", now, **_fields(days_off=["2027-02-30"])), "invalid", "not a date YYYY-MM-DD"),
            (signed("calendar", now, **_fields(days_off=["2027-W01-1"])), "invalid", "not a date YYYY-MM-DD"),
            (signed("calendar", now, **_fields(year="2027")), "invalid", "year: Input should be a valid integer"),
        ]
        for cmd, code, reason in bad:
            ack = await send(cmd)
            assert (ack["status"], ack["code"]) == ("rejected", code), ack
            assert reason in ack["reason"] and "\n" not in ack["reason"], ack
        assert gw.store.scalar("SELECT count(*) FROM calendar_years") == 0
        assert not cal.is_official(2027)

        ack = await send(signed("calendar", now, **_fields()))
        assert ack["status"] == "applied", ack
        assert ack["result"] == {"country": "CN", "year": 2027, "days_off": len(DAYS_OFF_2027),
                                 "workdays": 2, "source": NOTICE_2027, "replaced": False}
        assert cal.is_official(2027)
        assert cuts(exhausted_decision(cal, SWAPPED_SATURDAY))
        assert not cuts(exhausted_decision(cal, NOTICE_DAY_OFF))
        assert gw.store.scalar("SELECT count(*) FROM events WHERE kind = 'calendar_official'") == 1

    _run(cfg, first_run)

    async def second_run(gw: Gateway) -> None:
        cal = gw.parts.calendar
        assert cal.is_official(2027) and cal.source_of(2027).startswith("command cmd-")
        assert len(_stale(gw)) == 1  # the first start's; none for this one
        assert cuts(exhausted_decision(cal, SWAPPED_SATURDAY))
        assert not cuts(exhausted_decision(cal, NOTICE_DAY_OFF))

    _run(cfg, second_run)


def test_calendar_file_in_the_config(tmp_path: Path, mosquitto: Mosquitto) -> None:
    from support.calendar_2027 import GOOD_FILE

    (tmp_path / "calendar.toml").write_text(GOOD_FILE, encoding="utf-8")
    cfg = _config(tmp_path, mosquitto.port)
    cfg.write_text(cfg.read_text().replace('preset = "cn"\n', 'preset = "cn"\ncalendar_file = "calendar.toml"\n'))

    async def body(gw: Gateway) -> None:
        assert _stale(gw) == []
        assert gw.parts.calendar.source_of(2027) == f"file calendar.toml ({NOTICE_2027})"
        assert cuts(exhausted_decision(gw.parts.calendar, SWAPPED_SATURDAY))
        assert not cuts(exhausted_decision(gw.parts.calendar, NOTICE_DAY_OFF))
        # SIGHUP with a broken file: refused, the running calendar is kept.
        (tmp_path / "calendar.toml").write_text(GOOD_FILE.replace('country = "CN"', 'country = "XX"'))
        assert await gw.reload() is False
        assert gw.parts.calendar.is_official(2027)
        # With the file gone from the configuration, 2027 is unknown again.
        cfg.write_text(cfg.read_text().replace('calendar_file = "calendar.toml"\n', ""))
        assert await gw.reload() is True
        assert not cuts(exhausted_decision(gw.parts.calendar, SWAPPED_SATURDAY))

    _run(cfg, body)


def test_run_check_refuses_a_bad_calendar_file_in_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from support.calendar_2027 import GOOD_FILE

    from gateway.cli.main import cli

    (tmp_path / "calendar.toml").write_text(GOOD_FILE.replace("2027-10-09]", "2027-10-09, 2027-02-12]"))
    cfg = _config(tmp_path, 1883)
    cfg.write_text(cfg.read_text().replace('preset = "cn"\n', 'preset = "cn"\ncalendar_file = "calendar.toml"\n'))
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--check"], prog_name="pmg")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "calendar.toml:8: years[0].workdays: 2027-02-12 is listed both" in lines[0], lines
    (tmp_path / "calendar.toml").write_text(GOOD_FILE)
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--check"], prog_name="pmg")
    assert result.exit_code == 0 and "OK" in result.output


def test_calendar_command_matches_the_command_schema() -> None:
    validator = jsonschema.Draft202012Validator(load_schema("command"))
    good = signed("calendar", START, **_fields())
    validator.validate(good)
    for bad in (dict(good, year="2027"), dict(good, days_off=["2027-1-1"]), dict(good, extra=1)):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)
