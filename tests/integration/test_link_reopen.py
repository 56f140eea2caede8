"""Links that drop come back: the backoff schedule, and DL/T 645 links over ``socket://`` and a serial
port reopening after their peer went away (docs/operations.md, "Links that drop").

Real parts: the simulated meters serve a real TCP socket or pseudo-terminal; a serial "device" is a
symlink a test re-points to a new pty, as udev re-points /dev/serial/by-id when an adapter comes
back.  The backoff's clock is a manual one, so the schedule is exact and nothing waits for it.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import termios
import threading
from pathlib import Path

import pytest
import serial
from serial.rfc2217 import PortManager
from support.dlt645_fixtures import ManualClock, run_async, sim_bus  # noqa: F401  (fixture)

from drivers.backoff import Backoff
from drivers.base import BILLING_POINTS, Quality
from drivers.dlt645 import Dlt645Link, Dlt645Meter
from drivers.dlt645.link import LinkError
from simulators.dlt645 import make_models


class Mono:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fast_link(url: str, mono: Mono, **kw: object) -> Dlt645Link:
    opts: dict[str, object] = {"timeout_s": 0.3, "retries": 0, "backoff_s": 0.0, "inter_frame_gap_s": 0.0}
    opts.update(kw)
    return Dlt645Link(url, monotonic=mono, rng=random.Random(7), **opts)  # type: ignore[arg-type]


# -- the schedule ---------------------------------------------------------------------------------
def test_backoff_doubles_from_one_second_to_a_sixty_second_cap_with_jitter_in_the_upper_half() -> None:
    mono = Mono()
    b = Backoff(monotonic=mono, rng=random.Random(1))
    assert b.due() and b.wait_s() == 0
    waits = [b.failed() for _ in range(10)]
    steps = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    for wait, step in zip(waits, steps, strict=True):
        assert step / 2 <= wait <= step
    assert not b.due() and b.wait_s() == pytest.approx(waits[-1])
    mono.t += waits[-1]
    assert b.due()
    b.succeeded()
    assert b.failures == 0 and 0.5 <= b.failed() <= 1.0  # a new outage starts from the first step


def test_backoff_jitter_comes_from_the_injected_rng_and_spreads_links_apart() -> None:
    def schedule(seed: int) -> list[float]:
        b = Backoff(monotonic=Mono(), rng=random.Random(seed))
        return [b.failed() for _ in range(8)]

    assert schedule(3) == schedule(3)  # replayable
    assert schedule(3) != schedule(4)  # two links of one site do not knock at the same instant
    assert max(schedule(5)) <= 60.0
    with pytest.raises(ValueError):
        Backoff(first_s=0)


# -- socket:// ---------------------------------------------------------------------------------------
@run_async
async def test_socket_link_reopens_after_the_device_server_drops_and_returns(sim_bus) -> None:  # noqa: F811
    models = make_models(1, clock=ManualClock(), power_w=1000)
    address = models[0].address
    first = sim_bus(models)
    port = first.start_tcp()
    mono = Mono()
    async with fast_link(f"socket://127.0.0.1:{port}", mono) as link:
        meter = Dlt645Meter(link, address)
        assert (await meter.read(BILLING_POINTS)).quality is Quality.OK
        first.stop()  # the serial device server reboots: the connection is closed under us

        dropped = await meter.read(BILLING_POINTS)
        assert dropped.quality is not Quality.OK and link.down
        assert link.stats.link_errors == 1
        # A link that had carried exchanges is reopened by the very next request: the server is still
        # away, so that attempt fails and the backoff starts (1 s step, jittered into [0.5, 1]).
        assert (await meter.read(BILLING_POINTS)).quality is not Quality.OK
        assert link.stats.link_errors == 2 and 0.5 <= link.backoff.wait_s() <= 1.0
        # Until the step has passed, a request fails at once and does not knock.
        with pytest.raises(LinkError, match="next reopen in"):
            await link.request_many([])
        assert link.stats.link_errors == 2

        sim_bus(models).start_tcp(port=port)  # ... and the server is back on its port
        mono.t += 1.0
        back = await meter.read(BILLING_POINTS)
        assert back.quality is Quality.OK and not link.down
        assert link.stats.reopens == 1 and link.backoff.failures == 0


@run_async
async def test_socket_link_backs_off_while_the_server_stays_away(sim_bus) -> None:  # noqa: F811
    models = make_models(1, clock=ManualClock())
    first = sim_bus(models)
    port = first.start_tcp()
    mono = Mono()
    async with fast_link(f"socket://127.0.0.1:{port}", mono) as link:
        meter = Dlt645Meter(link, models[0].address)
        assert (await meter.read(BILLING_POINTS)).quality is Quality.OK
        first.stop()
        attempts: list[float] = []
        for _ in range(9):
            await meter.read(BILLING_POINTS)
            attempts.append(link.backoff.last_delay_s)
            mono.t += link.backoff.wait_s()  # the next attempt exactly when it is due
        steps = [min(60, 2**i) for i in range(8)]
        for wait, step in zip(attempts[1:], steps, strict=True):
            assert step / 2 <= wait <= step
        assert link.stats.link_errors == 9


# -- rfc2217:// -------------------------------------------------------------------------------------
class Rfc2217Server:
    """A minimal RFC 2217 access server (pyserial's ``PortManager``, as in its rfc2217_server example)
    in front of a simulated bus's TCP port: what a networked serial server with COM-port control is."""

    def __init__(self, target: str, port: int = 0) -> None:
        self.target = target
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", port))
        self._srv.listen()
        self._srv.settimeout(0.1)
        self.port = int(self._srv.getsockname()[1])
        self._stop = threading.Event()
        self._closers: list[object] = []
        self._threads = [threading.Thread(target=self._accept, name="rfc2217-server", daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), name="rfc2217-conn", daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        port = serial.serial_for_url(self.target, timeout=0.05)
        self._closers += [conn, port]

        class Wire:
            def write(self, data: bytes) -> None:
                with contextlib.suppress(OSError):
                    conn.sendall(data)

        manager = PortManager(port, Wire())

        def line_to_network() -> None:
            while not self._stop.is_set():
                try:
                    data = port.read(4096)
                except (serial.SerialException, OSError, AttributeError):  # closed under the thread
                    return
                if data:
                    Wire().write(b"".join(manager.escape(data)))

        threading.Thread(target=line_to_network, name="rfc2217-line", daemon=True).start()
        conn.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            port.write(b"".join(manager.filter(data)))

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        for thing in self._closers:
            with contextlib.suppress(Exception):
                thing.close()  # type: ignore[attr-defined]
        for t in self._threads:
            t.join(timeout=5)


@run_async
async def test_rfc2217_link_reopens_after_the_access_server_restarts(sim_bus) -> None:  # noqa: F811
    models = make_models(1, clock=ManualClock(), power_w=1000)
    sim_port = sim_bus(models).start_tcp()
    server = Rfc2217Server(f"socket://127.0.0.1:{sim_port}")
    port = server.port
    mono = Mono()
    try:
        async with fast_link(f"rfc2217://127.0.0.1:{port}?timeout=1", mono, timeout_s=0.5) as link:
            meter = Dlt645Meter(link, models[0].address)
            assert (await meter.read(BILLING_POINTS)).quality is Quality.OK
            server.close()  # the access server reboots
            for _ in range(3):  # noticed on this request or the next, then one refused reopen
                assert (await meter.read(BILLING_POINTS)).quality is not Quality.OK
                if link.backoff.failures:
                    break
            assert link.down and link.backoff.failures == 1 and link.stats.link_errors >= 2
            server = Rfc2217Server(f"socket://127.0.0.1:{sim_port}", port=port)  # ... and is back
            mono.t += link.backoff.wait_s()
            assert (await meter.read(BILLING_POINTS)).quality is Quality.OK
            assert link.stats.reopens == 1 and not link.down
    finally:
        server.close()


# -- serial ----------------------------------------------------------------------------------------
@run_async
async def test_serial_link_reopens_when_the_adapter_comes_back(sim_bus, tmp_path: Path) -> None:  # noqa: F811
    models = make_models(1, clock=ManualClock(), power_w=1000)
    device = tmp_path / "ttyRS485"
    first = sim_bus(models)
    os.symlink(first.start_pty(), device)
    mono = Mono()
    async with fast_link(str(device), mono) as link:
        meter = Dlt645Meter(link, models[0].address)
        assert (await meter.read(BILLING_POINTS)).quality is Quality.OK
        first.stop()  # the adapter is unplugged: its tty hangs up
        assert (await meter.read(BILLING_POINTS)).quality is not Quality.OK
        assert link.down and link.stats.link_errors >= 1
        tmp = tmp_path / "ttyRS485.new"
        os.symlink(sim_bus(models).start_pty(), tmp)
        os.replace(tmp, device)  # ... and is plugged in again
        mono.t += 120.0
        assert (await meter.read(BILLING_POINTS)).quality is Quality.OK
        assert link.stats.reopens == 1


@run_async
async def test_a_port_that_refuses_its_settings_on_reopen_is_a_counted_one_line_link_error(sim_bus) -> None:  # noqa: F811
    """A Linux pty opened at 8E1 opens once; every reopen after that fails in tcsetattr with
    termios.error (22, 'Invalid argument') (the pty reports PARENB cleared and refuses it set again),
    which pyserial does not wrap.
    It must be the link's LinkError — a failed read of the meter, a counted link error, one line —
    never a stray exception that escapes the bus worker."""
    models = make_models(1, clock=ManualClock())
    path = sim_bus(models).start_pty()
    mono = Mono()
    link = fast_link(path, mono, parity="E")
    await link.open()
    await link.close()
    with pytest.raises(LinkError) as caught:
        await link.open()
    message = str(caught.value)
    assert "Invalid argument" in message and "\n" not in message
    assert not isinstance(caught.value, termios.error)
    assert link.stats.link_errors == 1 and link.stats.last_link_error == message

    # The same through the reopen path of an open link (what SIGHUP asks for).
    tmp = sim_bus(make_models(1, clock=ManualClock(), start_address=9)).start_pty()  # a fresh pty opens once
    link = fast_link(tmp, mono, parity="E")
    async with link:
        meter = Dlt645Meter(link, "000000000009")
        assert (await meter.read(BILLING_POINTS)).quality is Quality.OK
        link.request_reopen()
        reading = await meter.read(BILLING_POINTS)
        assert reading.quality is not Quality.OK and "Invalid argument" in (reading.error or "")
        assert link.stats.link_errors == 1 and link.down
