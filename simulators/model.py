"""The physical meter that every protocol simulator serves.

One state model for DL/T 645 and Modbus simulators alike: a load profile drives energy while the
relay is closed, per-tariff registers follow the time of day, the clock may drift, and faults are
switchable per meter.  Time comes from an injectable clock, so a test or the demo can run a day in
seconds; energy is accumulated in exact integer milli-watt-hours, never floats.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

Clock = Callable[[], float]
"""Returns seconds since the epoch (possibly accelerated)."""

REGISTER_MODULUS_WH = 1_000_000_000  # XXXXXX.XX kWh in 4 BCD bytes: 999,999.99 kWh then back to 0


class Fault(enum.StrEnum):
    """Faults a simulated meter can be told to show (switchable at run time)."""

    NO_ANSWER = "no_answer"
    LATE_ANSWER = "late_answer"
    BAD_CHECKSUM = "bad_checksum"
    GARBAGE = "garbage"
    TRUNCATED = "truncated"
    ABNORMAL_REPLY = "abnormal_reply"
    WRONG_UNIT = "wrong_unit"
    STUCK_RELAY = "stuck_relay"


class FastClock:
    """Wall time that runs ``speed`` times faster than real time from the moment it is made."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        self.speed = speed
        self._real0 = time.monotonic()
        self._virtual0 = time.time() if start is None else start

    def __call__(self) -> float:
        return self._virtual0 + (time.monotonic() - self._real0) * self.speed


@dataclass
class LoadProfile:
    """Power drawn (W) by hour of local day; a flat profile when one value is given."""

    watts_by_hour: tuple[int, ...] = (500,)

    def power_w(self, hour: int) -> int:
        if len(self.watts_by_hour) == 1:
            return self.watts_by_hour[0]
        return self.watts_by_hour[hour % len(self.watts_by_hour)]


DEFAULT_TARIFF_HOURS: tuple[int, ...] = (
    # hour of day -> tariff index 1..4 (T1 peak, T2 flat, T3 valley), a common 峰平谷 layout
    3,
    3,
    3,
    3,
    3,
    3,
    3,
    3,
    2,
    1,
    1,
    1,
    2,
    2,
    2,
    2,
    2,
    1,
    1,
    1,
    1,
    2,
    3,
    3,
)


@dataclass
class MeterModel:
    """The state of one simulated meter.  Thread-safe: simulators serve it from I/O threads."""

    address: str
    clock: Clock = field(default=time.time)
    profile: LoadProfile = field(default_factory=LoadProfile)
    energy_import_mwh: int = 0
    energy_export_mwh: int = 0
    tariff_mwh: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    tariff_hours: tuple[int, ...] = DEFAULT_TARIFF_HOURS
    relay_closed: bool = True
    relay_command_trip: bool = False
    pre_trip_alarm: bool = False
    keep_power: bool = False
    clock_drift_s: float = 0.0
    voltage_dv: int = 2200  # 220.0 V in deci-volts
    frequency_chz: int = 5000
    password: str = "000000"
    prepaid_money_cents: int | None = None
    purchase_count: int = 0
    faults: set[Fault] = field(default_factory=set)
    late_answer_s: float = 1.5
    block_chunk: int = 0  # DL/T 645 block reads: bytes per frame before 0x12 follow-ups (0 = one frame)
    utc_offset_hours: int = 8
    # What a DL/T 645 meter says about itself (DI 04000402/03/0B); None: "no such data"
    meter_number: str | None = None
    asset_number: str | None = None
    model_name: str | None = None
    response_delay_s: float | None = None  # this meter's own reply delay (None: the bus's)
    _last_t: float | None = None
    _residue: int = 0  # energy below 1 mWh not yet on the register, in W·µs
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # -- time and energy -------------------------------------------------------------------
    def advance(self) -> None:
        """Accumulate energy up to the clock's now, split exactly across hour boundaries."""
        with self._lock:
            now = self.clock()
            if self._last_t is None:
                self._last_t = now
                return
            t = self._last_t
            while t < now:
                local = datetime.fromtimestamp(t, UTC) + timedelta(hours=self.utc_offset_hours)
                next_hour = t + (3600 - (local.minute * 60 + local.second + local.microsecond / 1e6))
                end = min(now, next_hour)
                if self.relay_closed:
                    # milli-Wh = W * seconds / 3.6; integer arithmetic on micro-seconds for exactness
                    # W·µs carried across segments so that no energy is lost to rounding at hour edges
                    micros = round((end - t) * 1_000_000)
                    self._residue += self.profile.power_w(local.hour) * micros
                    mwh, self._residue = divmod(self._residue, 3_600_000)
                    self._add_import(mwh, self.tariff_hours[local.hour % 24])
                t = end
            self._last_t = now

    def _add_import(self, mwh: int, tariff: int) -> None:
        limit_mwh = REGISTER_MODULUS_WH * 1000
        self.energy_import_mwh = (self.energy_import_mwh + mwh) % limit_mwh
        idx = max(1, min(4, tariff)) - 1
        self.tariff_mwh[idx] = (self.tariff_mwh[idx] + mwh) % limit_mwh

    @property
    def energy_import_wh(self) -> int:
        self.advance()
        return self.energy_import_mwh // 1000

    @property
    def energy_export_wh(self) -> int:
        return self.energy_export_mwh // 1000

    def tariff_wh(self) -> tuple[int, ...]:
        self.advance()
        return tuple(v // 1000 for v in self.tariff_mwh)

    def power_w(self) -> int:
        if not self.relay_closed:
            return 0
        local = datetime.fromtimestamp(self.clock(), UTC) + timedelta(hours=self.utc_offset_hours)
        return self.profile.power_w(local.hour)

    def current_ma(self) -> int:
        return self.power_w() * 10_000 // max(1, self.voltage_dv)

    @property
    def voltage_v(self) -> Decimal:
        return Decimal(self.voltage_dv) / 10

    def meter_time(self) -> datetime:
        """The meter's own clock in its local time (naive, as DL/T 645 meters keep it)."""
        t = self.clock() + self.clock_drift_s
        return (datetime.fromtimestamp(t, UTC) + timedelta(hours=self.utc_offset_hours)).replace(tzinfo=None)

    def set_time(self, local: datetime) -> None:
        """Broadcast time sync: set drift so the meter's clock reads ``local`` now."""
        with self._lock:
            real_local = datetime.fromtimestamp(self.clock(), UTC) + timedelta(hours=self.utc_offset_hours)
            self.clock_drift_s = (local - real_local.replace(tzinfo=None)).total_seconds()

    # -- relay ---------------------------------------------------------------------------------
    def trip(self) -> bool:
        """Open the relay.  Refused (False) under keep-power; ignored silently when stuck."""
        with self._lock:
            self.advance()
            if self.keep_power:
                return False
            self.relay_command_trip = True
            if Fault.STUCK_RELAY not in self.faults:
                self.relay_closed = False
            return True

    def close(self, direct: bool = True) -> bool:
        with self._lock:
            self.advance()
            self.relay_command_trip = False
            if Fault.STUCK_RELAY not in self.faults and direct:
                self.relay_closed = True
            return True

    def press_button(self) -> None:
        """The customer presses the button after a close-permitted command."""
        with self._lock:
            self.advance()
            if not self.relay_command_trip and Fault.STUCK_RELAY not in self.faults:
                self.relay_closed = True

    # -- faults ----------------------------------------------------------------------------------
    def rollover_to(self, wh: int) -> None:
        """Jump the import register (fault injection: near-rollover or reset)."""
        with self._lock:
            self.advance()
            self.energy_import_mwh = wh * 1000

    def has(self, fault: Fault) -> bool:
        return fault in self.faults
