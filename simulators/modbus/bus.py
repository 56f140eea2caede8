"""A bus of simulated Modbus meters served by pymodbus on TCP and on a pseudo-terminal.

The servers run on their own asyncio loop in a background thread, so a synchronous test, an async
test or a separate process can host them alike; ``stop()`` closes every server, bridge and file
descriptor and joins the thread.

Modbus TCP is served directly.  RTU over a pseudo-terminal is served by pymodbus's RTU framer on
a loopback socket, bridged byte for byte to the pty master: pymodbus opens serial ports by name and
a pty master has none.  The bridge can emulate line speed (11 bit times per byte), which a pty
does not.  Frame-level faults are applied to the reply bytes: ``NO_ANSWER`` drops the reply,
``WRONG_UNIT`` re-addresses it to another unit (with a valid CRC), and a unit id not on the bus
never answers, as on a real RS-485 line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import tty
from collections.abc import Coroutine
from typing import Any, TypeVar

from pymodbus.framer import FramerRTU, FramerType
from pymodbus.server import ModbusTcpServer

from drivers.modbus.profile import Profile
from simulators.modbus.device import build_device
from simulators.model import Fault, MeterModel

T = TypeVar("T")
_CALL_TIMEOUT_S = 10.0


def _other_unit(unit: int) -> int:
    return unit + 1 if unit < 247 else 1


class SimulatedModbusBus:
    """Several simulated meters (unit id → model and profile) on one bus."""

    def __init__(self, meters: dict[int, tuple[MeterModel, Profile]]) -> None:
        for unit in meters:
            if not 1 <= unit <= 247:
                raise ValueError(f"unit id {unit} is outside 1..247")
        if not meters:
            raise ValueError("a simulated bus needs at least one meter")
        self.meters = meters
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[ModbusTcpServer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._fds: list[int] = []
        self._readers: list[int] = []
        self._writers: list[asyncio.StreamWriter] = []

    # -- public ----------------------------------------------------------------------------------
    def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve Modbus TCP; returns the port actually bound."""
        return self._call(self._serve(host, port, FramerType.SOCKET))

    def start_pty(self, baud: int | None = None) -> str:
        """Serve Modbus RTU on a new pseudo-terminal; returns the slave path for the master to open.

        With ``baud`` the replies are paced at 11 bit times per byte (8E1/8N2 framing)."""
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        self._fds += [master, slave]  # the slave stays open: a master read fails once all slaves close
        path = os.ttyname(slave)
        port = self._call(self._serve("127.0.0.1", 0, FramerType.RTU))
        byte_s = 11.0 / baud if baud else 0.0
        self._call(self._bridge(master, port, byte_s))
        return path

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_CALL_TIMEOUT_S)
        loop.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._loop = self._thread = None

    def __enter__(self) -> SimulatedModbusBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- loop thread -----------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="modbus-sim", daemon=True)
            thread.start()
            self._loop, self._thread = loop, thread
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT_S)

    async def _serve(self, host: str, port: int, framer: FramerType) -> int:
        devices = [build_device(unit, model, profile) for unit, (model, profile) in self.meters.items()]
        server = ModbusTcpServer(
            devices,
            framer=framer,
            address=(host, port),
            trace_packet=lambda sending, data: self._on_packet(framer, sending, data),
        )
        await server.serve_forever(background=True)
        self._servers.append(server)
        sockets = getattr(server.transport, "sockets", None) or []
        return int(sockets[0].getsockname()[1])

    def _on_packet(self, framer: FramerType, sending: bool, data: bytes) -> bytes:
        """Apply frame faults to a reply (requests pass untouched)."""
        if not sending or not data:
            return data
        pos = 6 if framer is FramerType.SOCKET else 0
        if len(data) <= pos:
            return data
        unit = data[pos]
        entry = self.meters.get(unit)
        if entry is None or entry[0].has(Fault.NO_ANSWER):
            return b""
        if entry[0].has(Fault.WRONG_UNIT):
            out = bytearray(data)
            out[pos] = _other_unit(unit)
            if framer is FramerType.RTU:
                body = bytes(out[:-2])
                return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")
            return bytes(out)
        return data

    async def _bridge(self, master: int, port: int, byte_s: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self._writers.append(writer)
        loop = asyncio.get_running_loop()

        def pty_readable() -> None:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if data:
                writer.write(data)

        loop.add_reader(master, pty_readable)
        self._readers.append(master)

        async def replies() -> None:
            while data := await reader.read(4096):
                if byte_s:
                    await asyncio.sleep(len(data) * byte_s)
                os.write(master, data)

        self._tasks.append(asyncio.create_task(replies()))

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self._readers:
            loop.remove_reader(fd)
        self._readers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._writers.clear()
        for server in self._servers:
            await server.shutdown()
        self._servers.clear()
