"""DL/T 645 frame codec, DI formats and request builders (pure functions).

Vectors: docs/sources/protocols.md, "Test vectors" (built by the DL/T 645-2007 frame rules, checksums
recomputed); each is checked in both directions.
"""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import BadFrame, RelayAction
from drivers.dlt645 import commands
from drivers.dlt645 import di as dis
from drivers.dlt645.frame import (
    BROADCAST,
    WILDCARD,
    Dlt645Refused,
    ErrorFlags,
    Frame,
    FrameError,
    address_to_bytes,
    check_address,
    decode,
    encode,
    scan,
)

h = bytes.fromhex

READ_161 = h("68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
READ_001 = h("68 01 00 00 00 00 00 68 11 04 33 33 34 33 B3 16")
REPLY_001 = h("68 01 00 00 00 00 00 68 91 08 33 33 34 33 59 B3 55 44 DC 16")
READ_ADDR = h("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")
READ_ADDR_REPLY = h("68 01 00 00 00 00 00 68 93 06 34 33 33 33 33 33 9D 16")
TRIP = h("68 11 11 11 11 11 11 68 1C 10 33 33 33 33 33 33 33 33 4D 33 57 74 48 45 38 4B 55 16")
TRIP_OK = h("68 11 11 11 11 11 11 68 9C 00 D2 16")


# -- vectors, both directions -----------------------------------------------------------------------
def test_read_request_vectors_encode_and_decode() -> None:
    for address, wire in (("000000000161", READ_161), ("000000000001", READ_001)):
        request = commands.read_request(address, dis.ENERGY_IMPORT)
        assert encode(request) == wire
        assert decode(wire) == request


def test_read_reply_vector_is_112280_26_kwh() -> None:
    reply = decode(REPLY_001)
    assert reply.is_reply and not reply.is_abnormal and reply.address == "000000000001"
    payload = commands.reply_payload(commands.read_request("000000000001", dis.ENERGY_IMPORT), reply)
    value = dis.lookup(dis.ENERGY_IMPORT).decode(payload)
    assert value == Decimal("112280.26")
    assert dis.kwh_to_wh(value) == 112_280_260
    # and back: the simulator side builds the same bytes
    back = Frame(
        "000000000001", 0x91, dis.di_bytes(dis.ENERGY_IMPORT) + dis.lookup(dis.ENERGY_IMPORT).encode(value)
    )
    assert encode(back) == REPLY_001


def test_read_address_vectors() -> None:
    assert encode(commands.read_address_request(), wakeup=4) == READ_ADDR
    assert decode(READ_ADDR) == commands.read_address_request()
    reply = decode(READ_ADDR_REPLY)
    assert commands.address_from_reply(reply) == "000000000001"
    assert encode(Frame("000000000001", 0x93, address_to_bytes("000000000001"))) == READ_ADDR_REPLY


def test_trip_vector_and_success_reply() -> None:
    security = commands.security_fields(0, "000000", "00000000")
    request = commands.relay_request(
        "111111111111", RelayAction.TRIP, datetime(2018, 5, 12, 15, 41, 24), security
    )
    assert encode(request) == TRIP
    fields = commands.parse_relay_request(decode(TRIP))
    assert fields.action is RelayAction.TRIP
    assert fields.deadline == datetime(2018, 5, 12, 15, 41, 24)
    assert (fields.password_level, fields.password, fields.operator) == (0, "000000", "00000000")
    ok = decode(TRIP_OK)
    assert ok.is_reply and ok.function == 0x1C and ok.data == b""
    assert encode(Frame("111111111111", 0x9C)) == TRIP_OK


# -- addresses -----------------------------------------------------------------------------------------
def test_address_is_bcd_least_significant_byte_first() -> None:
    assert address_to_bytes("000000000161") == h("61 01 00 00 00 00")
    assert address_to_bytes(WILDCARD) == b"\xaa" * 6
    assert address_to_bytes(BROADCAST) == b"\x99" * 6


@pytest.mark.parametrize(
    "bad", ["161", "00000000016A", "0000000001611", " 00000000161", "００００００００１６１", 161]
)
def test_check_address_rejects_anything_but_12_digits(bad: object) -> None:
    with pytest.raises(ValueError, match="12"):
        check_address(bad)  # type: ignore[arg-type]


def test_non_bcd_address_byte_is_a_frame_error() -> None:
    wire = bytearray(READ_001)
    wire[1] = 0x0F
    wire[-2] = sum(wire[:-2]) & 0xFF
    with pytest.raises(FrameError, match="not BCD"):
        decode(bytes(wire))


# -- decode errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (READ_001[:-1], "truncated"),
        (READ_001 + b"\x00", "trailing"),
        (READ_001[:-2] + b"\x00\x16", "checksum"),
        (READ_001[:-1] + b"\x17", "end byte"),
        (b"\x00" + READ_001, "no 68"),
        (b"", "no 68"),
        (b"\xfe" * 5 + READ_001, "no 68"),
    ],
)
def test_decode_rejects_with_one_line_frame_error(wire: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message) as info:
        decode(wire)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, BadFrame)


def test_abnormal_reply_decodes_error_byte() -> None:
    wire = encode(Frame("000000000001", 0xD1, bytes([0x02])))
    frame = decode(wire)
    assert frame.is_abnormal
    err = frame.refusal("read 00010000")
    assert isinstance(err, Dlt645Refused)
    assert err.no_such_data and err.flags == ErrorFlags.NO_SUCH_DATA and err.code == 2
    assert str(err) == "meter 000000000001 refused read 00010000: no such data"
    both = decode(encode(Frame("000000000001", 0xD4, bytes([0x05])))).refusal()
    assert "other" in str(both) and "unauthorised" in str(both) and not both.no_such_data


def test_follow_up_flag() -> None:
    assert decode(encode(Frame("000000000001", 0xB1, b"\x00\x01\xff\x00"))).has_follow_up
    assert not decode(REPLY_001).has_follow_up


# -- resynchronisation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "noise",
    [
        b"\x00\x13\x37",  # garbage before 68
        b"\x68\x01\x02",  # a stray 68 that never becomes a frame
        READ_001[:-2] + b"\x00\x16",  # a whole frame with a bad checksum
        READ_001[:9],  # a truncated frame
        b"\x68\x61\x01\x00\x00\x00\x00\x68\x11\xff",  # a header promising 255 data bytes
    ],
)
def test_scan_skips_noise_and_finds_the_frame(noise: bytes) -> None:
    buf = noise + b"\xfe\xfe" + REPLY_001 + b"\x99"
    result = scan(buf)
    assert result.frame == decode(REPLY_001)
    assert buf[result.end :] == b"\x99"


def test_scan_reports_pending_frame_and_waits_for_more() -> None:
    result = scan(b"\x00\x00" + REPLY_001[:12])
    assert result.frame is None and result.pending and result.end == 2
    assert scan(REPLY_001[:5]).pending
    empty = scan(b"\x01\x02\x03")
    assert empty.frame is None and not empty.pending and empty.end == 3


def test_scan_returns_frames_in_order() -> None:
    buf = READ_001 + REPLY_001
    first = scan(buf)
    second = scan(buf[first.end :])
    assert (first.frame, second.frame) == (decode(READ_001), decode(REPLY_001))


# -- DI formats ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("di", "raw", "value"),
    [
        (dis.VOLTAGE_A, h("01 22"), Decimal("220.1")),
        (dis.CURRENT_A, h("25 27 00"), Decimal("2.725")),
        (dis.CURRENT_A, h("25 27 80"), Decimal("-2.725")),
        (dis.POWER_TOTAL, h("00 50 80"), Decimal("-0.5000")),
        (dis.FREQUENCY, h("98 49"), Decimal("49.98")),
        (dis.POWER_FACTOR_TOTAL, h("50 09"), Decimal("0.950")),
        (dis.REMAINING_MONEY, h("45 23 01 00"), Decimal("123.45")),
        (dis.PURCHASE_COUNT, h("12 00"), Decimal(12)),
        (dis.status_word(3), h("10 12"), 0x1210),
        (dis.DATE, h("00 29 11 26"), date(2026, 11, 29)),  # a Sunday: WW = 00
        (dis.TIME, h("05 04 23"), time(23, 4, 5)),
    ],
)
def test_di_formats_decode_and_encode(di: int, raw: bytes, value: object) -> None:
    fmt = dis.lookup(di)
    assert fmt.decode(raw) == value
    assert fmt.encode(value) == raw  # type: ignore[arg-type]


def test_di_decode_errors_are_frame_errors() -> None:
    with pytest.raises(FrameError, match="not BCD"):
        dis.lookup(dis.ENERGY_IMPORT).decode(h("0A 00 00 00"))
    with pytest.raises(FrameError, match="expected 4"):
        dis.lookup(dis.ENERGY_IMPORT).decode(h("00 00 00"))
    with pytest.raises(FrameError, match="invalid date"):
        dis.lookup(dis.DATE).decode(h("00 00 13 26"))
    with pytest.raises(ValueError, match="unknown DL/T 645-2007 DI 12345678"):
        dis.lookup(0x12345678)


def test_encode_bcd_refuses_inexact_or_oversized_values() -> None:
    with pytest.raises(ValueError, match="decimals"):
        dis.encode_bcd(Decimal("1.234"), 4, 2, False)
    with pytest.raises(ValueError, match="does not fit"):
        dis.encode_bcd(Decimal("1000000.00"), 4, 2, False)
    assert dis.encode_bcd(Decimal("999999.99"), 4, 2, False) == h("99 99 99 99")


def test_status_word_3_bits() -> None:
    word = dis.SW3_RELAY_OPEN | dis.SW3_KEEP_POWER | (0b10 << 8)
    status = dis.decode_status3(word)
    assert status["relay_open"] and status["keep_power"] and status["meter_type"] == 2
    assert not status["pre_trip_alarm"] and not status["relay_command_trip"]


def test_1997_read_uses_two_byte_di_and_function_01() -> None:
    request = commands.read_request("000000000001", 0x9010, v1997=True)
    assert request.control == 0x01 and request.data == h("10 90")
    assert encode(request)[8:12] == h("01 02 43 C3")


def test_security_fields_validate_and_order() -> None:
    assert commands.security_fields(2, "123456", "87654321") == h("02 56 34 12 21 43 65 87")
    for bad in ((2, "12345", "00000000"), (2, "12345a", "00000000"), (2, "000000", "0000")):
        with pytest.raises(ValueError):
            commands.security_fields(*bad)


def test_reply_with_wrong_di_is_rejected() -> None:
    request = commands.read_request("000000000001", dis.VOLTAGE_A)
    with pytest.raises(FrameError, match="instead of"):
        commands.reply_payload(request, decode(REPLY_001))


# -- properties -------------------------------------------------------------------------------------
addresses = st.one_of(
    st.from_regex(r"\A[0-9]{12}\Z"),
    st.just(WILDCARD),
    st.just(BROADCAST),
    st.from_regex(r"\A(AA){3}[0-9]{6}\Z"),
)
controls = st.sampled_from(
    [0x08, 0x11, 0x12, 0x13, 0x14, 0x1C, 0x01, 0x91, 0xB1, 0xD1, 0x92, 0xB2, 0x93, 0x94, 0x9C, 0xDC]
)
frames = st.builds(Frame, addresses, controls, st.binary(max_size=255))


@given(frames, st.integers(min_value=0, max_value=4))
def test_decode_encode_round_trip(frame: Frame, wakeup: int) -> None:
    wire = encode(frame, wakeup=wakeup)
    assert decode(wire) == frame
    assert scan(wire).frame == frame


@given(frames, st.binary(max_size=40), st.binary(max_size=40))
def test_scan_finds_a_frame_inside_noise_without_68(frame: Frame, before: bytes, after: bytes) -> None:
    before = before.replace(b"\x68", b"\x00")
    found = scan(before + encode(frame) + after)
    assert found.frame == frame


@given(
    st.decimals(min_value="-799.999", max_value="799.999", places=3, allow_nan=False, allow_infinity=False)
)
def test_signed_bcd_round_trip(value: Decimal) -> None:
    """3 signed BCD bytes (current XXX.XXX): 5 digits and a 0..7 top nibble beside the sign bit."""
    assert dis.decode_bcd(dis.encode_bcd(value, 3, 3, True), 3, True) == value
    with pytest.raises(ValueError, match="does not fit"):
        dis.encode_bcd(Decimal("800.000"), 3, 3, True)


bcd_formats = [f for f in dis.TABLE.values() if f.kind is dis.Kind.BCD]


@given(st.sampled_from(bcd_formats), st.data())
def test_every_bcd_di_round_trips(fmt: dis.DataFormat, data: st.DataObject) -> None:
    digits = 2 * fmt.length - (1 if fmt.signed else 0)
    top = (8 * 10 ** (digits - 1) if fmt.signed else 10**digits) - 1
    n = data.draw(st.integers(min_value=-top if fmt.signed else 0, max_value=top))
    value = Decimal(n).scaleb(-fmt.decimals)
    assert fmt.decode(fmt.encode(value)) == value


@given(
    st.from_regex(r"\A[0-9]{12}\Z"),
    st.sampled_from(list(RelayAction)),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)),
    st.from_regex(r"\A[0-9]{6}\Z"),
    st.from_regex(r"\A[0-9]{8}\Z"),
    st.sampled_from([0, 2, 4]),
)
def test_relay_request_round_trips(
    address: str, action: RelayAction, deadline: datetime, password: str, operator: str, level: int
) -> None:
    deadline = deadline.replace(microsecond=0)
    frame = commands.relay_request(
        address, action, deadline, commands.security_fields(level, password, operator)
    )
    fields = commands.parse_relay_request(decode(encode(frame, wakeup=4)))
    assert (fields.action, fields.deadline, fields.password, fields.operator, fields.password_level) == (
        action,
        deadline,
        password,
        operator,
        level,
    )


def _fuzz_once(raw: bytes) -> None:
    try:
        decode(raw)
    except FrameError:
        pass
    result = scan(raw)
    assert 0 <= result.end <= len(raw)
    if result.frame is not None:
        assert decode(encode(result.frame)) == result.frame


wire_like = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([0x68, 0x16, 0xFE, 0x00, 0xAA, 0x99, 0x33, 0x04, 0x08]), max_size=60).map(bytes),
    frames.map(encode).flatmap(lambda w: st.integers(0, len(w)).map(lambda n: w[:n] + w[n + 1 :])),
)


@settings(max_examples=500, deadline=None)
@given(wire_like)
def test_decoder_raises_only_frame_error_on_arbitrary_bytes(raw: bytes) -> None:
    _fuzz_once(raw)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@settings(max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(wire_like)
def test_decoder_fuzz_100k(raw: bytes) -> None:
    _fuzz_once(raw)
