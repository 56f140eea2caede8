"""Request frames for each DL/T 645 function, and the matching reply checks (pure functions).

The security fields (password level + password, operator code) are built here in one place so a
future ESAM security module (password level 98, encrypted N3..N8) replaces two functions, not the
meter class.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from drivers.base import RelayAction
from drivers.dlt645.di import bcd_byte, decode_datetime6, di_bytes, encode_datetime6, to_bcd_byte
from drivers.dlt645.frame import (
    BROADCAST,
    WILDCARD,
    Frame,
    FrameError,
    Function,
    bytes_to_address,
    check_address,
)

RELAY_CODES: dict[RelayAction, int] = {
    RelayAction.TRIP: 0x1A,
    RelayAction.CLOSE_PERMITTED: 0x1B,
    RelayAction.DIRECT_CLOSE: 0x1C,
    RelayAction.ALARM_ON: 0x2A,
    RelayAction.ALARM_OFF: 0x2B,
    RelayAction.KEEP_POWER_ON: 0x3A,
    RelayAction.KEEP_POWER_OFF: 0x3B,
}
RELAY_ACTIONS: dict[int, RelayAction] = {v: k for k, v in RELAY_CODES.items()}


def digits_to_bcd(digits: str, what: str) -> bytes:
    """``"12345678"`` → ``78 56 34 12`` (least significant pair first, like addresses)."""
    if len(digits) % 2 or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"{what} must be an even number of decimal digits, got {digits!r}")
    return bytes(int(digits[i : i + 2], 16) for i in range(len(digits) - 2, -1, -2))


def bcd_to_digits(raw: bytes) -> str:
    return "".join(f"{bcd_byte(b):02d}" for b in reversed(raw))


def security_fields(password_level: int, password: str, operator: str) -> bytes:
    """PA P0 P1 P2 C0 C1 C2 C3 (DL/T 645-2007 §6.4: level byte, 3-byte password, 4-byte operator)."""
    if not 0 <= password_level <= 0x99:
        raise ValueError(f"password level must be 00..99, got {password_level}")
    if len(password) != 6:
        raise ValueError(f"password must be 6 digits, got {password!r}")
    if len(operator) != 8:
        raise ValueError(f"operator code must be 8 digits, got {operator!r}")
    return (
        bytes([to_bcd_byte(password_level)])
        + digits_to_bcd(password, "password")
        + digits_to_bcd(operator, "operator code")
    )


def read_request(address: str, di: int, *, v1997: bool = False) -> Frame:
    fn = Function.V97_READ if v1997 else Function.READ
    return Frame(address, fn, di_bytes(di, v1997=v1997))


def follow_up_request(address: str, di: int, seq: int) -> Frame:
    return Frame(address, Function.READ_FOLLOW_UP, di_bytes(di) + bytes([seq & 0xFF]))


def read_address_request() -> Frame:
    return Frame(WILDCARD, Function.READ_ADDRESS)


def write_request(address: str, di: int, data: bytes, security: bytes) -> Frame:
    return Frame(address, Function.WRITE, di_bytes(di) + security + data)


def broadcast_time_request(when: datetime) -> Frame:
    """Broadcast time sync (function 08): ss mm hh DD MM YY of the meters' local time."""
    return Frame(BROADCAST, Function.BROADCAST_TIME, encode_datetime6(when))


def relay_request(address: str, action: RelayAction, deadline: datetime, security: bytes) -> Frame:
    """Relay control (function 1C): security fields, N1 action, N2 = 00, N3..N8 validity deadline."""
    payload = security + bytes([RELAY_CODES[action], 0]) + encode_datetime6(deadline)
    return Frame(address, Function.RELAY, payload)


@dataclass(frozen=True)
class RelayCommandFields:
    password_level: int
    password: str
    operator: str
    action: RelayAction
    deadline: datetime


def parse_relay_request(frame: Frame) -> RelayCommandFields:
    """Inverse of ``relay_request`` (used by the simulator and by tests)."""
    d = frame.data
    if len(d) != 16:
        raise FrameError(f"relay command data is {len(d)} bytes, expected 16")
    if d[8] not in RELAY_ACTIONS:
        raise FrameError(f"unknown relay action code {d[8]:02X}")
    return RelayCommandFields(
        password_level=bcd_byte(d[0]),
        password=bcd_to_digits(d[1:4]),
        operator=bcd_to_digits(d[4:8]),
        action=RELAY_ACTIONS[d[8]],
        deadline=decode_datetime6(d[10:16]),
    )


def reply_payload(request: Frame, reply: Frame) -> bytes:
    """The value bytes of a normal read reply, after checking it echoes the requested DI."""
    di_len = 2 if request.function in (Function.V97_READ, Function.V97_READ_FOLLOW_UP) else 4
    di = request.data[:di_len]
    if reply.data[:di_len] != di:
        raise FrameError(
            f"reply from {reply.address} carries DI {reply.data[:di_len][::-1].hex()} "
            f"instead of {di[::-1].hex()}"
        )
    end = len(reply.data) - 1 if request.function == Function.READ_FOLLOW_UP else len(reply.data)
    return reply.data[di_len:end]


def address_from_reply(reply: Frame) -> str:
    """A read-address reply carries the address twice (frame header and data); they must agree."""
    if len(reply.data) != 6:
        raise FrameError(f"read-address reply data is {len(reply.data)} bytes, expected 6")
    inner = bytes_to_address(reply.data)
    if inner != reply.address:
        raise FrameError(f"read-address reply header {reply.address} != data {inner}")
    return check_address(inner)
