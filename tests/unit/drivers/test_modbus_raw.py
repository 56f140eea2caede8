"""Each shipped profile against a plain pymodbus server holding raw registers written here.

No simulator code of ours is involved: the registers are the hex a datasheet (or a capture) shows,
so these tests catch a profile and its decoder agreeing with each other but not with the meter.
Float32 words are IEEE 754 single precision, high word first (Eastron and CHINT manuals).
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from support.modbus_fixtures import device, profile, raw_server, regs, run, with_link

from drivers.base import MeterRefused, Point, Quality, RelayAction, RelayNotConfirmed, RelayState
from drivers.modbus import ModbusLink, ModbusMeter
from drivers.modbus.profile import builtin_dir, load_profile

__all__ = ["raw_server"]  # fixture re-export (imported explicitly, no conftest)

ALL = list(Point)


def read_all(port: int, name: str, unit: int = 1) -> object:
    async def body(link: ModbusLink) -> object:
        return await ModbusMeter(link, unit, profile(name)).read(ALL)

    return run(with_link(f"tcp://127.0.0.1:{port}", body))


def test_sdm120_datasheet_registers(raw_server) -> None:
    port = raw_server([device(1, inputs=[
        regs(0x0000, 0x4366, 0x199A),  # 230.1 V
        regs(0x0006, 0x40A8, 0x0000),  # 5.25 A
        regs(0x000C, 0x449E, 0x599A),  # 1266.8 W
        regs(0x0046, 0x4247, 0xEB85, 0x449A, 0x51EC, 0x4148, 0x0000),  # 49.98 Hz, 1234.56 kWh, 12.5 kWh
    ])])
    r = read_all(port, "sdm120")
    assert r.quality is Quality.OK, r.error
    assert r.voltage_v == Decimal("230.1")
    assert r.current_a == Decimal("5.250")
    assert r.power_w == Decimal("1266.8")
    assert r.frequency_hz == Decimal("49.98")
    # float32 1234.56 is exactly 1234.56005859375 kWh = 1234560.05859375 Wh -> 1234560 (half-even)
    assert r.energy_import_wh == 1_234_560
    assert r.energy_export_wh == 12_500
    assert r.relay is None


def test_sdm630_datasheet_registers(raw_server) -> None:
    port = raw_server([device(7, inputs=[
        regs(0x0000, 0x4371, 0x4CCD),  # L1 241.3 V
        regs(0x0006, 0x40A8, 0x0000),  # L1 5.25 A
        regs(0x0034, 0x449E, 0x599A),  # total 1266.8 W
        regs(0x0048, 0x47C0, 0xE6B7),  # 98765.43 kWh -> float32 98765.4296875
    ])])
    r = read_all(port, "sdm630", unit=7)
    assert r.quality is Quality.OK, r.error
    assert (r.voltage_v, r.current_a, r.power_w) == (Decimal("241.3"), Decimal("5.250"), Decimal("1266.8"))
    assert r.energy_import_wh == 98_765_430  # 98765429.6875 Wh rounded half-even
    assert r.address == "7"


def test_ddsu666_datasheet_registers(raw_server) -> None:
    port = raw_server([device(1, inputs=[
        regs(0x2000, 0x435C, 0x8000, 0x3FC0, 0x0000, 0x3EA8, 0xF5C3),  # 220.5 V, 1.5 A, 0.33 kW
        regs(0x200A, 0x3F7F, 0x7CEE),  # PF 0.998
        regs(0x200E, 0x4247, 0xEB85),  # 49.98 Hz
        regs(0x4000, 0x459C, 0x4200),  # 5000.25 kWh (exact in float32)
        regs(0x400A, 0x4148, 0x0000),  # 12.5 kWh
    ])])
    r = read_all(port, "ddsu666")
    assert r.quality is Quality.OK, r.error
    assert r.voltage_v == Decimal("220.5")
    assert r.current_a == Decimal("1.500")
    assert r.power_w == Decimal("330.0")  # kW x 1000, at 0.1 W
    assert r.power_factor == Decimal("0.998")
    assert r.frequency_hz == Decimal("49.98")
    assert (r.energy_import_wh, r.energy_export_wh) == (5_000_250, 12_500)


def test_dds238_datasheet_registers_and_relay(raw_server) -> None:
    port = raw_server([device(3, holding=[
        regs(0x0000, 0x0001, 0xE240),  # 123456 x 0.01 kWh
        regs(0x000C, 2305, 512, 0xFF88),  # 230.5 V, 5.12 A, -120 W (s16: exporting)
        regs(0x001A, 1),  # relay on
    ])])

    async def body(link: ModbusLink) -> tuple[object, RelayState | None, RelayState | None]:
        meter = ModbusMeter(link, 3, profile("dds238"))
        reading = await meter.read(ALL)
        tripped = await meter.relay(RelayAction.TRIP)  # plain server stores the 0 written with FC16
        return reading, tripped, await meter.read_relay()

    r, tripped, after = run(with_link(f"tcp://127.0.0.1:{port}", body))
    assert r.quality is Quality.OK, r.error
    assert r.energy_import_wh == 1_234_560
    assert (r.voltage_v, r.current_a, r.power_w) == (Decimal("230.5"), Decimal("5.12"), Decimal(-120))
    assert r.relay is RelayState.CLOSED
    assert tripped is RelayState.OPEN and after is RelayState.OPEN


GAPPY = """
[meter]
name = "test: three float32 points in one block"
[points.voltage]
register = 0
function = 4
type = "float32"
unit = "V"
decimals = 1
[points.current]
register = 2
function = 4
type = "float32"
unit = "A"
decimals = 2
[points.power]
register = 4
function = 4
type = "float32"
unit = "W"
decimals = 0
[points.energy_import]
register = 6
function = 4
type = "float32"
unit = "kWh"
"""


def test_exception_in_block_splits_and_keeps_other_registers(raw_server, tmp_path: Path) -> None:
    (tmp_path / "gappy.toml").write_text(GAPPY)
    prof = load_profile(str(tmp_path / "gappy.toml"))
    # registers 2-3 (current) are not implemented: the 8-register block gets "illegal data address"
    port = raw_server([device(1, inputs=[regs(0, 0x4366, 0x199A), regs(4, 0x449E, 0x599A, 0x4148, 0x0000)])])

    async def body(link: ModbusLink) -> tuple[object, int]:
        reading = await ModbusMeter(link, 1, prof).read(ALL)
        return reading, link.stats.requests

    r, requests = run(with_link(f"tcp://127.0.0.1:{port}", body))
    assert r.quality is Quality.OK  # the billing point was read
    assert r.voltage_v == Decimal("230.1") and r.power_w == Decimal(1267) and r.energy_import_wh == 12_500
    assert r.current_a is None
    assert r.error is not None and r.error.startswith("current:") and "illegal data address" in r.error
    assert requests == 5  # whole block, halves [V,I] and [P,E], then [V] and [I]


def test_refused_energy_spoils_the_reading(raw_server, tmp_path: Path) -> None:
    (tmp_path / "gappy.toml").write_text(GAPPY)
    prof = load_profile(str(tmp_path / "gappy.toml"))
    port = raw_server([device(1, inputs=[regs(0, 0x4366, 0x199A, 0x40A8, 0, 0x449E, 0x599A)])])

    r = run(with_link(f"tcp://127.0.0.1:{port}", lambda link: ModbusMeter(link, 1, prof).read(ALL)))
    assert r.quality is Quality.REFUSED and not r.chargeable
    assert r.energy_import_wh is None and r.voltage_v == Decimal("230.1")


def test_relay_mismatch_is_not_confirmed(raw_server, tmp_path: Path) -> None:
    text = (builtin_dir() / "dds238.toml").read_text()
    (tmp_path / "split.toml").write_text(text.replace("[relay.state]\nfunction = 3\nregister = 0x001A",
                                                      "[relay.state]\nfunction = 3\nregister = 0x001B"))
    prof = load_profile(str(tmp_path / "split.toml"))
    assert prof.relay is not None and prof.relay.state.address == 0x1B
    # state register 0x1B stays 1 (closed) whatever is written to the command register 0x1A
    port = raw_server([device(1, holding=[regs(0x0000, 0, 0), regs(0x000C, 0, 0, 0), regs(0x001A, 1, 1)])])

    with pytest.raises(RelayNotConfirmed, match="unit 1: relay reads closed after trip"):
        run(with_link(f"tcp://127.0.0.1:{port}", lambda link: ModbusMeter(link, 1, prof).relay(RelayAction.TRIP)))


def test_exception_reply_is_typed_with_its_code(raw_server) -> None:
    port = raw_server([device(1, holding=[regs(0x0000, 1)])])

    async def body(link: ModbusLink) -> None:
        await link.read_registers(1, 3, 0x0010, 2)

    with pytest.raises(MeterRefused, match=r"unit 1: FC03 @0x0010: exception 0x02 \(illegal data address\)") as err:
        run(with_link(f"tcp://127.0.0.1:{port}", body))
    assert err.value.code == 2


def test_unknown_relay_value_is_implausible_not_a_state(raw_server) -> None:
    port = raw_server([device(1, holding=[regs(0x0000, 0, 10), regs(0x000C, 0, 0, 0), regs(0x001A, 7)])])
    r = run(with_link(f"tcp://127.0.0.1:{port}", lambda link: ModbusMeter(link, 1, profile("dds238")).read()))
    assert r.quality is Quality.IMPLAUSIBLE and r.relay is None
    assert r.energy_import_wh == 100
    assert r.error == "relay: unit 1: relay register holds 7, expected closed=1 or open=0"
