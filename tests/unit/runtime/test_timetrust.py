"""The verdict on the wall clock (gateway.runtime.timetrust), with hand-moved clocks and an injected NTP probe."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.timeutil import ScaledClock
from gateway.runtime.timetrust import TimeTrust, TrustSettings, adjtimex_probe

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


class Clocks:
    def __init__(self) -> None:
        self.wall_at, self.mono_s = T0, 50.0
        self.ntp: bool | None = None

    def wall(self) -> datetime:
        return self.wall_at

    def mono(self) -> float:
        return self.mono_s

    def probe(self) -> bool | None:
        return self.ntp

    def elapse(self, seconds: float, *, wall_rate: float = 1.0) -> None:
        self.wall_at += timedelta(seconds=seconds * wall_rate)
        self.mono_s += seconds


def _trust(c: Clocks, **settings: object) -> TimeTrust:
    return TimeTrust(TrustSettings(**settings), c.wall, c.mono, c.probe)  # type: ignore[arg-type]


def test_a_step_beyond_the_tolerance_is_doubted_until_the_clock_comes_back() -> None:
    c = Clocks()
    t = _trust(c, step_tolerance_s=5.0)
    assert t.check() is None and t.trusted
    c.elapse(3600, wall_rate=1.0005)  # NTP slewing at its maximum rate: not a step
    assert t.check() is None and t.trusted
    c.wall_at += timedelta(seconds=4)
    assert t.check() is None, "within the tolerance"
    c.wall_at += timedelta(days=1)
    change = t.check()
    assert change is not None and not change.trusted and "step" in change.reasons
    assert t.check() is None, "one change per episode"
    c.elapse(1800)
    assert t.corrected_now() == c.wall_at - timedelta(days=1), "the monotonic clock's reckoning"
    c.wall_at -= timedelta(days=1)
    change = t.check()
    assert change is not None and change.trusted and t.corrected_now() == c.wall_at


def test_ntp_is_a_reason_only_when_required_and_never_when_it_cannot_be_told() -> None:
    c = Clocks()
    c.ntp = False
    assert _trust(c).check() is None, "require_ntp off: an unsynchronised clock is only reported"
    required = _trust(c, require_ntp=True)
    change = required.check()
    assert change is not None and "ntp" in change.reasons
    c.ntp = None  # a container: no adjtimex answer
    c.elapse(60)
    change = required.check()
    assert change is not None and change.trusted and required.snapshot()["ntp"] == "unknown"


def test_ntp_synchronised_for_a_while_vouches_for_a_stepped_clock() -> None:
    c = Clocks()
    c.ntp = True
    t = _trust(c, ntp_settle_s=600.0)
    t.check()
    c.wall_at += timedelta(hours=2)
    assert t.check() is not None and not t.trusted
    c.elapse(300)  # the first look at NTP after the step: synchronised since now
    assert t.check() is None and not t.trusted
    c.elapse(400)
    assert t.check() is None and not t.trusted, "synchronised before the step does not count"
    c.elapse(300)
    change = t.check()
    assert change is not None and change.trusted


def test_meters_count_only_as_an_agreeing_majority_of_a_quorum() -> None:
    c = Clocks()
    t = _trust(c, meter_quorum=3, reference_tolerance_s=300.0)
    assert t.meters_observed({"a": -86400, "b": -86400}) is None, "below the quorum"
    assert t.meters_observed({"a": -86400, "b": 7200, "c": 30}) is None, "no majority: they prove nothing"
    assert t.trusted
    change = t.meters_observed({"a": -86400, "b": -86399, "c": 30})
    assert change is not None and not change.trusted and "meters" in change.reasons
    change = t.meters_observed({"a": 1, "b": -2, "c": 30})
    assert change is not None and change.trusted


def test_signed_issued_at_in_our_future_is_a_reason_and_a_fresh_one_clears_it() -> None:
    c = Clocks()
    t = _trust(c, reference_tolerance_s=300.0)
    assert t.command_observed(T0 - timedelta(days=3)) is None, "an old command says nothing"
    assert t.command_observed(T0 + timedelta(seconds=200)) is None, "within the tolerance"
    change = t.command_observed(T0 + timedelta(hours=1))
    assert change is not None and "commands" in change.reasons
    change = t.command_observed(T0 - timedelta(seconds=10))
    assert change is not None and change.trusted


def test_a_scaled_clock_is_not_a_stepping_one() -> None:
    clock = ScaledClock(20_000.0)
    t = TimeTrust(TrustSettings(), clock, clock.monotonic)
    for _ in range(1000):
        assert t.check() is None
    assert t.trusted


def test_the_adjtimex_probe_answers_or_says_it_cannot() -> None:
    assert adjtimex_probe() in (True, False, None)


def test_the_adjtimex_probe_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe runs every 30 s in the daemon: looking the C library up with ldconfig started a
    process each time.  The probe must answer the same with process creation forbidden."""
    expected = adjtimex_probe()

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the probe started a process: {args!r}")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)
    monkeypatch.setattr(os, "fork", no_process)
    for _ in range(3):
        assert adjtimex_probe() == expected
