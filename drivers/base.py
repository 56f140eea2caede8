"""Protocol-neutral values and errors shared by every meter driver.

The rest of the gateway sees meters only through these types, so a DL/T 645 meter and a Modbus
meter are billed and enforced the same way.  Failure is a value: a reading that did not succeed
carries a quality other than ``OK`` and no numbers, never a zero that could end up in a bill.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar, runtime_checkable

_T = TypeVar("_T")


class Quality(enum.StrEnum):
    """How far a reading can be trusted.  Only ``OK`` may be charged."""

    OK = "ok"
    TIMEOUT = "timeout"
    BAD_FRAME = "bad_frame"
    REFUSED = "refused"
    IMPLAUSIBLE = "implausible"


class RelayState(enum.StrEnum):
    """The supply switch as read back from the meter."""

    CLOSED = "closed"
    OPEN = "open"


class RelayAction(enum.StrEnum):
    """What the gateway can ask a meter's relay to do (DL/T 645 0x1C N1 codes in comments)."""

    TRIP = "trip"  # 1A
    CLOSE_PERMITTED = "close_permitted"  # 1B: customer presses the button to reclose
    DIRECT_CLOSE = "direct_close"  # 1C
    ALARM_ON = "alarm_on"  # 2A
    ALARM_OFF = "alarm_off"  # 2B
    KEEP_POWER_ON = "keep_power_on"  # 3A
    KEEP_POWER_OFF = "keep_power_off"  # 3B

    @property
    def expected_state(self) -> RelayState | None:
        """The relay state a successful command leads to, for read-back confirmation."""
        if self is RelayAction.TRIP:
            return RelayState.OPEN
        if self is RelayAction.DIRECT_CLOSE:
            return RelayState.CLOSED
        return None


class Point(enum.StrEnum):
    """Measurements a meter may offer; drivers map them to registers or data identifiers."""

    ENERGY_IMPORT = "energy_import"
    ENERGY_EXPORT = "energy_export"
    ENERGY_IMPORT_TARIFFS = "energy_import_tariffs"
    VOLTAGE = "voltage"
    CURRENT = "current"
    POWER = "power"
    FREQUENCY = "frequency"
    POWER_FACTOR = "power_factor"
    METER_TIME = "meter_time"
    RELAY = "relay"
    STATUS = "status"
    PREPAID_MONEY = "prepaid_money"


BILLING_POINTS: frozenset[Point] = frozenset({Point.ENERGY_IMPORT, Point.RELAY})
ENERGY_POINTS: tuple[Point, ...] = (Point.ENERGY_IMPORT, Point.ENERGY_EXPORT)  # totals in whole Wh

# The ``Reading`` field each point fills: the key of ``Reading.errors`` when that point's value was bad.
POINT_FIELDS: dict[Point, tuple[str, ...]] = {
    Point.ENERGY_IMPORT: ("energy_import_wh",),
    Point.ENERGY_EXPORT: ("energy_export_wh",),
    Point.ENERGY_IMPORT_TARIFFS: ("energy_import_tariffs_wh",),
    Point.VOLTAGE: ("voltage_v",),
    Point.CURRENT: ("current_a",),
    Point.POWER: ("power_w",),
    Point.FREQUENCY: ("frequency_hz",),
    Point.POWER_FACTOR: ("power_factor",),
    Point.METER_TIME: ("meter_time",),
    Point.RELAY: ("relay",),
    Point.STATUS: ("status",),
    Point.PREPAID_MONEY: ("prepaid_money",),
}


@dataclass(frozen=True)
class Reading:
    """One conversation's worth of typed values from one meter.

    Energy is integer Wh; electrical quantities are Decimals at the meter's resolution.  A field
    is ``None`` when the meter was not asked for it or does not offer it.  ``quality`` is the
    outcome of the whole read: when it is not ``OK`` the numbers must not be used for money.
    """

    address: str
    taken_at: datetime
    quality: Quality
    energy_import_wh: int | None = None
    energy_export_wh: int | None = None
    energy_import_tariffs_wh: tuple[int, ...] | None = None  # T1..Tn, index 0 = T1
    voltage_v: Decimal | None = None
    current_a: Decimal | None = None
    power_w: Decimal | None = None
    frequency_hz: Decimal | None = None
    power_factor: Decimal | None = None
    meter_time: datetime | None = None
    relay: RelayState | None = None
    status: dict[str, bool | int] = field(default_factory=dict)
    prepaid_money: Decimal | None = None
    error: str | None = None
    # Fields the meter answered but whose value was bad (field name -> one-line error); the field is
    # ``None``.  One bad optional field (a clock answered as 00 00 00 00) must not cost the energy.
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def chargeable(self) -> bool:
        return self.quality is Quality.OK and self.energy_import_wh is not None

    def to_json(self) -> dict[str, object]:
        """The JSON form shared by every protocol (``pmg read --json``, MQTT payloads)."""

        def dec(v: Decimal | None) -> str | None:
            return None if v is None else str(v)

        return {
            "address": self.address,
            "taken_at": self.taken_at.isoformat(),
            "quality": self.quality.value,
            "energy_import_wh": self.energy_import_wh,
            "energy_export_wh": self.energy_export_wh,
            "energy_import_tariffs_wh": (
                list(self.energy_import_tariffs_wh) if self.energy_import_tariffs_wh is not None else None
            ),
            "voltage_v": dec(self.voltage_v),
            "current_a": dec(self.current_a),
            "power_w": dec(self.power_w),
            "frequency_hz": dec(self.frequency_hz),
            "power_factor": dec(self.power_factor),
            "meter_time": self.meter_time.isoformat() if self.meter_time else None,
            "relay": self.relay.value if self.relay else None,
            "status": self.status,
            "prepaid_money": dec(self.prepaid_money),
            "error": self.error,
            "errors": dict(self.errors),
        }


class DriverError(Exception):
    """Base of every error a driver raises; the message is one line fit for a technician."""


class MeterTimeout(DriverError):
    """The meter did not answer within the response timeout (after retries)."""


class BadFrame(DriverError):
    """Bytes arrived but did not form a valid frame for this request."""


class MeterRefused(DriverError):
    """The meter answered with an abnormal / exception reply."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class NotControllable(DriverError):
    """The meter (or its profile) has no relay the gateway can operate."""


class RelayNotConfirmed(DriverError):
    """The meter acknowledged a relay command but the read-back state differs."""


class LinkError(DriverError):
    """The bus itself is unusable (a port cannot be opened, a TCP connection is refused or closed,
    the link is not open): one class for every protocol, so callers catch one thing."""


@runtime_checkable
class Meter(Protocol):
    """A meter as the gateway sees it: read typed values, command the relay.

    Implementations own no bus: they are handed a bus link by the bus worker, which guarantees
    one conversation at a time per physical line.
    """

    address: str

    async def read(self, points: Iterable[Point] = BILLING_POINTS) -> Reading: ...

    async def relay(self, action: RelayAction, deadline: datetime | None = None) -> RelayState | None:
        """Send the command, then read the relay back.  Returns the confirmed state (``None`` for
        actions that do not move the relay).  Raises ``RelayNotConfirmed`` on a mismatch."""
        ...

    async def read_relay(self) -> RelayState | None: ...

    async def close(self) -> None: ...


@runtime_checkable
class ThreadPolledMeter(Protocol):
    """A meter whose poll can also run on its link's thread, its frames sent by the ``exchange`` the
    link hands to the held bus (``HeldLink.hold``): the same reading as ``read``, without the event
    loop (``gateway.runtime.bus``)."""

    def poll_blocking(self, exchange: Any, points: Iterable[Point] = BILLING_POINTS) -> Reading: ...


@runtime_checkable
class HeldLink(Protocol):
    """A link that can be held for a run of exchanges on its own thread (``Dlt645Link.hold``)."""

    async def hold(self, work: Callable[[Any], _T], *, on_cancel: Callable[[], None] | None = None) -> _T: ...
