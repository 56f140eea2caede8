"""A DL/T 645 meter as the gateway sees it (``drivers.base.Meter``), over a shared ``Dlt645Link``.

Each ``Point`` maps to data identifiers in ``di.TABLE``.  A read of several points is several
request/reply exchanges; the billing point (import energy) failing fails the whole reading, while
an optional point the meter does not have ("no such data") just stays ``None``, and one it answers
badly (refused, or value bytes that do not decode) stays ``None`` with its error in
``Reading.errors``.  Relay commands are
confirmed by reading status word 3 back: the meter's acknowledgement alone decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any, TypeAlias, TypeVar

from drivers.base import (
    BILLING_POINTS,
    POINT_FIELDS,
    BadFrame,
    DriverError,
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
from drivers.dlt645 import commands
from drivers.dlt645 import di as dis
from drivers.dlt645.frame import Dlt645Refused, Frame, FrameError, check_address
from drivers.dlt645.link import BlockingExchange, Dlt645Link

MAX_FOLLOW_UPS = 16
DEFAULT_RELAY_VALIDITY = timedelta(minutes=10)

_V2007: dict[Point, tuple[int, ...]] = {
    Point.ENERGY_IMPORT: (dis.ENERGY_IMPORT,),
    Point.ENERGY_EXPORT: (dis.ENERGY_EXPORT,),
    Point.ENERGY_IMPORT_TARIFFS: tuple(dis.energy_tariff(dis.ENERGY_IMPORT, t) for t in range(1, 5)),
    Point.VOLTAGE: (dis.VOLTAGE_A,),
    Point.CURRENT: (dis.CURRENT_A,),
    Point.POWER: (dis.POWER_TOTAL,),
    Point.FREQUENCY: (dis.FREQUENCY,),
    Point.POWER_FACTOR: (dis.POWER_FACTOR_TOTAL,),
    Point.METER_TIME: (dis.DATE, dis.TIME),
    Point.RELAY: (dis.status_word(3),),
    Point.STATUS: (dis.status_word(3),),
    Point.PREPAID_MONEY: (dis.REMAINING_MONEY, dis.OVERDRAFT_MONEY, dis.PURCHASE_COUNT),
}
_V1997: dict[Point, tuple[int, ...]] = {
    Point.ENERGY_IMPORT: (0x9010,),
    Point.ENERGY_EXPORT: (0x9020,),
    Point.VOLTAGE: (0xB611,),
    Point.CURRENT: (0xB621,),
    Point.POWER: (0xB630,),
    Point.METER_TIME: (0xC010, 0xC011),
}
_REQUIRED = {Point.ENERGY_IMPORT}
_T = TypeVar("_T")
# Frames to send next, answered by their replies (or the error of each one's last attempt; the list may
# stop short at the first error), until the steps return their result.
Steps: TypeAlias = Generator[list[Frame], list[Frame | DriverError], _T]
# A poll's batch: each DI's request as sent, with its reply or the error of its last attempt.
Prefetched: TypeAlias = dict[int, tuple[Frame, Frame | DriverError]]
# what the import block (0001FF00) carries: total and T1..T4
_BLOCK_DIS = (dis.ENERGY_IMPORT, *(dis.energy_tariff(dis.ENERGY_IMPORT, t) for t in range(1, 5)))


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Dlt645Meter:
    """One meter on a DL/T 645 bus.  Holds no bus: every exchange goes through the shared link."""

    def __init__(
        self,
        link: Dlt645Link,
        address: str,
        *,
        password: str = "000000",
        password_level: int = 2,
        operator: str = "00000000",
        protocol_version: str = "2007",
        tz: tzinfo | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if protocol_version not in ("2007", "1997"):
            raise ValueError(f"DL/T 645 protocol_version must be '2007' or '1997', got {protocol_version!r}")
        self.link = link
        self.address = check_address(address)
        self.protocol_version = protocol_version
        self._security = commands.security_fields(password_level, password, operator)
        self._tz = tz  # the meter's local zone for relay deadlines; None = this host's zone
        self._clock = clock

    @property
    def _v1997(self) -> bool:
        return self.protocol_version == "1997"

    # -- reads ------------------------------------------------------------------------------------
    # A read is written once, as steps that say which frames to send next and take what came back
    # (``Steps``): ``_drive`` runs them through the link from the event loop, ``poll_blocking`` on the
    # link's own thread (the bus worker's polls, ``gateway.runtime.bus``).  Either way the same code
    # decides what a reply means.

    async def read_raw(self, di: int) -> bytes:
        """Value bytes of one DI, following 0x12 follow-up frames.  Raises driver errors."""
        return await self._drive(self._raw_steps(di, {}))

    async def read_value(self, di: int) -> Decimal | int | Any:
        """One DI decoded through the table (Decimal, int status word, date or time)."""
        fmt = dis.lookup(di, v1997=self._v1997)
        return fmt.decode(await self.read_raw(di))

    async def _checked(self, request: Frame, what: str) -> Frame:
        return await self._drive(self._checked_steps(request, what))

    async def read(self, points: Iterable[Point] = BILLING_POINTS) -> Reading:
        """Typed values with a quality; failure is a quality and an error, never a number."""
        return await self._drive(self._read_steps(points))

    def poll_blocking(self, exchange: BlockingExchange, points: Iterable[Point] = BILLING_POINTS) -> Reading:
        """``read`` on the link's thread, its frames sent by ``exchange`` (``Dlt645Link.hold``)."""
        steps = self._read_steps(points)
        try:
            batch = next(steps)
            while True:
                try:
                    replies = exchange(batch)
                except DriverError as exc:
                    batch = steps.throw(exc)
                else:
                    batch = steps.send(replies)
        except StopIteration as done:
            return done.value

    async def _drive(self, steps: Steps[_T]) -> _T:
        """Run read steps from the event loop: each batch of frames is one ``request_many``."""
        try:
            batch = next(steps)
            while True:
                try:
                    replies = await self.link.request_many(batch)
                except DriverError as exc:  # the link failed: the steps decide what that means
                    batch = steps.throw(exc)
                else:
                    batch = steps.send(replies)
        except StopIteration as done:
            return done.value

    def _checked_steps(self, request: Frame, what: str) -> Steps[Frame]:
        (result,) = yield [request]
        if isinstance(result, DriverError):
            raise result
        if result.is_abnormal:
            raise result.refusal(what)
        return result

    def _raw_steps(self, di: int, prefetched: Prefetched) -> Steps[bytes]:
        """Value bytes of one DI, following follow-up frames.  A DI the poll's batch already asked for
        comes with the request that was sent, so the reply is checked against that frame rather than a
        rebuilt copy."""
        early = prefetched.pop(di, None)
        if early is None:
            request = commands.read_request(self.address, di, v1997=self._v1997)
            reply = yield from self._checked_steps(request, f"read {di:08X}")
        else:
            request, result = early
            if isinstance(result, DriverError):
                raise result
            if result.is_abnormal:
                raise result.refusal(f"read {di:08X}")
            reply = result
        payload = commands.reply_payload(request, reply)
        seq = 0
        while reply.has_follow_up and not self._v1997:
            seq += 1
            if seq > MAX_FOLLOW_UPS:
                raise BadFrame(
                    f"meter {self.address}: more than {MAX_FOLLOW_UPS} follow-up frames for {di:08X}"
                )
            follow = commands.follow_up_request(self.address, di, seq)
            reply = yield from self._checked_steps(follow, f"read follow-up {seq} of {di:08X}")
            payload += commands.reply_payload(follow, reply)
        return payload

    def _read_steps(self, points: Iterable[Point]) -> Steps[Reading]:
        wanted = list(dict.fromkeys(points))
        table = _V1997 if self._v1997 else _V2007
        taken_at = self._clock()
        values: dict[int, Any] = {}
        bad: dict[int, str] = {}  # DI -> why its value is unusable (optional points only)
        block = not self._v1997 and Point.ENERGY_IMPORT in wanted and Point.ENERGY_IMPORT_TARIFFS in wanted
        try:
            prefetched = yield from self._prefetch_steps(wanted, table, block)
            if block:
                values.update((yield from self._import_block_steps(prefetched)))
            for point in sorted(wanted, key=lambda p: p not in _REQUIRED):
                for di in table.get(point, ()):
                    if di in values:
                        continue
                    values[di] = yield from self._field_steps(di, point in _REQUIRED, bad, prefetched)
        except MeterTimeout as exc:
            return Reading(self.address, taken_at, Quality.TIMEOUT, error=str(exc))
        except BadFrame as exc:
            return Reading(self.address, taken_at, Quality.BAD_FRAME, error=str(exc))
        except MeterRefused as exc:
            return Reading(self.address, taken_at, Quality.REFUSED, error=str(exc))
        except DriverError as exc:
            return Reading(self.address, taken_at, Quality.TIMEOUT, error=str(exc))
        reading = self._assemble(taken_at, wanted, values)
        if not bad:
            return reading
        errors = {
            name: bad[di]
            for point in wanted
            for di in table.get(point, ())
            if di in bad
            for name in POINT_FIELDS[point]
        }
        return replace(reading, errors=errors)

    def _field_steps(self, di: int, required: bool, bad: dict[int, str], prefetched: Prefetched) -> Steps[Any]:
        """One DI's value; for an optional point, a refusal or an undecodable value is noted in ``bad``
        and gives ``None``, so the energy and the other fields still arrive (a meter that answers its
        date DI with ``00 00 00 00`` is still billed).  A timeout or a broken frame still fails the
        whole read: that is the line, not the field."""
        try:
            raw = yield from self._raw_steps(di, prefetched)
        except Dlt645Refused as exc:
            if required:
                raise
            if not exc.no_such_data:  # "no such data" is a meter without the point, not a fault
                bad[di] = str(exc)
            return None
        try:
            return dis.lookup(di, v1997=self._v1997).decode(raw)
        except FrameError as exc:  # the reply was a valid frame; its value bytes were not
            if required:
                raise
            bad[di] = str(exc)
            return None

    def _prefetch_steps(
        self, wanted: list[Point], table: dict[Point, tuple[int, ...]], block: bool
    ) -> Steps[Prefetched]:
        """Send a poll's read requests as one batch (one ``request_many``: one hand-off to the link's
        thread); ``_raw_steps`` takes the replies from here in the order it would have asked for them,
        so refusals, follow-ups and the one-by-one fallback behave exactly as with one request at a
        time.  The batch stops at the first error, so it may hold fewer replies than requests."""
        plan: list[int] = [dis.ENERGY_IMPORT_BLOCK] if block else []
        covered = set(_BLOCK_DIS) if block else set()
        for point in sorted(wanted, key=lambda p: p not in _REQUIRED):
            for di in table.get(point, ()):
                if di not in covered and di not in plan:
                    plan.append(di)
        if len(plan) < 2:
            return {}
        requests = [commands.read_request(self.address, di, v1997=self._v1997) for di in plan]
        replies = yield requests
        return {di: (req, reply) for di, req, reply in zip(plan, requests, replies, strict=False)}

    def _import_block_steps(self, prefetched: Prefetched) -> Steps[dict[int, Decimal]]:
        """Import total and T1..T4 in one exchange (DI 0001FF00), instead of five.

        On a 9600-baud bus a poll of total + tariffs + status then costs two frames, not six.  A meter
        that does not know the block answers "no such data" and the registers are read one by one.
        """
        try:
            raw = yield from self._raw_steps(dis.ENERGY_IMPORT_BLOCK, prefetched)
        except Dlt645Refused as exc:
            if exc.no_such_data:
                return {}
            raise
        fmt = dis.lookup(dis.ENERGY_IMPORT)
        if len(raw) < 4 or len(raw) % 4:
            raise BadFrame(f"meter {self.address}: import block of {len(raw)} bytes is not whole registers")
        registers = [fmt.decode(raw[i : i + 4]) for i in range(0, len(raw), 4)]
        out: dict[int, Decimal] = {dis.ENERGY_IMPORT: registers[0]}  # type: ignore[dict-item]
        for t, value in enumerate(registers[1:5], start=1):
            out[dis.energy_tariff(dis.ENERGY_IMPORT, t)] = value  # type: ignore[assignment]
        return out

    def _assemble(self, taken_at: datetime, wanted: list[Point], v: dict[int, Any]) -> Reading:
        t = _V1997 if self._v1997 else _V2007

        def one(point: Point) -> Any:
            dis_ = t.get(point, ())
            return v.get(dis_[0]) if dis_ and point in wanted else None

        def wh(value: Decimal | None) -> int | None:
            return None if value is None else dis.kwh_to_wh(value)

        tariffs = None
        if Point.ENERGY_IMPORT_TARIFFS in wanted and Point.ENERGY_IMPORT_TARIFFS in t:
            raw: list[Decimal] = [v[d] for d in t[Point.ENERGY_IMPORT_TARIFFS] if v.get(d) is not None]
            if len(raw) == len(t[Point.ENERGY_IMPORT_TARIFFS]):
                tariffs = tuple(dis.kwh_to_wh(x) for x in raw)
        meter_time = None
        if Point.METER_TIME in wanted and Point.METER_TIME in t:
            d, tm = (v.get(x) for x in t[Point.METER_TIME])
            meter_time = datetime.combine(d, tm) if d is not None and tm is not None else None
        status: dict[str, bool | int] = {}
        relay = None
        sw3 = v.get(dis.status_word(3))
        if sw3 is not None:
            if Point.STATUS in wanted:
                status.update(dis.decode_status3(sw3))
            if Point.RELAY in wanted:
                relay = RelayState.OPEN if sw3 & dis.SW3_RELAY_OPEN else RelayState.CLOSED
        money = None
        if Point.PREPAID_MONEY in wanted and not self._v1997:
            remaining, overdraft, count = (v.get(x) for x in t[Point.PREPAID_MONEY])
            if remaining is not None:
                # Balance as one signed amount: remaining money, or minus the overdraft in use.
                money = remaining - overdraft if overdraft else remaining
            if overdraft is not None:
                status["overdraft_money_cents"] = int(overdraft * 100)
            if count is not None:
                status["purchase_count"] = int(count)
        power = one(Point.POWER)
        return Reading(
            address=self.address,
            taken_at=taken_at,
            quality=Quality.OK,
            energy_import_wh=wh(one(Point.ENERGY_IMPORT)),
            energy_export_wh=wh(one(Point.ENERGY_EXPORT)),
            energy_import_tariffs_wh=tariffs,
            voltage_v=one(Point.VOLTAGE),
            current_a=one(Point.CURRENT),
            power_w=None if power is None else power.scaleb(3),
            frequency_hz=one(Point.FREQUENCY),
            power_factor=one(Point.POWER_FACTOR),
            meter_time=meter_time,
            relay=relay,
            status=status,
            prepaid_money=money,
        )

    # -- relay ------------------------------------------------------------------------------------
    async def read_status3(self) -> int:
        word = await self.read_value(dis.status_word(3))
        assert isinstance(word, int)
        return word

    async def read_relay(self) -> RelayState | None:
        word = await self.read_status3()
        return RelayState.OPEN if word & dis.SW3_RELAY_OPEN else RelayState.CLOSED

    def _meter_local(self, when: datetime) -> datetime:
        """Meters keep naive local time: convert an aware instant into the meter's zone."""
        if when.tzinfo is None:
            return when
        return when.astimezone(self._tz).replace(tzinfo=None)

    async def relay(self, action: RelayAction, deadline: datetime | None = None) -> RelayState | None:
        """Send 0x1C, then read status word 3 back and check the command took effect.

        ``deadline`` is the command's validity limit (meter-local if naive); by default ten minutes
        from now.  Raises ``MeterRefused`` on an abnormal reply (e.g. keep-power refusing a trip)
        and ``RelayNotConfirmed`` when the read-back disagrees with the command.
        """
        if self._v1997:
            raise NotControllable(f"meter {self.address}: DL/T 645-1997 has no relay control function")
        until = self._meter_local(
            deadline if deadline is not None else self._clock() + DEFAULT_RELAY_VALIDITY
        )
        request = commands.relay_request(self.address, action, until, self._security)
        await self._checked(request, f"relay {action.value}")
        word = await self.read_status3()
        state = RelayState.OPEN if word & dis.SW3_RELAY_OPEN else RelayState.CLOSED
        flags = dis.decode_status3(word)
        checks: dict[RelayAction, tuple[str, bool]] = {
            RelayAction.TRIP: ("relay_open", True),
            RelayAction.DIRECT_CLOSE: ("relay_open", False),
            RelayAction.CLOSE_PERMITTED: ("relay_command_trip", False),
            RelayAction.ALARM_ON: ("pre_trip_alarm", True),
            RelayAction.ALARM_OFF: ("pre_trip_alarm", False),
            RelayAction.KEEP_POWER_ON: ("keep_power", True),
            RelayAction.KEEP_POWER_OFF: ("keep_power", False),
        }
        key, want = checks[action]
        if flags[key] != want:
            raise RelayNotConfirmed(
                f"meter {self.address}: {action.value} acknowledged but status word 3 = {word:04X} "
                f"shows {key}={flags[key]}"
            )
        return state if action.expected_state is not None else None

    # -- other functions --------------------------------------------------------------------------
    async def write(self, di: int, data: bytes) -> None:
        """Write raw value bytes to a DI (function 14) with this meter's password and operator code."""
        request = commands.write_request(self.address, di, data, self._security)
        await self._checked(request, f"write {di:08X}")

    async def close(self) -> None:
        """Nothing to release: the link belongs to the bus worker."""


async def read_address(link: Dlt645Link) -> str:
    """Address of the single meter on the line (function 13, wildcard address)."""
    reply = await link.request(commands.read_address_request())
    if reply.is_abnormal:
        raise reply.refusal("read address")
    return commands.address_from_reply(reply)


async def broadcast_time(link: Dlt645Link, when: datetime) -> None:
    """Set every meter's clock (function 08, no reply).  ``when`` is the meters' local time (naive)."""
    if when.tzinfo is not None:
        raise ValueError("broadcast_time needs the meters' local wall time as a naive datetime")
    await link.send(commands.broadcast_time_request(when))


async def scan(
    link: Dlt645Link,
    addresses: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Addresses that answer on this bus; ``None`` asks the single meter on the line for its address.

    A meter counts as present if it sends any valid reply (an abnormal one too).  Each address
    gets one attempt without retries, so a scan of hundreds of absent addresses stays bounded.
    """
    if addresses is None:
        try:
            found = [await read_address(link)]
        except (MeterTimeout, BadFrame):
            found = []
        if progress:
            progress(1, 1)
        return found
    todo = [check_address(a) for a in addresses]
    found = []
    for i, address in enumerate(todo, start=1):
        try:
            await link.request(commands.read_request(address, dis.ENERGY_IMPORT), retries=0)
            found.append(address)
        except (MeterTimeout, BadFrame):
            pass
        if progress:
            progress(i, len(todo))
    return found
