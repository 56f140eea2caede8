"""Dlt645Meter against simulated meters on real ptys and TCP sockets, and against the ``dlt645`` package."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from support.dlt645_fixtures import ManualClock, count_hand_offs, run_async, scripted, sim_bus  # noqa: F401  (fixture)

from drivers.base import (
    Meter,
    MeterRefused,
    NotControllable,
    Point,
    Quality,
    RelayAction,
    RelayNotConfirmed,
    RelayState,
)
from drivers.dlt645 import Dlt645Link, Dlt645Meter, broadcast_time, read_address, scan
from drivers.dlt645.frame import Frame, address_to_bytes, encode
from simulators.dlt645 import make_models
from simulators.model import Fault

CST = timezone(timedelta(hours=8))  # the simulated meters keep UTC+8 local time


def fast_link(url: str, **kw: object) -> Dlt645Link:
    opts: dict[str, object] = {"timeout_s": 0.3, "retries": 1, "backoff_s": 0.0, "inter_frame_gap_s": 0.0}
    opts.update(kw)
    return Dlt645Link(url, **opts)  # type: ignore[arg-type]


def meter(link: Dlt645Link, address: str = "000000000001", **kw: object) -> Dlt645Meter:
    return Dlt645Meter(link, address, tz=CST, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["pty", "tcp"])
@run_async
async def test_read_every_point_gives_exact_typed_values(sim_bus, transport: str) -> None:  # noqa: F811
    clock = ManualClock()
    models = make_models(2, clock=clock, power_w=500)
    models[0].prepaid_money_cents = 12_345
    models[0].purchase_count = 7
    bus = sim_bus(models)
    url = bus.start_pty() if transport == "pty" else f"socket://127.0.0.1:{bus.start_tcp()}"
    models[0].energy_import_wh  # start accumulating from now  # noqa: B018
    clock.advance(3 * 3600)
    async with fast_link(url) as link:
        r = await meter(link).read(list(Point))
    assert r.quality is Quality.OK and r.error is None
    assert r.energy_import_wh == 1500  # 500 W for 3 h
    assert r.energy_export_wh == 0
    assert r.energy_import_tariffs_wh is not None and sum(r.energy_import_tariffs_wh) == 1500
    assert r.voltage_v == Decimal("220.0") and r.frequency_hz == Decimal("50.00")
    assert r.current_a == Decimal("2.272") and r.power_w == Decimal("500.0")
    assert r.power_factor == Decimal("1.000")
    assert r.meter_time == models[0].meter_time().replace(microsecond=0)
    assert r.relay is RelayState.CLOSED
    assert r.status["relay_open"] is False and r.status["meter_type"] == 2
    assert r.prepaid_money == Decimal("123.45")
    assert r.status["purchase_count"] == 7 and r.status["overdraft_money_cents"] == 0
    assert r.chargeable


@run_async
async def test_optional_point_missing_is_none_but_reading_ok(sim_bus) -> None:  # noqa: F811
    bus = sim_bus(make_models(1))  # not a prepaid meter: 00900200 is "no such data"
    async with fast_link(bus.start_pty()) as link:
        r = await meter(link).read([Point.ENERGY_IMPORT, Point.PREPAID_MONEY])
    assert r.quality is Quality.OK and r.prepaid_money is None and r.energy_import_wh == 0


@run_async
async def test_overdraft_makes_balance_negative(sim_bus) -> None:  # noqa: F811
    models = make_models(1)
    models[0].prepaid_money_cents = -500
    async with fast_link(sim_bus(models).start_pty()) as link:
        r = await meter(link).read([Point.PREPAID_MONEY])
    assert r.prepaid_money == Decimal("-5.00") and r.status["overdraft_money_cents"] == 500


@pytest.mark.parametrize(
    ("fault", "quality", "message"),
    [
        (Fault.NO_ANSWER, Quality.TIMEOUT, "no answer"),
        (Fault.LATE_ANSWER, Quality.TIMEOUT, "no answer"),
        (Fault.BAD_CHECKSUM, Quality.BAD_FRAME, "no valid reply"),
        (Fault.TRUNCATED, Quality.BAD_FRAME, "no valid reply"),
        (Fault.ABNORMAL_REPLY, Quality.REFUSED, "refused read 00010000: other"),
    ],
)
@run_async
async def test_billing_point_failure_fails_the_reading_with_no_numbers(
    sim_bus,  # noqa: F811
    fault: Fault,
    quality: Quality,
    message: str,
) -> None:
    models = make_models(1)
    models[0].faults.add(fault)
    models[0].late_answer_s = 0.5
    async with fast_link(sim_bus(models).start_pty(), timeout_s=0.2, retries=0) as link:
        r = await meter(link).read([Point.ENERGY_IMPORT, Point.VOLTAGE])
    assert r.quality is quality and message in (r.error or "")
    assert r.energy_import_wh is None and r.voltage_v is None and not r.chargeable


@run_async
async def test_garbage_before_the_reply_is_skipped(sim_bus) -> None:  # noqa: F811
    models = make_models(1)
    models[0].faults.add(Fault.GARBAGE)
    async with fast_link(sim_bus(models).start_pty(), retries=0) as link:
        r = await meter(link).read()
    assert r.quality is Quality.OK and r.relay is RelayState.CLOSED


@run_async
async def test_trip_and_close_are_confirmed_by_read_back_and_stop_energy(sim_bus) -> None:  # noqa: F811
    clock = ManualClock()
    models = make_models(1, clock=clock, power_w=1000)
    model = models[0]
    async with fast_link(sim_bus(models).start_pty()) as link:
        m = meter(link, clock=lambda: datetime.fromtimestamp(clock(), UTC))
        assert await m.relay(RelayAction.TRIP) is RelayState.OPEN
        assert not model.relay_closed and await m.read_relay() is RelayState.OPEN
        before = (await m.read()).energy_import_wh
        clock.advance(3600)
        assert (await m.read()).energy_import_wh == before  # open relay: no consumption
        assert await m.relay(RelayAction.DIRECT_CLOSE) is RelayState.CLOSED
        clock.advance(3600)
        assert (await m.read()).energy_import_wh == before + 1000


@run_async
async def test_close_permitted_waits_for_the_button(sim_bus) -> None:  # noqa: F811
    models = make_models(1)
    async with fast_link(sim_bus(models).start_pty()) as link:
        m = meter(link)
        await m.relay(RelayAction.TRIP)
        assert await m.relay(RelayAction.CLOSE_PERMITTED) is None
        assert await m.read_relay() is RelayState.OPEN
        models[0].press_button()
        assert await m.read_relay() is RelayState.CLOSED


@run_async
async def test_keep_power_refuses_a_trip(sim_bus) -> None:  # noqa: F811
    models = make_models(1)
    async with fast_link(sim_bus(models).start_pty()) as link:
        m = meter(link)
        assert await m.relay(RelayAction.KEEP_POWER_ON) is None
        assert models[0].keep_power
        with pytest.raises(MeterRefused, match="refused relay trip"):
            await m.relay(RelayAction.TRIP)
        assert models[0].relay_closed
        await m.relay(RelayAction.KEEP_POWER_OFF)
        assert await m.relay(RelayAction.TRIP) is RelayState.OPEN


@run_async
async def test_stuck_relay_is_not_confirmed(sim_bus) -> None:  # noqa: F811
    models = make_models(1)
    models[0].faults.add(Fault.STUCK_RELAY)
    async with fast_link(sim_bus(models).start_pty()) as link:
        with pytest.raises(RelayNotConfirmed, match="trip acknowledged but status word 3"):
            await meter(link).relay(RelayAction.TRIP)


@run_async
async def test_alarm_on_off_is_confirmed(sim_bus) -> None:  # noqa: F811
    models = make_models(1)
    async with fast_link(sim_bus(models).start_pty()) as link:
        m = meter(link)
        await m.relay(RelayAction.ALARM_ON)
        assert models[0].pre_trip_alarm
        await m.relay(RelayAction.ALARM_OFF)
        assert not models[0].pre_trip_alarm


@run_async
async def test_wrong_password_and_expired_deadline_are_refused(sim_bus) -> None:  # noqa: F811
    models = make_models(1)
    async with fast_link(sim_bus(models).start_pty()) as link:
        with pytest.raises(MeterRefused, match="unauthorised"):
            await meter(link, password="123456").relay(RelayAction.TRIP)
        past = datetime.now(UTC) - timedelta(minutes=1)
        with pytest.raises(MeterRefused, match="other"):
            await meter(link).relay(RelayAction.TRIP, past)
        with pytest.raises(MeterRefused, match="unauthorised"):
            await meter(link, password="123456").write(0x04000102, bytes([0, 0, 0x12]))
    assert models[0].relay_closed


@run_async
async def test_write_time_and_broadcast_time_set_meter_clocks(sim_bus) -> None:  # noqa: F811
    clock = ManualClock()
    models = make_models(3, clock=clock)
    async with fast_link(sim_bus(models).start_pty()) as link:
        await broadcast_time(link, datetime(2026, 3, 4, 5, 6, 7))
        r = await meter(link, "000000000002").read([Point.METER_TIME])
        assert r.meter_time == datetime(2026, 3, 4, 5, 6, 7)
        assert all(m.meter_time() == datetime(2026, 3, 4, 5, 6, 7) for m in models)
        await meter(link, "000000000003").write(0x04000102, bytes([0x00, 0x30, 0x12]))  # 12:30:00
        assert models[2].meter_time() == datetime(2026, 3, 4, 12, 30, 0)
    with pytest.raises(ValueError, match="naive"):
        await broadcast_time(link, datetime.now(UTC))


@run_async
async def test_follow_up_frames_are_joined(sim_bus) -> None:  # noqa: F811
    clock = ManualClock()
    models = make_models(1, clock=clock)
    models[0].block_chunk = 12  # this meter splits the block: forces the 0x12 follow-up path
    models[0].energy_import_wh  # noqa: B018
    clock.advance(7200)
    async with fast_link(sim_bus(models).start_pty()) as link:
        raw = await meter(link).read_raw(0x0001FF00)  # total + T1..T4, split over 0x11 + 0x12 frames
    assert len(raw) == 20
    assert raw[:4] == bytes.fromhex("00 01 00 00")  # 1.00 kWh


@run_async
async def test_scan_and_read_address(sim_bus) -> None:  # noqa: F811
    bus = sim_bus(make_models(3, start_address=10))
    seen: list[tuple[int, int]] = []
    async with fast_link(bus.start_pty(), timeout_s=0.1) as link:
        wanted = [f"{i:012d}" for i in range(9, 14)]
        found = await scan(link, wanted, lambda done, total: seen.append((done, total)))
        assert found == ["000000000010", "000000000011", "000000000012"]
        assert seen[-1] == (5, 5) and len(seen) == 5
        with pytest.raises(ValueError, match="12 decimal digits"):
            await scan(link, ["12"])
    single = sim_bus(make_models(1, start_address=161))
    async with fast_link(single.start_pty()) as link:
        assert await read_address(link) == "000000000161"
        assert await scan(link, None) == ["000000000161"]


@run_async
async def test_dlt645_1997_meter(sim_bus) -> None:  # noqa: F811
    clock = ManualClock()
    models = make_models(1, clock=clock, power_w=2000)
    models[0].energy_import_wh  # noqa: B018
    clock.advance(1800)
    async with fast_link(sim_bus(models).start_pty()) as link:
        m = meter(link, protocol_version="1997")
        r = await m.read([Point.ENERGY_IMPORT, Point.VOLTAGE, Point.POWER, Point.METER_TIME])
    assert r.quality is Quality.OK and r.energy_import_wh == 1000
    assert r.voltage_v == Decimal(220) and r.power_w == Decimal("2000.0")
    assert r.meter_time == models[0].meter_time().replace(microsecond=0)
    with pytest.raises(NotControllable, match="1997"):
        await m.relay(RelayAction.TRIP)


def test_constructor_rejects_bad_address_and_settings() -> None:
    link = Dlt645Link("/dev/null")
    assert isinstance(Dlt645Meter(link, "000000000001"), Meter)
    for bad in ("161", "00000000016A", "AAAAAAAAAAAA"):
        with pytest.raises(ValueError, match="12 decimal digits"):
            Dlt645Meter(link, bad)
    with pytest.raises(ValueError, match="protocol_version"):
        Dlt645Meter(link, "000000000001", protocol_version="2020")
    with pytest.raises(ValueError, match="password"):
        Dlt645Meter(link, "000000000001", password="12")


@run_async
async def test_interoperates_with_the_independent_dlt645_package() -> None:
    """The ``dlt645`` package (PyPI, 3.2) serves a meter over TCP; we read the value it holds.

    Its string addresses are big-endian on the wire, unlike DL/T 645 (LSB first), so the address
    is given to it as wire bytes.
    """
    from dlt645 import MeterServerService

    svc = MeterServerService.new_tcp_server("127.0.0.1", 0, timeout=0.3)
    svc.set_address(address_to_bytes("000000000161"))
    assert svc.set_00(0x00010000, 112280.26)
    assert svc.set_02(0x02010100, 231.4)
    assert svc.server.start()
    try:
        async with fast_link(f"socket://127.0.0.1:{svc.server.port}", timeout_s=1.0) as link:
            r = await Dlt645Meter(link, "000000000161").read([Point.ENERGY_IMPORT, Point.VOLTAGE])
            address = await read_address(link)
    finally:
        svc.server.stop()
    assert r.quality is Quality.OK, r.error
    assert r.energy_import_wh == 112_280_260 and r.voltage_v == Decimal("231.4")
    assert address == "000000000161"


@run_async
async def test_a_billing_poll_with_tariff_registers_costs_two_frames(sim_bus) -> None:  # noqa: F811
    clock = ManualClock()
    models = make_models(1, clock=clock)
    models[0].energy_import_wh  # noqa: B018
    clock.advance(3 * 3600)
    bus = sim_bus(models)
    async with fast_link(bus.start_pty()) as link:
        hand_offs = count_hand_offs(link)
        reading = await meter(link).read([Point.ENERGY_IMPORT, Point.ENERGY_IMPORT_TARIFFS, Point.RELAY])
    assert reading.quality is Quality.OK
    assert reading.energy_import_wh == 1500 and reading.relay is RelayState.CLOSED
    assert reading.energy_import_tariffs_wh is not None and sum(reading.energy_import_tariffs_wh) == 1500
    assert bus.stats.requests == 2, "import block (total + T1..T4) and status word 3"
    assert hand_offs() == 1, "both frames in one trip to the link thread"


@run_async
async def test_a_silent_meter_is_asked_once_per_poll_not_once_per_point(sim_bus) -> None:  # noqa: F811
    models = make_models(1)
    models[0].faults.add(Fault.NO_ANSWER)
    bus = sim_bus(models)
    async with fast_link(bus.start_pty(), timeout_s=0.1, retries=0) as link:
        reading = await meter(link).read([Point.ENERGY_IMPORT, Point.ENERGY_IMPORT_TARIFFS, Point.RELAY])
    assert reading.quality is Quality.TIMEOUT and not reading.chargeable
    assert link.stats.requests == 1 and link.stats.timeouts == 1, "the batch stops at the first silence"


@run_async
async def test_a_bad_optional_field_is_reported_and_the_energy_still_read() -> None:
    """The ``dlt645`` package answers the date DI (04000101) with ``00 00 00 00``: no month 0.

    That used to fail the whole read (bad_frame, no energy); the energy and every good field now
    arrive, and the clock is ``None`` with its error under ``errors``."""
    from dlt645 import MeterServerService

    svc = MeterServerService.new_tcp_server("127.0.0.1", 0, timeout=0.3)
    svc.set_address(address_to_bytes("000000000161"))
    assert svc.set_00(0x00010000, 112280.26)
    assert svc.set_02(0x02010100, 231.4)
    assert svc.server.start()
    try:
        async with fast_link(f"socket://127.0.0.1:{svc.server.port}", timeout_s=1.0) as link:
            r = await Dlt645Meter(link, "000000000161").read([Point.ENERGY_IMPORT, Point.METER_TIME, Point.VOLTAGE])
            everything = await Dlt645Meter(link, "000000000161").read(list(Point))
    finally:
        svc.server.stop()
    assert r.quality is Quality.OK and r.chargeable
    assert r.energy_import_wh == 112_280_260 and r.voltage_v == Decimal("231.4")
    assert r.meter_time is None
    assert list(r.errors) == ["meter_time"]
    assert "DI 04000101: invalid date/time 00 00 00 00" in r.errors["meter_time"]
    assert r.to_json()["errors"] == r.errors and r.to_json()["meter_time"] is None
    assert everything.quality is Quality.OK and everything.energy_import_wh == 112_280_260
    assert everything.relay is RelayState.CLOSED and list(everything.errors) == ["meter_time"]


@run_async
async def test_the_billing_point_still_fails_the_whole_read_when_its_value_is_bad(scripted) -> None:  # noqa: F811
    """Only optional fields degrade to an error entry: undecodable energy is never a number."""
    meter_ = scripted([lambda r: encode(Frame(r.address, 0x80 | r.function, r.data[:4] + bytes.fromhex("FA FA FA FA")))])
    async with fast_link(meter_.url) as link:
        r = await meter(link).read([Point.ENERGY_IMPORT, Point.METER_TIME])
    assert r.quality is Quality.BAD_FRAME and r.energy_import_wh is None and not r.chargeable
    assert "not BCD" in (r.error or "")


@run_async
async def test_a_refused_status_word_still_bills_the_energy(scripted, tmp_path) -> None:  # noqa: F811
    """A meter that refuses status word 3 (unauthorised) but answers its register: the daemon's poll
    is chargeable, relay unknown, and the ledger charges the energy (it used to be a refused read)."""
    from support.ledger_books import T0, make_book, new_ledger

    from drivers.dlt645 import di as dis
    from gateway.ledger.charging import record_reading

    energy = {0: bytes.fromhex("00 00 00 00"), 1: bytes.fromhex("00 20 00 00")}  # 0.00 then 20.00 kWh
    polls = [0]

    def answer(request: Frame) -> bytes:
        di = int.from_bytes(request.data[:4], "little")
        if di == dis.status_word(3):
            return encode(Frame(request.address, 0xD1, b"\x04"))  # abnormal reply: unauthorised
        if di == dis.ENERGY_IMPORT:
            value = energy[min(polls[0], 1)]
            polls[0] += 1
            return encode(Frame(request.address, 0x80 | request.function, request.data[:4] + value))
        return encode(Frame(request.address, 0xD1, b"\x02"))  # no such data

    meter_ = scripted([answer])
    async with fast_link(meter_.url) as link:
        first = await meter(link).read([Point.ENERGY_IMPORT, Point.RELAY])
        second = await meter(link).read([Point.ENERGY_IMPORT, Point.RELAY])
    assert first.chargeable and second.chargeable and second.relay is None
    assert list(second.errors) == ["relay"] and "unauthorised" in second.errors["relay"]
    book = make_book(tmp_path)
    store = new_ledger(tmp_path / "l.db")
    outcomes = []
    for r, at in ((first, T0), (second, T0 + timedelta(hours=1))):
        with store.tx() as conn:
            outcomes.append(record_reading(conn, "m1", replace(r, taken_at=at), book.pricer(conn), max_power_w=30_000))
    store.close()
    assert [(o.outcome, o.delta_wh) for o in outcomes] == [("baseline", 0), ("charged", 20_000)]
