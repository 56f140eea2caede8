"""A simulated DLMS/COSEM prepaid meter on the independent peer (``simulators.dlms_peer``, Gurux).

The model is the same as the other simulated meters': a load that draws ``power_w`` while the relay
is closed, energy that accumulates only then (into the active tariff's register as well as the
total), a clock, and the disconnect control object (class 70) with its control modes, so a remote
disconnect really stops consumption and, in modes 2 and 4, a remote reconnect only permits closing
until the customer presses the button (``press_button``).  It answers over the TCP wrapper
(``serve_tcp``) or HDLC on a pty (``serve_pty``).

Faults (``fault``): ``silent`` (no answer), ``bad_fcs`` (HDLC replies with a corrupted frame check
sequence; on the wrapper, which has none, a mangled APDU), ``refuse`` (association refused), ``slow`` (reply bytes
trickle out ``slow_byte_s`` apart).  A wrong password is refused by the peer's own check.

Run one by hand: ``python -m simulators.dlms_meter --tcp 4059`` or ``--pty``.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import socket
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from gurux_dlms.enums import DataType, Unit
from gurux_dlms.GXDateTime import GXDateTime
from gurux_dlms.objects import GXDLMSClock, GXDLMSData, GXDLMSDisconnectControl, GXDLMSRegister

from simulators.dlms_peer import INVOCATION_COUNTER_OBIS, HlsSecrets, PeerServer

DISCONNECTED, CONNECTED, READY = 0, 1, 2
_DIRECT_RECONNECT = {1, 3, 5, 6}  # control modes with transition d (remote_reconnect closes directly)
FAULTS = (None, "silent", "bad_fcs", "refuse", "slow")


@dataclass
class DlmsMeterModel:
    """The meter's physics and state; the peer's objects are refreshed from it before each request."""

    power_w: Decimal = Decimal(1000)
    voltage_v: Decimal = Decimal("230.1")
    energy_wh: Decimal = Decimal(0)
    export_wh: Decimal = Decimal(0)
    tariffs_wh: list[Decimal] = field(default_factory=lambda: [Decimal(0)] * 4)
    active_tariff: int = 1
    control_mode: int = 1
    control_state: int = CONNECTED
    clock_offset: timedelta = timedelta(0)
    fault: str | None = None
    slow_byte_s: float = 0.05
    energy_scaler: int = 0
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    _last: datetime | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    actions: list[str] = field(default_factory=list)
    hls: HlsSecrets | None = None  # HLS-GMAC keys and counters: the meter then accepts HLS (and the public client)

    @property
    def output(self) -> bool:
        return self.control_state == CONNECTED

    def advance(self) -> None:
        """Accumulate energy up to now: only while the output is closed."""
        with self.lock:
            t = self.now()
            if self._last is not None and self.output and t > self._last:
                wh = self.power_w * Decimal((t - self._last).total_seconds()) / 3600
                self.energy_wh += wh
                self.tariffs_wh[self.active_tariff - 1] += wh
            self._last = t

    def remote(self, method: int) -> None:
        """Class 70 methods (IEC 62056-6-2, 4.5.8): 1 remote_disconnect (b, c), 2 remote_reconnect (a, d)."""
        with self.lock:
            self.advance()
            if method == 1 and self.control_mode != 0:
                self.control_state = DISCONNECTED
            elif method == 2 and self.control_state == DISCONNECTED:
                self.control_state = CONNECTED if self.control_mode in _DIRECT_RECONNECT else READY
            self.actions.append({1: "remote_disconnect", 2: "remote_reconnect"}.get(method, str(method)))

    def press_button(self) -> None:
        """manual_reconnect (e): the customer closes a relay that is ready for reconnection."""
        with self.lock:
            self.advance()
            if self.control_state == READY:
                self.control_state = CONNECTED

    def meter_time(self) -> datetime:
        return self.now() + self.clock_offset


class DlmsSimMeter:
    """The model's objects on a Gurux peer: one per connection (wrapper) or per line (HDLC)."""

    def __init__(
        self, model: DlmsMeterModel, *, hdlc: bool, physical: int | None = 17, logical: int = 1,
        password: bytes | None = None,
    ) -> None:
        self.model = model
        self.hdlc = hdlc

        def reg(obis: str, dtype: Any, scaler: int, unit: Any) -> GXDLMSRegister:
            r = GXDLMSRegister(obis)
            r.scaler = 10.0**scaler  # Gurux keeps the multiplier and sends floor(log10(multiplier))
            r.unit = unit
            r.value = 0
            r.setDataType(2, dtype)
            return r

        s = model.energy_scaler
        self.energy = reg("1.0.1.8.0.255", DataType.UINT32, s, Unit.ACTIVE_ENERGY)
        self.export = reg("1.0.2.8.0.255", DataType.UINT32, s, Unit.ACTIVE_ENERGY)
        self.tariffs = [reg(f"1.0.1.8.{i}.255", DataType.UINT32, s, Unit.ACTIVE_ENERGY) for i in range(1, 5)]
        self.voltage = reg("1.0.32.7.0.255", DataType.UINT16, -1, Unit.VOLTAGE)
        self.current = reg("1.0.31.7.0.255", DataType.UINT32, -3, Unit.CURRENT)
        self.power = reg("1.0.1.7.0.255", DataType.INT32, -1, Unit.ACTIVE_POWER)
        self.clock = GXDLMSClock()
        self.disconnect = GXDLMSDisconnectControl("0.0.96.3.10.255")
        self._clock_sent: Any = None
        self.counter = GXDLMSData(INVOCATION_COUNTER_OBIS)  # the client's last invocation counter (HLS)
        self.counter.value = 0
        self.counter.setDataType(2, DataType.UINT32)
        self.server = PeerServer(
            [self.energy, self.export, *self.tariffs, self.voltage, self.current, self.power, self.clock, self.disconnect,
             *([self.counter] if model.hls is not None else [])],
            hdlc=hdlc,
            physical=physical if hdlc else None,
            logical=logical,
            password=password,
            on_action=self._action,
            on_write=self._write,
            refuse=lambda: model.fault == "refuse",
            hls=model.hls,
        )

    def _raw(self, wh: Decimal) -> int:
        return int((wh.scaleb(-self.model.energy_scaler)).to_integral_value(rounding=ROUND_FLOOR)) % (1 << 32)

    def refresh(self) -> None:
        m = self.model
        with m.lock:
            m.advance()
            self.energy.value = self._raw(m.energy_wh)
            self.export.value = self._raw(m.export_wh)
            for reg, wh in zip(self.tariffs, m.tariffs_wh, strict=True):
                reg.value = self._raw(wh)
            on = m.output
            self.voltage.value = int(m.voltage_v * 10)
            self.power.value = int(m.power_w * 10) if on else 0
            self.current.value = int(m.power_w / m.voltage_v * 1000) if on else 0
            self._clock_sent = GXDateTime(m.meter_time().replace(microsecond=0))
            self.clock.time = self._clock_sent
            self.disconnect.outputState = on
            self.disconnect.controlState = m.control_state
            self.disconnect.controlMode = m.control_mode
            if m.hls is not None:
                self.counter.value = m.hls.client_counter or 0

    def _action(self, e: Any) -> None:
        if e.target is self.disconnect:
            self.model.remote(int(e.index))
            e.handled = True
            e.value = 0
            self.refresh()

    def _write(self, e: Any) -> None:
        if e.target is self.clock and e.index == 2:
            written = self.clock.time
            value = written.value if hasattr(written, "value") else written
            if isinstance(value, datetime):
                aware = value if value.tzinfo else value.replace(tzinfo=UTC)
                with self.model.lock:
                    self.model.clock_offset = aware - self.model.now()
            self.refresh()

    def answer(self, data: bytes) -> bytes:
        """The reply to ``data`` with the fault applied (``b""``: say nothing)."""
        with self.model.lock:
            self.refresh()
            reply = self.server.answer(data)
        fault = self.model.fault
        if not reply or fault == "silent":
            return b""
        if fault == "bad_fcs":
            if self.hdlc and len(reply) > 4:
                reply = reply[:-2] + bytes([reply[-2] ^ 0xFF]) + reply[-1:]
            elif not self.hdlc and len(reply) > 8:
                reply = reply[:8] + b"\xff" + reply[9:]  # no check sequence on TCP: a mangled APDU tag
        return reply


def _send(write: Callable[[bytes], Any], model: DlmsMeterModel, reply: bytes, stop: threading.Event) -> None:
    if model.fault == "slow":
        for i in range(len(reply)):
            if stop.wait(model.slow_byte_s):
                return
            write(reply[i : i + 1])
    else:
        write(reply)


class DlmsTcpServer:
    """The TCP wrapper (IEC 62056-9-7): one meter, one client connection at a time, on a thread."""

    def __init__(self, model: DlmsMeterModel, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        self.model = model
        self.kw = kw
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"tcp://{host}:{self.port}"
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="dlms-tcp-sim", daemon=True)
        self.connections = 0

    def start(self) -> DlmsTcpServer:
        self.thread.start()
        return self

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            meter = DlmsSimMeter(self.model, hdlc=False, **self.kw)
            conn.settimeout(0.1)
            with conn:
                while not self.stop_event.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    reply = meter.answer(data)
                    if reply:
                        try:
                            _send(conn.sendall, self.model, reply, self.stop_event)
                        except OSError:
                            break

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        self.sock.close()


class DlmsPtyServer:
    """HDLC on a pty: ``path`` is the device the gateway opens; one meter on the line."""

    def __init__(self, model: DlmsMeterModel, *, baud: int | None = None, **kw: Any) -> None:
        self.model = model
        self.baud = baud  # pace the line as a real one (10 bits a byte, 8N1); None: as fast as a pty
        self.master, self.slave = pty.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.meter = DlmsSimMeter(model, hdlc=True, **kw)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="dlms-pty-sim", daemon=True)

    @property
    def url(self) -> str:
        return self.path

    def start(self) -> DlmsPtyServer:
        self.thread.start()
        return self

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            # The peer frames HDLC itself (by the frame's length field: a 7E inside a frame is data).
            reply = self.meter.answer(data)
            if self.baud:  # the request's bytes and the reply's take their time on a real line
                time.sleep((len(data) + len(reply)) * 10 / self.baud)
            if reply:
                _send(lambda b: os.write(self.master, b), self.model, reply, self.stop_event)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.dlms_meter", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", type=int, metavar="PORT", help="serve the TCP wrapper on this port (0: any)")
    where.add_argument("--pty", action="store_true", help="serve HDLC on a new pty (its path is printed)")
    parser.add_argument("--power-w", default="1000")
    parser.add_argument("--control-mode", type=int, default=1, choices=range(7))
    parser.add_argument("--fault", choices=[f for f in FAULTS if f])
    args = parser.parse_args(argv)
    model = DlmsMeterModel(power_w=Decimal(args.power_w), control_mode=args.control_mode, fault=args.fault)
    server: DlmsTcpServer | DlmsPtyServer = (
        DlmsTcpServer(model, port=args.tcp) if args.tcp is not None else DlmsPtyServer(model)
    )
    server.start()
    print(server.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
