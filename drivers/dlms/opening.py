"""The IEC 62056-21 mode E opening: how an optical port (or a line that needs it) is brought to HDLC.

Such a port listens at 300 baud, 7 data bits, even parity, 1 stop bit (7E1).  The client sends the
sign-on request ``/?!`` CR LF; the meter answers its identification ``/XXXZ\\W…`` CR LF: ``XXX`` the
manufacturer, ``Z`` the baud character (``0``..``6`` → 300..19200), then optional ``\\W`` pairs of which
``\\2`` says mode E (the HDLC protocol follows), then up to 16 characters naming the device.  The client
acknowledges with ``ACK 2 Z 2`` CR LF (protocol control 2: HDLC; ``Z`` the baud; mode control 2) and
both switch to ``Z`` baud 8N1, where HDLC (IEC 62056-46) starts with the SNRM.  Source: IEC 62056-21
(mode E); docs/sources/protocols.md ("IEC 62056-21 mode E opening").

7E1 is sent as 8N1 with the parity in bit 7: on the wire the two are the same ten bits a character
(start, seven data, parity, stop), so the port keeps 8N1 and only its speed changes.  That also works
where 7-bit characters cannot be set at all (a Linux pty refuses CS7 and PARENB).

Why the waits: a meter may take its time to react at 300 baud, and an identification of up to 25
characters takes 0.8 s on the wire, so the identification may start up to ``wait_s`` (at least
``MIN_WAIT_S``) after the sign-on; after the acknowledgement has left the wire (``flush``) the client
waits ``SETTLE_S`` for the meter to change speed before it sends HDLC.  Both figures are ours, chosen
with margin, not quoted from the standard.
"""

from __future__ import annotations

import re
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial

from drivers.base import BadFrame, LinkError, MeterRefused, MeterTimeout

OPENINGS = ("none", "iec62056-21")
OPENING_BAUD = 300
BAUD_CHARS = {"0": 300, "1": 600, "2": 1200, "3": 2400, "4": 4800, "5": 9600, "6": 19200}
SIGN_ON = b"/?!\r\n"
ACK = 0x06
MIN_WAIT_S = 2.0
SETTLE_S = 0.2
_PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError, ValueError, termios.error)
_IDENT = re.compile(rb"/([A-Za-z]{2}[A-Za-z0-9])([0-9A-Za-z])((?:\\[0-9A-Za-z])*)([\x20-\x7e]{0,16})\r\n")


class SignOnUnanswered(MeterTimeout):
    """Nothing answered the sign-on: the sign-on names no device, so this is the port's silence (no
    probe on the head, a dead line), not one meter's; a scan stops at the first rather than wait
    ``MIN_WAIT_S`` at every address."""


class ModeENotOffered(MeterRefused):
    """The meter answered the sign-on but offers no HDLC (mode E) on this port: retrying will not help."""


@dataclass(frozen=True)
class Opened:
    """What the opening agreed, and the bytes it cost (for the link's counters)."""

    identification: str
    baud: int
    sent: int
    received: int


def with_parity(text: bytes) -> bytes:
    """7E1 characters as 8N1 bytes: bit 7 makes the count of one bits even."""
    return bytes(c | (0x80 if bin(c & 0x7F).count("1") % 2 else 0) for c in text)


def strip_parity(data: bytes) -> bytes | None:
    """The 7-bit characters of 7E1 bytes; None when a byte's parity is wrong."""
    if any(bin(c).count("1") % 2 for c in data):
        return None
    return bytes(c & 0x7F for c in data)


def parse_identification(line: bytes, where: str) -> tuple[str, int, str]:
    """(identification text, baud, baud character) of a mode E identification message.

    ``BadFrame`` for bytes that are no identification; ``ModeENotOffered`` for one without ``\\2``
    (or with a baud character outside 0..6, the letters of modes A and B)."""
    text = strip_parity(line)
    if text is None:
        raise BadFrame(f"{where}: parity error in the IEC 62056-21 identification")
    m = _IDENT.fullmatch(text)
    if m is None:
        shown = text.decode("ascii", "replace").strip()
        raise BadFrame(f"{where}: {shown!r} is not an IEC 62056-21 identification")
    ident = text.decode("ascii").strip()
    z = m.group(2).decode()
    escapes = m.group(3)
    if b"\\2" not in [escapes[i : i + 2] for i in range(0, len(escapes), 2)]:
        raise ModeENotOffered(
            f"{where}: answered the IEC 62056-21 sign-on as {ident!r} without mode E (no \\2 after the "
            f"baud character): the port offers no HDLC"
        )
    if z not in BAUD_CHARS:
        raise ModeENotOffered(f"{where}: identification {ident!r} has baud character {z!r}, not one of mode E's 0-6")
    return ident, BAUD_CHARS[z], z


def _speed(ser: Any, baud: int) -> None:
    try:
        ser.baudrate = baud
    except _PORT_ERRORS as exc:
        raise LinkError(f"cannot set the line to {baud} baud: {exc}") from None


def _read_line(ser: Any, wait_s: float, monotonic: Callable[[], float]) -> bytes:
    got = bytearray()
    start = last = monotonic()
    while b"\n" not in got:
        now = monotonic()
        if now - last > wait_s or now - start > 2 * wait_s:
            return bytes(got)
        try:
            chunk = ser.read(max(1, min(int(ser.in_waiting), 256)))
        except _PORT_ERRORS as exc:
            raise LinkError(f"read failed during the IEC 62056-21 opening: {exc}") from None
        if chunk:
            got += chunk
            last = monotonic()
    return bytes(got)


def open_mode_e(
    ser: Any,
    where: str,
    *,
    wait_s: float = MIN_WAIT_S,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Opened:
    """Run the opening on an open port (8N1); leaves it at the agreed baud, ready for the SNRM.

    ``MeterTimeout`` when nothing answers the sign-on, ``BadFrame`` for an unreadable answer,
    ``ModeENotOffered`` for a meter without mode E, ``LinkError`` when the port fails."""
    wait_s = max(wait_s, MIN_WAIT_S)
    _speed(ser, OPENING_BAUD)
    try:
        ser.reset_input_buffer()
        ser.write(with_parity(SIGN_ON))
        ser.flush()
    except _PORT_ERRORS as exc:
        raise LinkError(f"write failed during the IEC 62056-21 opening: {exc}") from None
    line = _read_line(ser, wait_s, monotonic)
    if not line:
        raise SignOnUnanswered(
            f"{where}: no identification within {wait_s:g} s of the IEC 62056-21 sign-on at 300 baud"
        )
    if not line.endswith(b"\n"):
        raise BadFrame(f"{where}: {len(line)} byte(s) after the IEC 62056-21 sign-on but no complete identification")
    start = line.rfind(with_parity(b"/"))
    ident, baud, z = parse_identification(line[max(start, 0) :], where)
    ack = with_parity(bytes([ACK]) + b"2" + z.encode() + b"2\r\n")
    try:
        ser.write(ack)
        ser.flush()
    except _PORT_ERRORS as exc:
        raise LinkError(f"write failed during the IEC 62056-21 opening: {exc}") from None
    sleep(SETTLE_S)
    _speed(ser, baud)
    return Opened(ident, baud, len(SIGN_ON) + len(ack), len(line))
