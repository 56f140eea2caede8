"""Several simulated DLMS meters on one HDLC line, with the IEC 62056-21 mode E opening when asked.

A line is what a gateway's serial port sees: a pty (the device path is the URL) or a TCP socket as a
serial device server carries it (``socket://host:port``).  Every meter hears every frame and the Gurux
peer of each answers only the frames addressed to its HDLC physical address, so ``pmg scan`` finds
them by address as on a real RS-485 line.  The meters are ``simulators.dlms_meter`` ones
(``DlmsSimMeter`` on a ``DlmsMeterModel``): the same model, faults and peer.

``opening = "iec62056-21"`` makes the line an optical port in mode E (IEC 62056-21): the meter ignores
HDLC until a sign-on ``/?!`` CR LF arrives at 300 baud, answers its identification with ``\\2`` (mode E)
after the baud character, and after the acknowledgement ``ACK 2 Z 2`` CR LF speaks HDLC at the
baud ``Z`` names; a DISC ends the session and the port is back at the opening.  ``opening = "mode-c"``
answers the sign-on without ``\\2`` (a meter that offers no HDLC there) and never speaks HDLC.
Characters of the opening are 7E1: seven data bits and an even parity bit, which on the wire is the
same as 8N1 with the parity in bit 7 (a Linux pty refuses CS7 and PARENB), so both sides set it in
software.  On a pty the line speed the client set is visible from the master side: bytes sent at
another speed than the one the meter listens at are garbage to it and are ignored, as on a real line.
"""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import termios
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from simulators.dlms_meter import DlmsMeterModel, DlmsSimMeter

OPENINGS = (None, "iec62056-21", "mode-c")
BAUD_CHARS = {300: "0", 600: "1", 1200: "2", 2400: "3", 4800: "4", 9600: "5", 19200: "6"}
ACK = 0x06
_SIGN_ON = re.compile(rb"/\?([0-9A-Za-z ]{0,32})!\r\n")
_OPTION = re.compile(rb"\x06([0-9])([0-9])([0-9])\r\n")
_SPEEDS = {getattr(termios, f"B{b}"): b for b in (300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)}


def with_parity(text: bytes) -> bytes:
    """7E1 characters as 8N1 bytes: bit 7 makes the count of one bits even."""
    return bytes(c | (0x80 if bin(c & 0x7F).count("1") % 2 else 0) for c in text)


def strip_parity(data: bytes) -> bytes | None:
    """The 7-bit characters of 7E1 bytes; None when a byte's parity is wrong."""
    if any(bin(c).count("1") % 2 for c in data):
        return None
    return bytes(c & 0x7F for c in data)


def is_disc(frame: bytes) -> bool:
    """An HDLC frame (IEC 62056-46) whose control field is DISC (0x43, with or without the poll bit)."""
    at = 3  # flag, two bytes of frame format
    for _ in range(2):  # destination then source address: the last byte of each has bit 0 set
        while at < len(frame) and not frame[at] & 1:
            at += 1
        at += 1
    return at < len(frame) and frame[0] == 0x7E and frame[at] & 0xEF == 0x43


def hdlc_lower_address(frame: bytes) -> int | None:
    """The destination's lower (physical) HDLC address of a frame (IEC 62056-46: 1, 2 or 4 address
    bytes, seven bits each, the last with bit 0 set); None when the bytes do not start a frame or
    name no lower address."""
    if len(frame) < 4 or frame[0] != 0x7E:
        return None
    parts: list[int] = []
    for b in frame[3:7]:
        parts.append(b >> 1)
        if b & 1:
            break
    else:
        return None
    if len(parts) == 2:
        return parts[1]
    if len(parts) == 4:
        return (parts[2] << 7) | parts[3]
    return None


class DlmsLine:
    """Meters by HDLC physical address on one line; ``start_pty()`` or ``start_tcp()``, then ``stop()``."""

    def __init__(
        self,
        models: dict[int, DlmsMeterModel],
        *,
        baud: int = 9600,
        opening: str | None = None,
        emulate_timing: bool = False,
        logical: int = 1,
        password: bytes | None = None,
        passwords: dict[int, bytes] | None = None,
        manufacturer: str = "PMG",
    ) -> None:
        if not models:
            raise ValueError("a DLMS line needs at least one meter")
        if opening not in OPENINGS:
            raise ValueError(f"opening must be one of {', '.join(o for o in OPENINGS if o)} (got {opening!r})")
        if opening and len(models) > 1:
            raise ValueError("the IEC 62056-21 opening is point to point (an optical port): one meter only")
        if opening and baud not in BAUD_CHARS:
            raise ValueError(f"mode E baud must be one of {', '.join(map(str, BAUD_CHARS))} (got {baud})")
        self.models = models
        self.baud = baud
        self.opening = opening
        self.emulate_timing = emulate_timing
        self.ident = f"/{manufacturer[:3]}{BAUD_CHARS.get(baud, '5')}" + ("\\2" if opening == "iec62056-21" else "")
        self.ident += f"SIM{next(iter(models)):05d}\r\n"
        own = passwords or {}
        self.by_address = {
            a: DlmsSimMeter(m, hdlc=True, physical=a, logical=logical, password=own.get(a, password))
            for a, m in models.items()
        }
        self.meters = list(self.by_address.values())
        self.state = "hdlc" if opening is None else "idle"
        self.openings = 0  # sign-ons answered (for the tests and the log)
        self.ignored = 0  # chunks of bytes the meters could not take (wrong speed or state)
        self._buf = bytearray()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fds: list[int] = []
        self._sock: socket.socket | None = None
        self.url = ""

    # -- what the meter does with the bytes it hears ------------------------------------------------
    def _silent(self) -> bool:
        return all(m.fault == "silent" for m in self.models.values())

    def _hdlc(self, data: bytes) -> bytes:
        """Each frame reaches the meter it names (Gurux's server, once one association was set up,
        answers frames for other addresses too: the line's addressing is done here)."""
        lower = hdlc_lower_address(data)
        if lower is None or lower in (0x7F, 0x3FFF):
            return b"".join(m.answer(data) for m in self.meters)
        meter = self.by_address.get(lower)
        return meter.answer(data) if meter is not None else b""

    def handle(self, data: bytes, speed: int | None) -> bytes:
        """The line's answer to ``data`` received at ``speed`` baud (None: not knowable, TCP)."""
        if self.opening is None:
            return self._hdlc(data)
        if self.state == "hdlc":
            if speed is None or speed == self.baud:
                reply = self._hdlc(data)
                if is_disc(data):
                    self.state = "idle"
                    self._buf.clear()
                return reply
            self.state = "idle"  # a client back at 300 baud: the session was abandoned
            self._buf.clear()
        if speed is not None and speed != 300:
            self.ignored += 1
            return b""
        self._buf += data
        del self._buf[:-256]
        text = strip_parity(bytes(self._buf))
        if text is None:
            self._buf.clear()
            self.ignored += 1
            return b""
        if self.state == "idle":
            if _SIGN_ON.search(text) is None:
                return b""
            self._buf.clear()
            if self._silent():
                return b""
            self.openings += 1
            self.state = "ident" if self.opening == "iec62056-21" else "idle"
            return with_parity(self.ident.encode())
        option = _OPTION.search(text)  # state "ident": the acknowledgement / option select
        if option is None:
            if _SIGN_ON.search(text) is not None:
                self.state = "idle"
                return self.handle(b"", speed)
            return b""
        self._buf.clear()
        v, z, y = (g.decode() for g in option.groups())
        self.state = "hdlc" if (v, z, y) == ("2", BAUD_CHARS[self.baud], "2") else "idle"
        return b""

    # -- serving ------------------------------------------------------------------------------------
    def _pace(self, data: bytes, reply: bytes, speed: int | None) -> None:
        if self.emulate_timing:
            time.sleep((len(data) + len(reply)) * 10 / (speed or self.baud))

    def start_pty(self) -> str:
        master, slave = pty.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self._fds += [master, slave]
        self.url = os.ttyname(slave)

        def speed() -> int | None:
            try:
                return _SPEEDS.get(termios.tcgetattr(master)[4])
            except termios.error:
                return None

        self._thread(lambda: self._serve_fd(master, speed))
        return self.url

    def _serve_fd(self, fd: int, speed: Callable[[], int | None]) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            at = speed()
            reply = self.handle(data, at)
            self._pace(data, reply, at)
            if reply:
                self._send(lambda b: os.write(fd, b), reply)

    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.1)
        bound = int(self._sock.getsockname()[1])
        self.url = f"socket://{host}:{bound}"
        self._thread(self._serve_tcp)
        return bound

    def _serve_tcp(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            conn.settimeout(0.1)
            with conn:
                while not self._stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    reply = self.handle(data, None)
                    self._pace(data, reply, None)
                    if reply:
                        try:
                            self._send(conn.sendall, reply)
                        except OSError:
                            break

    def _send(self, write: Callable[[bytes], Any], reply: bytes) -> None:
        slow = [m for m in self.models.values() if m.fault == "slow"]
        if not slow:
            write(reply)
            return
        for i in range(len(reply)):
            if self._stop.wait(slow[0].slow_byte_s):
                return
            write(reply[i : i + 1])

    def _thread(self, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name="dlms-line-sim", daemon=True)
        self._threads.append(t)
        t.start()

    def stop(self) -> None:
        """Stop serving and close the pty or socket (idempotent)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> DlmsLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
