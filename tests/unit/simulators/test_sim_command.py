"""The simulators' shared command parts: the fast-clock warning tells the truth, and every option has help.

The warning's figure is checked against the simulated meter itself: a trip the gateway stamps with
its validity is accepted by a meter whose clock is just under that figure ahead of real time, and
refused as expired ("other") just over it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click
import pytest

from drivers.base import RelayAction
from drivers.dlt645 import commands
from drivers.dlt645.frame import ErrorFlags
from gateway.store.relay_queue import RELAY_VALIDITY
from simulators.command import GATEWAY_RELAY_VALIDITY_S, fast_clock_warning, refusal_after_s
from simulators.dlt645.__main__ import command as dlt645_command
from simulators.dlt645.responder import respond
from simulators.fleet.__main__ import command as fleet_command
from simulators.modbus.cli import command as modbus_command
from simulators.model import MeterModel

T0 = 1_790_000_000.0  # a fixed real instant (2026-09-21)


def test_the_simulators_know_the_gateways_relay_validity() -> None:
    assert timedelta(seconds=GATEWAY_RELAY_VALIDITY_S) == RELAY_VALIDITY


def _trip_answered(speed: float, real_elapsed_s: float) -> bool:
    """A meter whose clock started at T0 and runs ``speed`` times real time gets, ``real_elapsed_s``
    real seconds later, a trip a real-time gateway stamped with its validity: is it carried out?"""
    meter = MeterModel("000000000001", clock=lambda: T0 + real_elapsed_s * speed)
    gateway_now = datetime.fromtimestamp(T0 + real_elapsed_s, UTC)
    deadline = (gateway_now + RELAY_VALIDITY + timedelta(hours=meter.utc_offset_hours)).replace(tzinfo=None)
    security = commands.security_fields(2, meter.password, "00000000")
    (reply,) = respond(meter, commands.relay_request(meter.address, RelayAction.TRIP, deadline, security))
    if reply.is_abnormal:
        assert ErrorFlags(reply.data[0] & 0x7F) is ErrorFlags.OTHER
        return False
    return not meter.relay_closed


@pytest.mark.parametrize("speed", [60.0, 3600.0])
def test_the_warned_time_is_when_trips_start_being_refused(speed: float) -> None:
    after = refusal_after_s(speed)
    assert after is not None
    assert _trip_answered(speed, after * 0.99)
    assert not _trip_answered(speed, after * 1.01)
    warning = fast_clock_warning(speed)
    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"warning: --speed {speed:g} runs the meters' clocks {speed:g}x real time")
    assert "refused relay trip: other" in warning


def test_speed_60_is_refused_after_half_a_minute() -> None:
    warning = fast_clock_warning(60, "speed = 60 (fleet.toml)")
    assert warning is not None and "after 30.5 s" in warning and "30.0 min" in warning
    assert warning.startswith("warning: speed = 60 (fleet.toml) runs")


@pytest.mark.parametrize("speed", [1.0, 0.5])
def test_a_clock_no_faster_than_real_time_is_not_warned_about(speed: float) -> None:
    assert refusal_after_s(speed) is None and fast_clock_warning(speed) is None
    assert _trip_answered(speed, 10 * 86400)


@pytest.mark.parametrize("command", [dlt645_command, modbus_command, fleet_command], ids=lambda c: c.name)
def test_every_option_has_help(command: click.Command) -> None:
    options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    assert options
    assert all(p.help and p.help.strip() for p in options), [p.name for p in options if not p.help]


@pytest.mark.parametrize("command", [dlt645_command, modbus_command], ids=lambda c: c.name)
def test_the_meter_simulators_use_the_same_option_names(command: click.Command) -> None:
    names = {opt for p in command.params if isinstance(p, click.Option) and not p.hidden for opt in p.opts}
    assert {"--meters", "--power-w", "--speed", "--tcp", "--pty", "--host", "--baud"} <= names
