"""Is the gateway's wall clock to be believed?  Four independent witnesses, one verdict.

Every lawful instant the gateway acts on — a notice period's end, a protected window, the end of a
day to settle — is read off the wall clock.  A clock that lies (a technician's ``date -s``, a dead
RTC battery before NTP answers, a rogue NTP server) would make those instants lie too: a clock a
day fast cuts a household before its notice expired.  So the gateway does not act on time it has
reason to doubt (docs/enforcement.md, "Untrusted time").  The witnesses:

(a) ``step``: the wall clock moved by more than ``step_tolerance_s`` against the monotonic clock
    (which no one can set) since the last look.  Cleared when the wall clock comes back to where
    the monotonic clock says it should be, or when another witness (meters, a signed command,
    NTP that stays synchronised for ``ntp_settle_s``) vouches for the new time.
(b) ``ntp``: the kernel says the clock is not synchronised (``adjtimex``: TIME_ERROR, i.e.
    STA_UNSYNC) — only when ``[time] require_ntp``; a probe that cannot answer (a container) is
    "unknown", never a reason.
(c) ``meters``: a majority of the meters whose clocks were read agree with each other within
    ``reference_tolerance_s`` but not with us.
(d) ``commands``: a signed head-office command was issued (``issued_at``) further in our future
    than ``reference_tolerance_s`` — signed instants come from head office's clock, not ours.

This module holds no database and no policy: it is fed observations with injected clocks and
reports changes of verdict; ``gateway.runtime.timeguard`` turns them into events, policy holds and
re-decisions.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gateway.core.timeutil import Clock, iso

log = logging.getLogger("pmg.timetrust")

NtpProbe = Callable[[], bool | None]
"""True: synchronised; False: not synchronised; None: cannot tell (no such facility here)."""

NTP_PROBE_EVERY_S = 30.0  # monotonic seconds between two NTP probes (a syscall, but no need to spam)
_TIME_ERROR = 5  # adjtimex(2) return value: the clock is not synchronised (STA_UNSYNC or STA_CLOCKERR)


@dataclass(frozen=True)
class TrustSettings:
    """The ``[time]`` section (``gateway.config.TimeConfig``)."""

    step_tolerance_s: float = 5.0
    reference_tolerance_s: float = 300.0
    require_ntp: bool = False
    ntp_settle_s: float = 900.0
    meter_quorum: int = 3


@dataclass(frozen=True)
class TrustChange:
    """The verdict changed: ``trusted`` is the new one, ``reasons`` why it is (still) doubted."""

    trusted: bool
    reasons: dict[str, str]
    at: datetime


@dataclass
class TimeTrust:
    """The verdict on the wall clock, from injected clocks: ``wall`` (the gateway's clock) and
    ``monotonic`` (seconds that advance at the wall clock's nominal rate and cannot be set)."""

    settings: TrustSettings
    wall: Clock
    monotonic: Callable[[], float] | None
    ntp: NtpProbe | None = None
    rate: float = 1.0  # wall seconds per real second (a demo's fast clock): tolerances scale with it
    reasons: dict[str, str] = field(default_factory=dict)
    ntp_state: bool | None = None
    _anchor: tuple[datetime, float] | None = None  # (wall, monotonic) of the last believed instant
    _ntp_next: float = float("-inf")
    _ntp_synced_since: float | None = None
    _last_trusted: bool = True

    @property
    def trusted(self) -> bool:
        return not self.reasons

    # -- the witnesses -------------------------------------------------------------------------------
    def check(self) -> TrustChange | None:
        """Look at the wall and monotonic clocks (and NTP now and then); the change, if any."""
        if self.monotonic is None:
            wall = self.wall()
            self._probe_ntp(None)
            return self._changed(wall)
        # The wall clock is read between two monotonic reads: a pause of the process between the
        # reads (which a fast clock multiplies) is not a step.
        before = self.monotonic()
        wall = self.wall()
        after = self.monotonic()
        if self._anchor is None:
            self._anchor = (wall, before)
        offset, mono = self._offset(wall, before, after)
        tolerance = self.settings.step_tolerance_s * self.rate
        if "step" in self.reasons:
            if abs(offset) <= tolerance:
                self.reasons.pop("step")  # the clock came back to where it should be
                self._forget_references()
        elif abs(offset) > tolerance:
            self.reasons["step"] = (
                f"wall clock stepped {_signed(offset)} against the monotonic clock "
                f"(tolerance {self.settings.step_tolerance_s:g} s)"
            )
            self._forget_references()
            self._ntp_synced_since = None  # NTP must stay synchronised for a while *after* the step
            log.warning("time untrusted: %s", self.reasons["step"])
        if "step" not in self.reasons:
            self._anchor = (wall, mono)  # follows slewing; a step is only what one look cannot explain
        self._probe_ntp(mono)
        return self._changed(wall)

    def meters_observed(self, drift_s: Mapping[str, float]) -> TrustChange | None:
        """Meter clocks read (meter minus gateway, seconds): a majority against us is a reason; a
        majority with us vouches for our time."""
        if len(drift_s) < self.settings.meter_quorum:
            return None
        tol = self.settings.reference_tolerance_s * self.rate  # a read's latency, in wall seconds
        median = statistics.median(drift_s.values())
        agreeing = [d for d in drift_s.values() if abs(d - median) <= tol]
        if 2 * len(agreeing) <= len(drift_s):
            return None  # no majority: the meters disagree among themselves and prove nothing
        if abs(median) > tol:
            self.reasons["meters"] = (
                f"{len(agreeing)} of {len(drift_s)} meter clocks agree with each other and differ "
                f"from ours by {_signed(median)}"
            )
        else:
            self.reasons.pop("meters", None)
            self._vouched("meters")
        return self._changed(self.wall())

    def command_observed(self, issued_at: datetime) -> TrustChange | None:
        """A signed command's ``issued_at``: head office cannot have signed it in our future."""
        now = self.wall()
        ahead = (issued_at - now).total_seconds()
        tol = self.settings.reference_tolerance_s * self.rate
        if ahead > tol:
            self.reasons["commands"] = (
                f"a signed command was issued {_signed(ahead)} after our clock's time ({iso(issued_at)})"
            )
        elif ahead >= -tol:
            self.reasons.pop("commands", None)
            self._vouched("a signed command")
        return self._changed(now)

    def corrected_now(self) -> datetime:
        """The wall time the monotonic clock vouches for: the wall clock while it is believed, the
        last believed instant plus monotonic time elapsed while it is not.  It does not look for a
        change itself (``check`` does, so that no change goes unreported)."""
        if self.monotonic is None or self._anchor is None:
            return self.wall()
        wall0, mono0 = self._anchor
        return wall0 + timedelta(seconds=self.monotonic() - mono0)

    def snapshot(self) -> dict[str, object]:
        return {
            "trusted": self.trusted,
            "reasons": dict(self.reasons),
            "ntp": {True: "synchronised", False: "not synchronised", None: "unknown"}[self.ntp_state],
            "require_ntp": self.settings.require_ntp,
            "step_detection": self.monotonic is not None,
        }

    # -- internals -----------------------------------------------------------------------------------
    def _offset(self, wall: datetime, before: float, after: float) -> tuple[float, float]:
        """How far ``wall`` is outside what the monotonic clock allows between ``before`` and
        ``after`` (0 inside), and the monotonic instant that matches ``wall`` best."""
        assert self._anchor is not None
        wall0, mono0 = self._anchor
        elapsed = (wall - wall0).total_seconds()
        matching = min(max(mono0 + elapsed, before), after)
        return elapsed - (matching - mono0), matching

    def _forget_references(self) -> None:
        """Meter and command comparisons were made against the wall clock before it moved: they
        no longer say anything about it (the next clock check or command compares afresh)."""
        self.reasons.pop("meters", None)
        self.reasons.pop("commands", None)

    def _vouched(self, who: str) -> None:
        """An independent witness agrees with the wall clock as it is now: a step is accepted."""
        if "step" in self.reasons and self.monotonic is not None:
            log.warning("time: %s vouch for the stepped wall clock; accepting it", who)
            self.reasons.pop("step")
            self._anchor = (self.wall(), self.monotonic())

    def _probe_ntp(self, mono: float | None) -> None:
        if self.ntp is None:
            return
        now_mono = time.monotonic() if mono is None else mono
        if now_mono < self._ntp_next:
            return
        self._ntp_next = now_mono + NTP_PROBE_EVERY_S
        self.ntp_state = self.ntp()
        if self.ntp_state is True:
            if self._ntp_synced_since is None:
                self._ntp_synced_since = now_mono
            if now_mono - self._ntp_synced_since >= self.settings.ntp_settle_s:
                self._vouched("NTP, synchronised for a while,")
        else:
            self._ntp_synced_since = None
        if self.settings.require_ntp and self.ntp_state is False:
            self.reasons["ntp"] = "the system clock is not synchronised by NTP ([time] require_ntp)"
        else:
            self.reasons.pop("ntp", None)

    def _changed(self, at: datetime) -> TrustChange | None:
        if self.trusted is self._last_trusted:
            return None
        self._last_trusted = self.trusted
        return TrustChange(self.trusted, dict(self.reasons), at)


def _signed(seconds: float) -> str:
    sign = "+" if seconds >= 0 else "-"
    s = abs(seconds)
    return f"{sign}{s / 3600:.2f} h" if s >= 3600 else f"{sign}{s:.0f} s"


class _Timex(ctypes.Structure):
    # struct timex (adjtimex(2)): ``modes`` first; the kernel writes the rest, so room is all we need.
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_byte * 512)]


@functools.cache
def _process_symbols() -> ctypes.CDLL:
    """The symbols already loaded in this process, the C library's among them (``dlopen(NULL)``).

    Not ``ctypes.util.find_library("c")``: on Linux it runs ``ldconfig -p`` in a child process on
    every call, which started a process from the daemon at every NTP probe."""
    return ctypes.CDLL(None, use_errno=True)


def adjtimex_probe() -> bool | None:
    """Linux: is the system clock synchronised (``adjtimex`` read-only, no privilege needed)?"""
    try:
        libc = _process_symbols()
        tx = _Timex()
        state = int(libc.adjtimex(ctypes.byref(tx)))
    except (OSError, AttributeError, TypeError):
        return None
    if state < 0:
        return None  # EPERM in a locked-down container, or no such call: cannot tell
    return state != _TIME_ERROR
