"""A Modbus energy meter as the gateway sees it: typed readings and a confirmed relay.

The meter is its profile plus a unit id on a link it does not own.  Readings come out exactly like
the DL/T 645 driver's (integer Wh, Decimal volts/amps/watts, a quality flag), so billing and
enforcement do not care which protocol a meter speaks.

Quality of a read: a timeout, a broken bus or a garbled frame spoils the whole conversation (no
numbers at all).  An exception reply spoils only the registers it covers: the block is split so
the others are still read.  The reading is ``OK`` when every billing point asked for (import energy,
relay) was read; a refused or implausible secondary point is left ``None`` and named in ``error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from drivers.base import (
    BILLING_POINTS,
    ENERGY_POINTS,
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
from drivers.modbus.blocks import Block, Item, plan
from drivers.modbus.codec import CodecError, quantize, scaled, to_wh
from drivers.modbus.link import LinkError, ModbusLink
from drivers.modbus.profile import PointSpec, Profile


class RelayValueUnknown(BadFrame):
    """The relay register holds neither the profile's closed nor its open value."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def convert(point: Point, spec: PointSpec, registers: list[int]) -> int | Decimal:
    """Registers of one point to the Reading's unit: integer Wh for energy, Decimal otherwise.

    Raises ``CodecError`` for values that must not be used (NaN, infinity, negative energy).
    """
    value = scaled(registers, spec.type, spec.word_order, spec.scale) * Profile.factor(point, spec.unit)
    if point in ENERGY_POINTS:
        if value < 0:
            raise CodecError(f"negative energy {value}")
        return to_wh(value)
    if spec.decimals is not None:
        return quantize(value, spec.decimals)
    return value


class ModbusMeter:
    """One unit id on a Modbus link, read and commanded through its profile."""

    def __init__(
        self, link: ModbusLink, unit: int, profile: Profile, *, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"Modbus unit id {unit} is outside 1..247")
        self.link = link
        self.unit = unit
        self.profile = profile
        self.address = str(unit)
        self._clock = clock

    def __repr__(self) -> str:
        return f"ModbusMeter({self.link.url!r}, unit={self.unit}, profile={self.profile.name!r})"

    @property
    def controllable(self) -> bool:
        return self.profile.relay is not None

    # -- reading -------------------------------------------------------------------------------
    async def read(self, points: Iterable[Point] = BILLING_POINTS) -> Reading:
        wanted = set(points)
        taken_at = self._clock()
        items = [
            Item(p, spec.function, spec.address, spec.count)
            for p in sorted(wanted)
            if (spec := self.profile.point(p)) is not None
        ]
        values: dict[str, Any] = {}
        problems: dict[Point, tuple[Quality, str]] = {}
        try:
            for block in plan(items, self.profile.max_block, self.profile.max_gap):
                await self._read_block(block, values, problems)
            if Point.RELAY in wanted and self.profile.relay is not None:
                try:
                    values["relay"] = await self.read_relay()
                except MeterRefused as exc:
                    problems[Point.RELAY] = (Quality.REFUSED, str(exc))
                except RelayValueUnknown as exc:
                    problems[Point.RELAY] = (Quality.IMPLAUSIBLE, str(exc))
        except (MeterTimeout, LinkError) as exc:
            return Reading(self.address, taken_at, Quality.TIMEOUT, error=str(exc))
        except BadFrame as exc:
            return Reading(self.address, taken_at, Quality.BAD_FRAME, error=str(exc))
        quality = Quality.OK
        for p in (Point.ENERGY_IMPORT, Point.RELAY):
            if p in problems:
                quality = problems[p][0]
                break
        error = "; ".join(f"{p.value}: {msg}" for p, (_, msg) in sorted(problems.items())) or None
        if quality is not Quality.OK:
            return Reading(self.address, taken_at, quality, error=error, **values)
        # Only optional points were bad: the reading stands, each bad field named with its error.
        errors = {name: msg for p, (_, msg) in sorted(problems.items()) for name in POINT_FIELDS[p]}
        return Reading(self.address, taken_at, quality, error=error, errors=errors, **values)

    async def _read_block(
        self, block: Block[Point], values: dict[str, Any], problems: dict[Point, tuple[Quality, str]]
    ) -> None:
        try:
            regs = await self.link.read_registers(self.unit, block.function, block.address, block.count)
        except MeterRefused as exc:
            if len(block.items) > 1:
                for half in block.split():
                    await self._read_block(half, values, problems)
                return
            problems[block.items[0].key] = (Quality.REFUSED, str(exc))
            return
        for item in block.items:
            spec = self.profile.point(item.key)
            assert spec is not None
            offset = item.address - block.address
            try:
                values[POINT_FIELDS[item.key][0]] = convert(item.key, spec, regs[offset : offset + item.count])
            except CodecError as exc:
                problems[item.key] = (Quality.IMPLAUSIBLE, f"unit {self.unit} @{item.address:#06x}: {exc}")

    async def read_relay(self) -> RelayState | None:
        """The relay as the meter reports it; ``None`` when the profile has no relay."""
        relay = self.profile.relay
        if relay is None:
            return None
        st = relay.state
        if st.function in (1, 2):
            raw = int((await self.link.read_bits(self.unit, st.function, st.address, 1))[0])
        else:
            raw = (await self.link.read_registers(self.unit, st.function, st.address, 1))[0]
        if raw == st.closed:
            return RelayState.CLOSED
        if raw == st.open:
            return RelayState.OPEN
        raise RelayValueUnknown(
            f"unit {self.unit}: relay register holds {raw}, expected closed={st.closed} or open={st.open}"
        )

    # -- relay -----------------------------------------------------------------------------------
    async def relay(self, action: RelayAction, deadline: datetime | None = None) -> RelayState | None:
        """Write the relay command, then read the relay back; the read-back decides.

        Modbus carries no validity deadline, so ``deadline`` is only checked before sending: an
        expired command is not sent.  A write that timed out may still have been executed, so the
        relay is read back anyway and a matching state counts as success.
        """
        relay = self.profile.relay
        if relay is None:
            raise NotControllable(f"unit {self.unit} ({self.profile.meter.name}): profile has no relay")
        if action is RelayAction.TRIP:
            value, expected = relay.command.trip, RelayState.OPEN
        elif action in (RelayAction.DIRECT_CLOSE, RelayAction.CLOSE_PERMITTED):
            value, expected = relay.command.close, RelayState.CLOSED
        else:
            raise NotControllable(f"unit {self.unit}: {action.value} is not available over Modbus")
        if deadline is not None and self._clock() > deadline:
            raise RelayNotConfirmed(f"unit {self.unit}: {action.value} not sent, deadline {deadline} passed")
        cmd = relay.command
        write_error: DriverError | None = None
        try:
            if cmd.function in (5, 15):
                await self.link.write_coil(self.unit, cmd.function, cmd.address, bool(value))
            else:
                await self.link.write_registers(self.unit, cmd.function, cmd.address, [value])
        except MeterTimeout as exc:
            write_error = exc
        if relay.settle_s:
            await asyncio.sleep(relay.settle_s)
        try:
            state = await self.read_relay()
        except DriverError:
            if write_error is not None:
                raise write_error from None
            raise
        if state is not expected:
            detail = f" (write: {write_error})" if write_error else ""
            raise RelayNotConfirmed(
                f"unit {self.unit}: relay reads {state.value if state else 'nothing'} after {action.value}{detail}"
            )
        return state

    async def close(self) -> None:
        """Nothing to release: the link belongs to the bus worker."""
