"""DLMS/COSEM meters (IEC 62056): HDLC on a serial line or the TCP wrapper, reads by OBIS, class 70 relay.

The codec is the ``dlms-cosem`` library (APDUs, HDLC frames, the association, HLS-GMAC); this package
adds what the gateway needs around it: a link that owns one line and runs one conversation at a time
(``link``), profiles that name the OBIS codes a meter model offers (``profile``), exact values with
their scaler-unit (``values``), the meter's keys from a key file (``keys``) and the meter itself
(``meter``).  docs/sources/protocols.md ("DLMS/COSEM") cites the standards.

``dlms-cosem`` logs every APDU through structlog, the association request (with a low-level password)
included, and structlog prints to stdout by default: its output is switched off here, once, so that
no key or password can reach a log (``quiet_library_logs``).

Its HDLC transport also mistakes the closing flag of a frame whose last check byte is 0x7E for an
opening one and waits for a frame that never comes (a timeout on every retry, as the same reply has
the same check sequence): ``close_hdlc_frames`` reads a lone flag as an opening one only between
frames (found by the HLS interop test, whose ciphered replies hit it about one frame in 256).

Its A-XDR decoder also takes a truncated value for a longer one and loops for ever (its "buffer
empty" test is ``pointer == len`` and a read past the end moves the pointer beyond): a garbled reply
would hang the bus.  ``guard_axdr_reads`` makes a read past the end raise instead, which the link
reports as a bad frame (found by tests/unit/drivers/test_dlms_values.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from dlms_cosem import a_xdr
from dlms_cosem.hdlc.frames import HDLC_FLAG
from dlms_cosem.io import HdlcTransport


def _drop(logger: Any, method: str, event: Any) -> Any:
    raise structlog.DropEvent


def quiet_library_logs() -> None:
    """Drop everything ``dlms-cosem`` would log (APDUs, passwords, keys in reprs): below CRITICAL it
    is filtered before any formatting, and what is left is dropped by the only processor."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL), processors=[_drop]
    )


class AxdrOverrun(ValueError):
    """An A-XDR value claims more bytes than there are."""


def _get_bytes(self: a_xdr.AXdrDecoder, length: int) -> bytearray:
    if length < 0 or self.pointer + length > len(self.buffer):
        raise AxdrOverrun(f"A-XDR value needs {length} byte(s) at {self.pointer}, {len(self.buffer)} in all")
    part = self.buffer[self.pointer : self.pointer + length]
    self.pointer += length
    return part


def guard_axdr_reads() -> None:
    """Reads past the end of an A-XDR buffer raise ``AxdrOverrun`` instead of looping."""
    a_xdr.AXdrDecoder.get_bytes = _get_bytes


def _recv_frame(self: HdlcTransport) -> bytes:
    in_bytes = self.io.recv_until(end=HDLC_FLAG)
    if in_bytes == HDLC_FLAG and not self.hdlc_connection.buffer:  # an opening flag: read up to the closing one
        in_bytes += self.io.recv_until(HDLC_FLAG)
    return bytes(in_bytes)


def close_hdlc_frames() -> None:
    """A lone 0x7E after part of a frame is that frame's closing flag (IEC 62056-46 frames are
    delimited by their length, so a flag inside one is data)."""
    HdlcTransport.recv_frame = _recv_frame


close_hdlc_frames()

quiet_library_logs()
guard_axdr_reads()


async def scan(
    link: Any, addresses: Iterable[int], security: Any = None, progress: Callable[[int, int], None] | None = None
) -> list[int]:
    """HDLC physical addresses that answer on a line (``pmg scan`` for DLMS), in the order probed.

    Each address gets one association attempt without retries (the public client unless ``security``
    says otherwise); a meter that refuses the association answered, so it is present.  A silent
    address costs the link's timeout: give the link a short one for scanning."""
    from drivers.base import BadFrame, MeterRefused, MeterTimeout
    from drivers.dlms.keys import DlmsSecurity
    from drivers.dlms.link import Target

    todo = list(addresses)
    found: list[int] = []
    for i, address in enumerate(todo, start=1):
        target = Target(1, address, security or DlmsSecurity())
        try:
            await link.converse(target, lambda _s: None, retries=0)
            found.append(address)
        except MeterRefused:
            found.append(address)
        except (MeterTimeout, BadFrame):
            pass
        if progress:
            progress(i, len(todo))
    return found
