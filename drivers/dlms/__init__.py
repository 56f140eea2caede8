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


ACCEPTED, REFUSED = "accepted", "refused"


async def probe(link: Any, address: int, security: Any = None) -> str | None:
    """One association attempt, without retries, with the meter at HDLC physical ``address`` (the
    public client unless ``security`` says otherwise): ``"accepted"``, ``"refused"`` (it answered, so
    it is there, but wants another client, a password or a key) or None (silence or garbage);
    ``ModeENotOffered`` or ``SignOnUnanswered`` from a mode E opening is raised: it is the port's answer,
    not the address's.  A
    silent address costs the link's timeout: give the link a short one for scanning."""
    from drivers.base import BadFrame, MeterRefused, MeterTimeout
    from drivers.dlms.keys import DlmsSecurity
    from drivers.dlms.link import Target
    from drivers.dlms.opening import ModeENotOffered, SignOnUnanswered

    target = Target(1, address, security or DlmsSecurity())
    try:
        await link.converse(target, lambda _s: None, retries=0)
    except (ModeENotOffered, SignOnUnanswered):
        raise  # the port, not this address: no address will do better
    except MeterRefused:
        return REFUSED
    except (MeterTimeout, BadFrame):
        return None
    return ACCEPTED


async def scan(
    link: Any, addresses: Iterable[int], security: Any = None, progress: Callable[[int, int], None] | None = None
) -> list[int]:
    """HDLC physical addresses that answer on a line (``pmg scan`` for DLMS), in the order probed:
    those whose ``probe`` is accepted or refused."""
    return [a for a, answer in (await scan_answers(link, addresses, security, progress)).items() if answer]


async def scan_answers(
    link: Any, addresses: Iterable[int], security: Any = None, progress: Callable[[int, int], None] | None = None
) -> dict[int, str | None]:
    """Every address probed, in order, with its ``probe`` answer."""
    todo = list(addresses)
    out: dict[int, str | None] = {}
    for i, address in enumerate(todo, start=1):
        out[address] = await probe(link, address, security)
        if progress:
            progress(i, len(todo))
    return out
