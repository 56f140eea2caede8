"""A DLMS/COSEM meter as the gateway sees it: typed readings by OBIS and a confirmed class 70 relay.

Every read is one conversation (``DlmsLink.converse``): associate, GET each object of the profile,
leave.  A register's scaler-unit (attribute 3) is static (IEC 62056-6-2, class 3), so it is read once
per meter and kept; a refused or undecodable value spoils only its own point, as with Modbus, and the
reading is ``OK`` when the billing points asked for (import energy, relay) were read.

The relay is the disconnect control object (class 70): ``remote_disconnect`` (method 1) and
``remote_reconnect`` (method 2), each confirmed by reading the output state (attribute 2) and the
control state (attribute 3) back in the same association.  In control modes 2 and 4 a remote
reconnect does not close the relay: it leaves it ``ready_for_reconnection`` and the customer closes
it with the meter's button (IEC 62056-6-2, 4.5.8, transitions a and e) — what the enforcer calls
``close_permitted``, as for a DL/T 645 meter's 1B command.

With HLS-GMAC every conversation starts at a fresh block of invocation counters
(``drivers.dlms.counter``): above the meter's own counter object, read with the public client once
after start and again after a refused association, and above our record next to the key file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any, TypeVar

from dlms_cosem import dlms_data

from drivers.base import (
    BILLING_POINTS,
    ENERGY_POINTS,
    POINT_FIELDS,
    BadFrame,
    DriverError,
    LinkError,
    MeterRefused,
    MeterTimeout,
    NotControllable,
    Point,
    Quality,
    Reading,
    RelayAction,
    RelayNotConfirmed,
    RelayState,
)
from drivers.dlms import values as v
from drivers.dlms.counter import DEFAULT_OBIS, ClientCounter, CounterError
from drivers.dlms.keys import DlmsSecurity
from drivers.dlms.link import DlmsLink, Session, Target
from drivers.dlms.profile import DISCONNECT_CLASS, Profile, ValueSpec

# Class 70 control_state (attribute 3) values.
DISCONNECTED, CONNECTED, READY_FOR_RECONNECTION = 0, 1, 2
CONTROL_STATES = {DISCONNECTED: "disconnected", CONNECTED: "connected", READY_FOR_RECONNECTION: "ready_for_reconnection"}
REMOTE_DISCONNECT, REMOTE_RECONNECT = 1, 2
DATA_CLASS = 1  # the invocation counter object is a class 1 Data (IEC 62056-6-2)

log = logging.getLogger("pmg.dlms")
T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Disconnector:
    """The disconnect control object as read: output state, control state and control mode."""

    output: bool
    control_state: int
    control_mode: int | None

    @property
    def relay(self) -> RelayState:
        return RelayState.CLOSED if self.output else RelayState.OPEN

    @property
    def close_permitted(self) -> bool:
        return self.control_state == READY_FOR_RECONNECTION

    def status(self) -> dict[str, bool | int]:
        out: dict[str, bool | int] = {"control_state": self.control_state, "close_permitted": self.close_permitted}
        if self.control_mode is not None:
            out["control_mode"] = self.control_mode
        return out


def _bool(data: bytes, what: str) -> bool:
    value = v.decode(data)
    if not isinstance(value, bool):
        raise v.ValueProblem(f"{what} is not a boolean: {value!r}")
    return value


def _enum(data: bytes, what: str, allowed: range) -> int:
    value = v.decode(data)
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise v.ValueProblem(f"{what} is not one of {allowed.start}..{allowed.stop - 1}: {value!r}")
    return value


class DlmsMeter:
    """One DLMS server (logical device) on a link, read and commanded through its profile."""

    def __init__(
        self,
        link: DlmsLink,
        target: Target,
        profile: Profile,
        *,
        clock: Callable[[], datetime] = _utcnow,
        tz: tzinfo = UTC,
        counter: ClientCounter | None = None,
        counter_obis: str = DEFAULT_OBIS,
    ) -> None:
        self.link = link
        self.target = target
        self.profile = profile
        self.address = str(target)
        self._clock = clock
        self._tz = tz
        self._scalers: dict[str, v.ScalerUnit] = {}
        hls = target.security.auth == "hls-gmac"
        self.counter = (counter or ClientCounter(None)) if hls else None
        self.counter_obis = None if counter_obis == "none" else counter_obis

    def __repr__(self) -> str:
        return f"DlmsMeter({self.link.url!r}, {self.address}, profile={self.profile.name!r}, {self.target.security!r})"

    @property
    def controllable(self) -> bool:
        return self.profile.relay is not None

    # -- conversations --------------------------------------------------------------------------------
    async def _converse(self, work: Callable[[Session], T]) -> T:
        """``work`` in one association with the meter.  For HLS-GMAC: the meter's counter object read
        first if it has not been, and after a refusal read again and tried once more if the meter had
        seen counters above the ones we started at (our record lost, or another head-end on the client)."""
        counter = self.counter
        if counter is None:
            return await self.link.converse(self.target, work)
        if self.counter_obis and not counter.meter_read:
            await self._read_meter_counter(counter, self.counter_obis)
        try:
            return await self._hls(counter, work)
        except CounterError:
            raise  # our record, not the meter's answer
        except MeterRefused:
            start = counter.last_start
            if not self.counter_obis or start is None:
                raise
            await self._read_meter_counter(counter, self.counter_obis)
            if counter.meter_floor <= start:
                raise  # not a stale counter: another key, client or refusal
            log.warning("meter=%s invocation counter behind the meter's (%d); associating again above it",
                        self.address, counter.meter_floor)
            return await self._hls(counter, work)

    async def _hls(self, counter: ClientCounter, work: Callable[[Session], T]) -> T:
        first = counter.block(self.link.retries + 1)
        target = replace(self.target, security=replace(self.target.security, counter=first))

        def counted(s: Session) -> T:
            try:
                return work(s)
            finally:  # +1: the release request to come is ciphered too
                counter.used(int(s.client.client_invocation_counter) + 1)

        return await self.link.converse(target, counted)

    async def _read_meter_counter(self, counter: ClientCounter, obis: str) -> None:
        """The meter's last accepted invocation counter for our client, read by the public client."""
        public = replace(self.target, security=DlmsSecurity())

        def work(s: Session) -> Any:
            return v.decode(s.get(DATA_CLASS, obis, 2))

        try:
            value = await self.link.converse(public, work)
        except MeterRefused as exc:
            counter.meter_read = True  # it will not change its mind: the record alone then
            log.warning("meter=%s invocation counter %s not readable by the public client (%s)", self.address, obis, exc)
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            counter.meter_read = True
            log.warning("meter=%s invocation counter %s is not a counter: %r", self.address, obis, value)
            return
        counter.saw_meter(value)

    # -- reading ------------------------------------------------------------------------------------
    def _value(self, s: Session, spec: ValueSpec, quantity: str) -> Decimal:
        raw = v.raw_number(s.get(spec.cls, spec.obis, 2))
        if spec.cls == 1:  # Data: no scaler-unit, the value is in the quantity's unit
            return raw
        su = self._scalers.get(spec.obis)
        if su is None:
            su = v.scaler_unit(s.get(spec.cls, spec.obis, 3))
            self._scalers[spec.obis] = su
        return v.in_unit(raw, su, quantity)

    def _point(self, s: Session, point: Point) -> Any:
        if point is Point.ENERGY_IMPORT_TARIFFS:
            tariffs = self.profile.points.energy_import_tariffs
            assert tariffs is not None
            return tuple(v.to_wh(self._value(s, spec, "energy")) for spec in tariffs.specs())
        spec = self.profile.value_spec(point)
        assert spec is not None
        value = self._value(s, spec, Profile.quantity(point))
        if point in ENERGY_POINTS:
            return v.to_wh(value)
        return v.quantize(value, spec.decimals) if spec.decimals is not None else value

    def _disconnector(self, s: Session, with_mode: bool = True) -> Disconnector:
        relay = self.profile.relay
        assert relay is not None
        output = _bool(s.get(DISCONNECT_CLASS, relay.obis, 2), "output_state")
        state = _enum(s.get(DISCONNECT_CLASS, relay.obis, 3), "control_state", range(3))
        mode = _enum(s.get(DISCONNECT_CLASS, relay.obis, 4), "control_mode", range(7)) if with_mode else None
        return Disconnector(output, state, mode)

    async def read(self, points: Iterable[Point] = BILLING_POINTS) -> Reading:
        wanted = set(points)
        taken_at = self._clock()
        offered = set(self.profile.offered())
        values: dict[str, Any] = {}
        problems: dict[Point, tuple[Quality, str]] = {}

        def work(s: Session) -> None:
            for point in sorted(wanted & offered):
                try:
                    if point is Point.METER_TIME:
                        assert self.profile.clock is not None
                        # As every driver reports it: the meter's wall time in the meters' zone, naive.
                        when = v.clock_time(s.get(8, self.profile.clock.obis, 2), self._tz)
                        values["meter_time"] = when.astimezone(self._tz).replace(tzinfo=None)
                    elif point is Point.RELAY:
                        d = self._disconnector(s)
                        values["relay"] = d.relay
                        values["status"] = d.status()
                    elif point in (Point.STATUS, Point.PREPAID_MONEY):
                        continue
                    else:
                        values[POINT_FIELDS[point][0]] = self._point(s, point)
                except MeterRefused as exc:
                    problems[point] = (Quality.REFUSED, str(exc))
                except v.ValueProblem as exc:
                    self._scalers.clear()  # a unit that makes no sense may be a stale scaler: read it again
                    problems[point] = (Quality.IMPLAUSIBLE, f"{self.address} {point.value}: {exc}")

        try:
            await self._converse(work)
        except (MeterTimeout, LinkError) as exc:
            return Reading(self.address, taken_at, Quality.TIMEOUT, error=str(exc))
        except MeterRefused as exc:
            return Reading(self.address, taken_at, Quality.REFUSED, error=str(exc))
        except BadFrame as exc:
            return Reading(self.address, taken_at, Quality.BAD_FRAME, error=str(exc))
        quality = Quality.OK
        for p in (Point.ENERGY_IMPORT, Point.RELAY):
            if p in wanted and p in problems:
                quality = problems[p][0]
                break
        error = "; ".join(f"{p.value}: {msg}" for p, (_, msg) in sorted(problems.items())) or None
        if quality is not Quality.OK:
            return Reading(self.address, taken_at, quality, error=error, **values)
        errors = {name: msg for p, (_, msg) in sorted(problems.items()) for name in POINT_FIELDS[p]}
        return Reading(self.address, taken_at, quality, error=error, errors=errors, **values)

    async def read_disconnector(self) -> Disconnector:
        if self.profile.relay is None:
            raise NotControllable(f"DLMS meter {self.address} ({self.profile.meter.name}): profile has no relay")
        return await self._converse(self._disconnector)

    async def read_relay(self) -> RelayState | None:
        if self.profile.relay is None:
            return None
        return (await self.read_disconnector()).relay

    # -- relay --------------------------------------------------------------------------------------
    async def relay(self, action: RelayAction, deadline: datetime | None = None) -> RelayState | None:
        """``remote_disconnect`` / ``remote_reconnect``, then the object read back in the same association.

        TRIP is confirmed by the output open; DIRECT_CLOSE by the output closed (a meter whose
        control mode only permits closing answers ``RelayNotConfirmed`` naming ``close_permitted``);
        CLOSE_PERMITTED by the control state connected or ready_for_reconnection.  Returns the output
        as read back.  A command whose exchange failed is still judged by a fresh read-back."""
        relay = self.profile.relay
        if relay is None:
            raise NotControllable(f"DLMS meter {self.address} ({self.profile.meter.name}): profile has no relay")
        if action is RelayAction.TRIP:
            method = REMOTE_DISCONNECT
        elif action in (RelayAction.DIRECT_CLOSE, RelayAction.CLOSE_PERMITTED):
            method = REMOTE_RECONNECT
        else:
            raise NotControllable(f"DLMS meter {self.address}: {action.value} has no class 70 method")
        if deadline is not None and self._clock() > deadline:
            raise RelayNotConfirmed(f"DLMS meter {self.address}: {action.value} not sent, deadline {deadline} passed")
        arg = dlms_data.IntegerData(0).to_bytes()

        def work(s: Session) -> Disconnector:
            s.action(DISCONNECT_CLASS, relay.obis, method, arg)
            return self._disconnector(s)

        sent_error: DriverError | None = None
        try:
            after = await self._converse(work)
        except (MeterTimeout, BadFrame) as exc:  # it may have been executed: the read-back decides
            sent_error = exc
            try:
                after = await self.read_disconnector()
            except DriverError:
                raise exc from None
        return self._judge(action, after, sent_error)

    def _judge(self, action: RelayAction, d: Disconnector, sent_error: DriverError | None) -> RelayState:
        state = CONTROL_STATES.get(d.control_state, str(d.control_state))
        detail = f" (command: {sent_error})" if sent_error else ""
        where = f"DLMS meter {self.address}"
        if action is RelayAction.TRIP:
            if d.output:
                raise RelayNotConfirmed(f"{where}: output still closed ({state}) after remote_disconnect{detail}")
        elif action is RelayAction.DIRECT_CLOSE:
            if not d.output:
                if d.close_permitted:
                    raise RelayNotConfirmed(
                        f"{where}: control mode {d.control_mode} needs the customer's button: remote_reconnect "
                        f"left it ready_for_reconnection (close permitted); use reconnect.mode = \"close_permitted\""
                    )
                raise RelayNotConfirmed(f"{where}: output still open ({state}) after remote_reconnect{detail}")
        elif d.control_state not in (CONNECTED, READY_FOR_RECONNECTION):
            raise RelayNotConfirmed(f"{where}: still {state} after remote_reconnect{detail}")
        return d.relay

    # -- clock --------------------------------------------------------------------------------------
    async def read_clock(self) -> datetime:
        clock = self.profile.clock
        if clock is None:
            raise NotControllable(f"DLMS meter {self.address}: profile has no clock")
        return await self._converse(lambda s: v.clock_time(s.get(8, clock.obis, 2), self._tz))

    async def set_clock(self, when: datetime) -> datetime:
        """SET the clock's time (attribute 2) to ``when`` (aware), then read it back."""
        clock = self.profile.clock
        if clock is None:
            raise NotControllable(f"DLMS meter {self.address}: profile has no clock")
        data = dlms_data.OctetStringData(v.clock_bytes(when)).to_bytes()

        def work(s: Session) -> datetime:
            s.set(8, clock.obis, 2, data)
            return v.clock_time(s.get(8, clock.obis, 2), self._tz)

        return await self._converse(work)

    async def close(self) -> None:
        """Nothing to release: the link belongs to the bus worker."""
