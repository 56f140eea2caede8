"""Build bus links and meters from plain settings, so callers never import a protocol module.

The gateway's bus workers and the technician commands (``pmg read``, ``pmg scan``) both come here;
adding a protocol means adding a branch here and a package beside it, nothing above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Protocol

from drivers.base import Meter

PROTOCOLS = ("dlt645", "modbus", "dlms")


class Link(Protocol):
    """One physical bus (or one TCP connection): opened once, owned by one bus worker.

    Once open, a link that fails reopens itself with backoff (``drivers.backoff``); its owner may ask
    for a reopen now (SIGHUP) and reads its counters for status and metrics."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def request_reopen(self) -> None: ...

    @property
    def down(self) -> bool: ...


@dataclass(frozen=True)
class LinkSettings:
    protocol: str
    url: str
    baud: int | None = None
    parity: str | None = None
    timeout_s: float = 1.0
    retries: int = 2
    inter_frame_gap_s: float = 0.02
    opening: str = "none"
    """DLMS on HDLC: ``iec62056-21`` for the mode E opening (``drivers.dlms.opening``)."""


def make_link(s: LinkSettings) -> Link:
    """A link for the protocol; nothing is opened yet."""
    if s.protocol == "dlt645":
        from drivers.dlt645.link import Dlt645Link

        return Dlt645Link(
            s.url,
            baud=s.baud or 2400,
            parity=s.parity or "E",
            timeout_s=s.timeout_s,
            retries=s.retries,
            inter_frame_gap_s=s.inter_frame_gap_s,
        )
    if s.protocol == "modbus":
        from drivers.modbus.link import ModbusLink

        return ModbusLink(
            s.url,
            baud=s.baud or 9600,
            parity=s.parity or "N",
            timeout_s=s.timeout_s,
            retries=s.retries,
            inter_frame_gap_s=s.inter_frame_gap_s,
        )
    if s.protocol == "dlms":
        from drivers.dlms.link import DlmsLink

        return DlmsLink(
            s.url,
            baud=s.baud or 9600,
            parity=s.parity or "N",
            timeout_s=s.timeout_s,
            retries=s.retries,
            inter_frame_gap_s=s.inter_frame_gap_s,
            opening=s.opening,
        )
    raise ValueError(f"unknown protocol '{s.protocol}' (known: {', '.join(PROTOCOLS)})")


def make_meter(
    protocol: str,
    link: Link,
    address: str,
    profile: str | None = None,
    *,
    tz: tzinfo | None = None,
    clock: Callable[[], datetime] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Meter:
    """A meter on ``link``: a 12-digit DL/T 645 address, or a Modbus unit id with its profile name.

    ``tz`` is the zone the meters' clocks keep (DL/T 645 meters hold naive local time; relay command
    deadlines and time sync are written in it).  ``clock`` is the caller's clock (aware UTC), so that
    reading times and relay deadlines agree with the rest of the gateway's time.
    """
    extra: dict[str, Any] = {"clock": clock} if clock is not None else {}
    if protocol == "dlt645":
        from drivers.dlt645.meter import Dlt645Meter

        return Dlt645Meter(link, address, tz=tz, **extra)  # type: ignore[arg-type]
    if protocol == "modbus":
        from drivers.modbus.meter import ModbusMeter
        from drivers.modbus.profile import load_profile

        if profile is None:
            raise ValueError("a Modbus meter needs a profile")
        if not address.isdigit() or not 1 <= int(address) <= 247:
            raise ValueError(f"Modbus unit id must be 1–247 (got '{address}')")
        return ModbusMeter(link, int(address), load_profile(profile), **extra)  # type: ignore[arg-type]
    if protocol == "dlms":
        return _dlms_meter(link, address, profile, tz=tz, extra=extra, options=options or {})
    raise ValueError(f"unknown protocol '{protocol}' (known: {', '.join(PROTOCOLS)})")


def _dlms_meter(
    link: Link, address: str, profile: str | None, *, tz: tzinfo | None, extra: dict[str, Any],
    options: Mapping[str, Any],
) -> Meter:
    """A DLMS meter: ``address`` is the HDLC physical address on a serial line, the logical device on
    the TCP wrapper; ``options`` carries ``logical`` (HDLC), ``client``, ``auth``, ``key_file`` and
    ``invocation_counter`` (the meter's counter object for HLS-GMAC, or ``none``)."""
    from drivers.dlms.counter import (
        DEFAULT_OBIS,
        ClientCounter,
        CounterFile,
        check_counter_obis,
        counter_path,
    )
    from drivers.dlms.keys import PUBLIC_CLIENT, load_security
    from drivers.dlms.link import DlmsLink, Target
    from drivers.dlms.meter import DlmsMeter
    from drivers.dlms.profile import load_profile

    if not isinstance(link, DlmsLink):
        raise ValueError("a DLMS meter needs a DLMS link")
    if not address.isdigit() or not 0 <= int(address) <= 0x3FFF:
        raise ValueError(f"DLMS address must be 0–16383 (got '{address}')")
    security = load_security(options.get("auth", "none"), int(options.get("client", PUBLIC_CLIENT)), options.get("key_file"))
    if link.wrapper:
        target = Target(logical=int(address), physical=None, security=security)
    else:
        target = Target(logical=int(options.get("logical", 1)), physical=int(address), security=security)
    if tz is not None:
        extra = {**extra, "tz": tz}
    obis = check_counter_obis(options.get("invocation_counter") or DEFAULT_OBIS)
    if security.auth == "hls-gmac":  # the counter file beside the key file: see drivers/dlms/counter.py
        path = counter_path(options["key_file"], f"{link.url}_{target}", security.client)
        extra = {**extra, "counter": ClientCounter(CounterFile(path)), "counter_obis": obis}
    return DlmsMeter(link, target, load_profile(profile or "generic"), **extra)
