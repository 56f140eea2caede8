"""DL/T 645 frame codec: pure functions from bytes to frames and back.

Wire form (DL/T 645-2007 §4, shared by DL/T 645-1997)::

    FE*0..4  68  A0..A5  68  C  L  DATA(+0x33 each)  CS  16

The address is six BCD bytes, least significant first; ``AA`` is a wildcard byte and ``99…`` the
broadcast address.  ``CS`` is the byte sum mod 256 from the first ``68`` to the last DATA byte.
A ``Frame`` holds DATA *without* the 0x33 offset, so everything above this module sees plain values.

The decoder never raises anything but ``FrameError`` (a ``BadFrame``) on any input; ``scan`` finds
the first valid frame in a noisy byte stream so a link can resynchronise after garbage, a bad
checksum or a truncated frame.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache

from drivers.base import BadFrame, MeterRefused

START = 0x68
END = 0x16
WAKEUP = 0xFE
OFFSET = 0x33
MAX_DATA = 255

WILDCARD = "AAAAAAAAAAAA"
BROADCAST = "999999999999"

DIR_REPLY = 0x80
ABNORMAL = 0x40
FOLLOW_UP = 0x20
FUNCTION_MASK = 0x1F


class Function(enum.IntEnum):
    """Control-code function bits D4..D0 (DL/T 645-2007 §4.1.4; 1997 codes prefixed V97)."""

    BROADCAST_TIME = 0x08
    READ = 0x11
    READ_FOLLOW_UP = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    WRITE_ADDRESS = 0x15
    FREEZE = 0x16
    CHANGE_BAUD = 0x17
    CHANGE_PASSWORD = 0x18
    RELAY = 0x1C
    V97_READ = 0x01
    V97_READ_FOLLOW_UP = 0x02
    V97_WRITE = 0x04


class FrameError(BadFrame):
    """Bytes that are not a valid DL/T 645 frame; ``str()`` says what is wrong and where."""


class ErrorFlags(enum.IntFlag):
    """The error byte of an abnormal reply (DL/T 645-2007 §4.2, error-information word)."""

    OTHER = 0x01
    NO_SUCH_DATA = 0x02
    UNAUTHORISED = 0x04
    BAUD_NOT_CHANGEABLE = 0x08
    TOO_MANY_YEAR_ZONES = 0x10
    TOO_MANY_DAY_SLOTS = 0x20
    TOO_MANY_TARIFFS = 0x40


class Dlt645Refused(MeterRefused):
    """An abnormal reply; ``flags`` is the decoded error byte (``code`` keeps the raw byte)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.flags = ErrorFlags(code & 0x7F)

    @property
    def no_such_data(self) -> bool:
        return bool(self.flags & ErrorFlags.NO_SUCH_DATA)


def describe_error(code: int) -> str:
    """Human words for an error byte, e.g. ``"no such data, unauthorised"``."""
    names = [f.name.lower().replace("_", " ") for f in ErrorFlags if code & f.value and f.name]
    return ", ".join(names) if names else f"unspecified error 0x{code:02X}"


def check_address(address: str) -> str:
    """Validate a 12-digit meter address; raises a one-line ``ValueError`` otherwise."""
    if not isinstance(address, str) or len(address) != 12 or not address.isdigit() or not address.isascii():
        raise ValueError(f"DL/T 645 address must be 12 decimal digits, got {address!r}")
    return address


@lru_cache(maxsize=8192)
def address_to_bytes(address: str) -> bytes:
    """``"000000000161"`` → ``61 01 00 00 00 00``.  Each digit pair may also be ``AA`` (wildcard)."""
    if not isinstance(address, str) or len(address) != 12:
        raise ValueError(f"DL/T 645 address must be 12 characters, got {address!r}")
    out = bytearray()
    for i in range(10, -1, -2):
        pair = address[i : i + 2].upper()
        if pair == "AA":
            out.append(0xAA)
        elif pair.isdigit() and pair.isascii():
            out.append(int(pair, 16))
        else:
            raise ValueError(f"DL/T 645 address {address!r}: {pair!r} is neither two digits nor AA")
    return bytes(out)


def is_pattern(address: str) -> bool:
    """True when the address has at least one ``AA`` wildcard pair (it names a set of meters)."""
    return any(address[i : i + 2].upper() == "AA" for i in range(0, 12, 2))


def address_matches(pattern: str, address: str) -> bool:
    """A meter address is named by a request address when every digit pair is equal or ``AA``.

    DL/T 645-2007 §4.1.2 (abbreviated addressing, 缩位寻址): the high pairs of a read request's address
    may be ``AA`` wildcards; a meter whose low pairs match answers with its real address.  Matching is
    per pair, so it also covers the all-``AA`` read-address request."""
    return len(pattern) == len(address) == 12 and all(
        pattern[i : i + 2].upper() in ("AA", address[i : i + 2]) for i in range(0, 12, 2)
    )


def bytes_to_address(raw: bytes) -> str:
    """Inverse of ``address_to_bytes``; raises ``FrameError`` on a non-BCD byte."""
    text = bytes(reversed(raw)).hex().upper()
    if text.isdigit():  # the common case, every pair BCD: the hex digits are the address
        return text
    parts = []
    for b in reversed(raw):
        if b == 0xAA:
            parts.append("AA")
        elif (b >> 4) <= 9 and (b & 0x0F) <= 9:
            parts.append(f"{b:02X}")
        else:
            raise FrameError(f"address byte 0x{b:02X} is not BCD in {raw.hex(' ')}")
    return "".join(parts)


@dataclass(frozen=True)
class Frame:
    """One frame with plain (un-offset) data."""

    address: str
    control: int
    data: bytes = b""

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIR_REPLY)

    @property
    def is_abnormal(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def has_follow_up(self) -> bool:
        return bool(self.control & FOLLOW_UP)

    def refusal(self, what: str = "request") -> Dlt645Refused:
        """The typed error an abnormal reply stands for (its error byte decoded)."""
        code = self.data[0] if self.data else 0
        return Dlt645Refused(f"meter {self.address} refused {what}: {describe_error(code)}", code)


def checksum(body: bytes) -> int:
    return sum(body) & 0xFF


# The data field travels with 0x33 added to each byte (DL/T 645-2007 §4.1.5): a table per direction,
# so a frame is offset and un-offset by one C call (bytes.translate) instead of a generator per byte.
_ADD_OFFSET = bytes((b + OFFSET) & 0xFF for b in range(256))
_REMOVE_OFFSET = bytes((b - OFFSET) & 0xFF for b in range(256))


def encode(frame: Frame, *, wakeup: int = 0) -> bytes:
    """Frame → wire bytes, with ``wakeup`` leading ``FE`` bytes (0–4)."""
    if not 0 <= wakeup <= 4:
        raise ValueError(f"wake-up byte count must be 0..4, got {wakeup}")
    if not 0 <= frame.control <= 0xFF:
        raise ValueError(f"control byte out of range: {frame.control}")
    if len(frame.data) > MAX_DATA:
        raise ValueError(f"data field of {len(frame.data)} bytes exceeds {MAX_DATA}")
    body = (
        bytes([START])
        + address_to_bytes(frame.address)
        + bytes([START, frame.control, len(frame.data)])
        + bytes(frame.data).translate(_ADD_OFFSET)
    )
    return bytes([WAKEUP]) * wakeup + body + bytes([checksum(body), END])


def _parse_at(buf: bytes, i: int) -> Frame:
    """Parse the complete candidate frame starting at ``buf[i] == 0x68``."""
    if buf[i + 7] != START:
        raise FrameError(f"second 68 missing at offset {i + 7} (found {buf[i + 7]:02X})")
    length = buf[i + 9]
    end = i + 10 + length
    cs = checksum(buf[i:end])
    if buf[end] != cs:
        raise FrameError(f"checksum {buf[end]:02X} != computed {cs:02X} in frame at offset {i}")
    if buf[end + 1] != END:
        raise FrameError(f"end byte {buf[end + 1]:02X} != 16 in frame at offset {i}")
    data = bytes(buf[i + 10 : end]).translate(_REMOVE_OFFSET)
    return Frame(bytes_to_address(buf[i + 1 : i + 7]), buf[i + 8], data)


def decode(raw: bytes) -> Frame:
    """Exactly one frame, with optional leading ``FE`` bytes; anything else is a ``FrameError``."""
    raw = bytes(raw)
    i = 0
    while i < len(raw) and raw[i] == WAKEUP and i < 4:
        i += 1
    if i >= len(raw) or raw[i] != START:
        raise FrameError(f"no 68 start byte at offset {i} of {len(raw)} bytes")
    if len(raw) - i < 12:
        raise FrameError(f"truncated frame: {len(raw) - i} bytes, need at least 12")
    need = 12 + raw[i + 9]
    if len(raw) - i != need:
        kind = "truncated" if len(raw) - i < need else "trailing bytes after"
        raise FrameError(f"{kind} frame: have {len(raw) - i} bytes, L={raw[i + 9]} needs {need}")
    return _parse_at(raw, i)


@dataclass(frozen=True)
class ScanResult:
    """Outcome of looking for a frame in a byte stream.

    ``frame`` is the first valid frame (or None); ``end`` is how many leading bytes of the buffer
    are used up (the frame and any garbage before it); ``pending`` is True when a plausible frame
    has begun but is not complete yet, so the caller should read more rather than give up.
    """

    frame: Frame | None
    end: int
    pending: bool


def scan(buf: bytes) -> ScanResult:
    """Find the first valid frame in ``buf``, skipping noise, bad checksums and broken frames.

    A complete valid frame wins over an earlier incomplete candidate, because a stray ``68`` in
    noise can look like the start of a long frame that will never finish.
    """
    buf = bytes(buf)
    n = len(buf)
    pending_at: int | None = None
    i = 0
    while True:
        i = buf.find(START, i)
        if i < 0:
            break
        if n - i < 10:
            if not (n - i > 7 and buf[i + 7] != START) and pending_at is None:
                pending_at = i
            i += 1
            continue
        if buf[i + 7] != START:
            i += 1
            continue
        need = 12 + buf[i + 9]
        if n - i < need:
            if pending_at is None:
                pending_at = i
            i += 1
            continue
        try:
            frame = _parse_at(buf, i)
        except FrameError:
            i += 1
            continue
        return ScanResult(frame, i + need, False)
    if pending_at is not None:
        return ScanResult(None, pending_at, True)
    return ScanResult(None, n, False)
