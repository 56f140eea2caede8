"""DLMS/COSEM meters (IEC 62056): HDLC on a serial line or the TCP wrapper, reads by OBIS, class 70 relay.

The codec is the ``dlms-cosem`` library (APDUs, HDLC frames, the association, HLS-GMAC); this package
adds what the gateway needs around it: a link that owns one line and runs one conversation at a time
(``link``), profiles that name the OBIS codes a meter model offers (``profile``), exact values with
their scaler-unit (``values``), the meter's keys from a key file (``keys``) and the meter itself
(``meter``).  docs/sources/protocols.md ("DLMS/COSEM") cites the standards.

``dlms-cosem`` logs every APDU through structlog, the association request (with a low-level password)
included, and structlog prints to stdout by default: its output is switched off here, once, so that
no key or password can reach a log (``quiet_library_logs``).
"""

from __future__ import annotations

import logging
from typing import Any

import structlog


def _drop(logger: Any, method: str, event: Any) -> Any:
    raise structlog.DropEvent


def quiet_library_logs() -> None:
    """Drop everything ``dlms-cosem`` would log (APDUs, passwords, keys in reprs): below CRITICAL it
    is filtered before any formatting, and what is left is dropped by the only processor."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL), processors=[_drop]
    )


quiet_library_logs()
