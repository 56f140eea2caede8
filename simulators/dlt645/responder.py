"""What a simulated DL/T 645 meter answers: a function of its ``MeterModel`` and one request frame.

Values are encoded with the driver's own DI table, so a codec bug could hide on both sides; the
protocol-document vectors and the interoperability test against the independent ``dlt645``
package guard against that.  Faults that change bytes or timing are applied by the bus, not here,
except ``ABNORMAL_REPLY`` (an answer in its own right) and ``STUCK_RELAY`` (the model's business).
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from decimal import Decimal

from drivers.base import RelayAction
from drivers.dlt645 import commands
from drivers.dlt645 import di as dis
from drivers.dlt645.frame import (
    ABNORMAL,
    BROADCAST,
    DIR_REPLY,
    FOLLOW_UP,
    ErrorFlags,
    Frame,
    FrameError,
    Function,
    address_to_bytes,
)
from simulators.model import REGISTER_MODULUS_WH, Fault, MeterModel

BLOCK_IMPORT = dis.ENERGY_IMPORT_BLOCK  # forward active total + T1..T4 in one reply
MAX_BLOCK_BYTES = 196  # L ≤ 200 for reads: the DI and the values must fit one frame


def _kwh(wh: int) -> Decimal:
    """Register value in kWh at 0.01 kWh resolution, truncating (meters count whole steps)."""
    return Decimal((wh % REGISTER_MODULUS_WH) // 10).scaleb(-2)


def value_of(model: MeterModel, di: int, *, v1997: bool = False) -> Decimal | int | object | None:
    """The model's value for a DI, or None when this meter has no such data."""
    now: datetime = model.meter_time()
    if v1997:
        values_97: dict[int, object] = {
            0x9010: _kwh(model.energy_import_wh),
            0x9020: _kwh(model.energy_export_wh),
            0xB611: Decimal(model.voltage_dv // 10),
            0xB621: Decimal(model.current_ma() // 10).scaleb(-2),
            0xB630: Decimal(model.power_w()).scaleb(-3),
            0xC010: now.date(),
            0xC011: now.time().replace(microsecond=0),
        }
        return values_97.get(di)
    tariffs = model.tariff_wh()
    if di == dis.ENERGY_IMPORT:
        return _kwh(model.energy_import_wh)
    if di == dis.ENERGY_EXPORT:
        return _kwh(model.energy_export_wh)
    if di == dis.ENERGY_COMBINED:
        return _kwh(model.energy_import_wh + model.energy_export_wh)
    for t in range(1, 5):
        if di == dis.energy_tariff(dis.ENERGY_IMPORT, t):
            return _kwh(tariffs[t - 1])
    money = model.prepaid_money_cents
    simple: dict[int, object] = {
        dis.VOLTAGE_A: model.voltage_v,
        dis.CURRENT_A: Decimal(model.current_ma()).scaleb(-3),
        dis.POWER_TOTAL: Decimal(model.power_w()).scaleb(-3),
        dis.FREQUENCY: Decimal(model.frequency_chz).scaleb(-2),
        dis.POWER_FACTOR_TOTAL: Decimal("1.000"),
        dis.DATE: now.date(),
        dis.TIME: now.time().replace(microsecond=0),
        dis.status_word(3): status_word3(model),
    }
    if di in simple:
        return simple[di]
    identity: dict[int, object] = {
        dis.COMM_ADDRESS: model.address,
        dis.METER_NUMBER: model.meter_number,
        dis.ASSET_NUMBER: model.asset_number,
        dis.METER_MODEL: model.model_name,
    }
    if di in identity:
        return identity[di]
    if dis.status_word(1) <= di <= dis.status_word(7):
        return 0
    if money is not None:
        prepaid: dict[int, object] = {
            dis.REMAINING_MONEY: Decimal(max(0, money)).scaleb(-2),
            dis.OVERDRAFT_MONEY: Decimal(max(0, -money)).scaleb(-2),
            dis.PURCHASE_COUNT: Decimal(model.purchase_count),
        }
        return prepaid.get(di)
    return None


def status_word3(model: MeterModel) -> int:
    word = 0
    if not model.relay_closed:
        word |= dis.SW3_RELAY_OPEN
    if model.relay_command_trip:
        word |= dis.SW3_RELAY_COMMAND_TRIP
    if model.pre_trip_alarm:
        word |= dis.SW3_PRE_TRIP_ALARM
    if model.prepaid_money_cents is not None:
        word |= 0b10 << dis.SW3_METER_TYPE_SHIFT  # money-prepaid meter
    if model.keep_power:
        word |= dis.SW3_KEEP_POWER
    return word


def abnormal(request: Frame, address: str, flags: ErrorFlags) -> Frame:
    return Frame(address, DIR_REPLY | ABNORMAL | request.function, bytes([int(flags)]))


def respond(model: MeterModel, request: Frame) -> list[Frame]:
    """Reply frames for one request addressed to this meter (empty for broadcasts).

    Most requests get one frame; a block read gets its first part here and the rest on 0x12
    follow-up requests, which are also answered here from the same state.
    """
    if request.address == BROADCAST or request.function == Function.BROADCAST_TIME:
        if request.function == Function.BROADCAST_TIME:
            with contextlib.suppress(FrameError):
                model.set_time(dis.decode_datetime6(request.data))
        return []
    me = model.address
    if model.has(Fault.ABNORMAL_REPLY):
        return [abnormal(request, me, ErrorFlags.OTHER)]
    try:
        return [_answer(model, request)]
    except FrameError:
        return [abnormal(request, me, ErrorFlags.OTHER)]


def _answer(model: MeterModel, request: Frame) -> Frame:
    me = model.address
    fn = request.function
    if fn == Function.READ_ADDRESS:
        return Frame(me, DIR_REPLY | fn, address_to_bytes(me))
    if fn in (Function.READ, Function.V97_READ):
        v1997 = fn == Function.V97_READ
        di_len = 2 if v1997 else 4
        if len(request.data) < di_len:
            return abnormal(request, me, ErrorFlags.OTHER)
        di = int.from_bytes(request.data[:di_len], "little")
        if di == BLOCK_IMPORT and not v1997:
            return _block_part(model, request, 0)
        value = value_of(model, di, v1997=v1997)
        if value is None:
            return abnormal(request, me, ErrorFlags.NO_SUCH_DATA)
        fmt = dis.lookup(di, v1997=v1997)
        return Frame(me, DIR_REPLY | fn, request.data[:di_len] + fmt.encode(value))  # type: ignore[arg-type]
    if fn == Function.READ_FOLLOW_UP:
        if len(request.data) != 5 or int.from_bytes(request.data[:4], "little") != BLOCK_IMPORT:
            return abnormal(request, me, ErrorFlags.NO_SUCH_DATA)
        return _block_part(model, request, request.data[4])
    if fn == Function.WRITE:
        return _write(model, request)
    if fn == Function.RELAY:
        return _relay(model, request)
    return abnormal(request, me, ErrorFlags.OTHER)


def _block_part(model: MeterModel, request: Frame, seq: int) -> Frame:
    fmt = dis.lookup(dis.ENERGY_IMPORT)
    values = [model.energy_import_wh, *model.tariff_wh()]
    payload = b"".join(fmt.encode(_kwh(v)) for v in values)
    chunk = model.block_chunk or MAX_BLOCK_BYTES  # real meters answer a short block in one frame
    part = payload[seq * chunk : (seq + 1) * chunk]
    more = (seq + 1) * chunk < len(payload)
    control = DIR_REPLY | (FOLLOW_UP if more else 0) | request.function
    tail = bytes([seq]) if request.function == Function.READ_FOLLOW_UP else b""
    return Frame(model.address, control, request.data[:4] + part + tail)


def _password_ok(model: MeterModel, raw: bytes) -> bool:
    try:
        return commands.bcd_to_digits(raw) == model.password
    except FrameError:
        return False


def _write(model: MeterModel, request: Frame) -> Frame:
    me, d = model.address, request.data
    if len(d) < 12:
        return abnormal(request, me, ErrorFlags.OTHER)
    if not _password_ok(model, d[5:8]):
        return abnormal(request, me, ErrorFlags.UNAUTHORISED)
    di, value = int.from_bytes(d[:4], "little"), d[12:]
    now = model.meter_time()
    if di == dis.DATE:
        new = dis.lookup(di).decode(value)
        model.set_time(datetime.combine(new, now.time()))  # type: ignore[arg-type]
    elif di == dis.TIME:
        new_t = dis.lookup(di).decode(value)
        model.set_time(datetime.combine(now.date(), new_t))  # type: ignore[arg-type]
    elif di == dis.REMAINING_MONEY and model.prepaid_money_cents is not None:
        model.prepaid_money_cents = int(dis.lookup(di).decode(value) * 100)  # type: ignore[operator]
    else:
        return abnormal(request, me, ErrorFlags.OTHER)
    return Frame(me, DIR_REPLY | request.function)


def _relay(model: MeterModel, request: Frame) -> Frame:
    me = model.address
    cmd = commands.parse_relay_request(request)
    if cmd.password != model.password:
        return abnormal(request, me, ErrorFlags.UNAUTHORISED)
    if cmd.deadline < model.meter_time():
        return abnormal(request, me, ErrorFlags.OTHER)  # command validity expired
    action = cmd.action
    if action is RelayAction.TRIP:
        if not model.trip():
            return abnormal(request, me, ErrorFlags.OTHER)  # keep-power (保电) refuses a trip
    elif action is RelayAction.DIRECT_CLOSE:
        model.close(direct=True)
    elif action is RelayAction.CLOSE_PERMITTED:
        model.close(direct=False)
    elif action in (RelayAction.ALARM_ON, RelayAction.ALARM_OFF):
        model.pre_trip_alarm = action is RelayAction.ALARM_ON
    else:
        model.keep_power = action is RelayAction.KEEP_POWER_ON
    return Frame(me, DIR_REPLY | request.function)
