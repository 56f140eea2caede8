"""DL/T 645-2007 (and -1997) meters: pure frame codec, DI table, bus link, meter, bus scan.

Finding meters whose addresses are unknown on a shared bus: ``drivers.dlt645.search``.
"""

from drivers.dlt645.frame import BROADCAST, WILDCARD, Dlt645Refused, ErrorFlags, Frame, FrameError
from drivers.dlt645.link import Dlt645Link, LinkError
from drivers.dlt645.meter import Dlt645Meter, broadcast_time, read_address, scan

__all__ = [
    "BROADCAST",
    "WILDCARD",
    "Dlt645Link",
    "Dlt645Meter",
    "Dlt645Refused",
    "ErrorFlags",
    "Frame",
    "FrameError",
    "LinkError",
    "broadcast_time",
    "read_address",
    "scan",
]
