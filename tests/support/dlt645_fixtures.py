"""Shared fixtures for the DL/T 645 tests (imported explicitly; not a conftest).

``ScriptedMeter`` is a real TCP server that answers each request frame with bytes chosen by a
test, to put exact wire conditions (noise, echoes, broken frames) in front of the link.
``sim_bus`` starts a ``SimulatedDlt645Bus`` and guarantees it is stopped.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from drivers.dlt645.frame import Frame, scan

Script = Callable[[Frame], bytes]


def count_hand_offs(link: Any) -> Callable[[], int]:
    """From now on, count the link's trips to its thread (``link._run``); returns the counter's reader.

    A poll or a retried request is meant to cost one trip: each costs the event loop more CPU than
    the frame itself."""
    trips = 0
    run = link._run

    async def counting_run(fn: Callable[[], Any]) -> Any:
        nonlocal trips
        trips += 1
        return await run(fn)

    link._run = counting_run
    return lambda: trips


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop (this project has no pytest-asyncio)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


class ScriptedMeter:
    """TCP peer that replies to the n-th request with ``script[n](request)`` (last one repeats)."""

    def __init__(self, script: list[Script]) -> None:
        self.script = script
        self.requests: list[Frame] = []
        self._srv = socket.socket()
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen()
        self._srv.settimeout(0.2)
        self.port = self._srv.getsockname()[1]
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._run, name="scripted-meter", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except OSError:
                continue
            conn.settimeout(0.1)
            self._conns.append(conn)
            buf = b""
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                buf += data
                while (result := scan(buf)).frame is not None:
                    buf = buf[result.end :]
                    request = result.frame
                    self.requests.append(request)
                    step = self.script[min(len(self.requests) - 1, len(self.script) - 1)]
                    out = step(request)
                    if out:
                        conn.sendall(out)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for c in self._conns:
            c.close()
        self._srv.close()


@pytest.fixture
def scripted() -> Iterator[Callable[[list[Script]], ScriptedMeter]]:
    made: list[ScriptedMeter] = []

    def make(script: list[Script]) -> ScriptedMeter:
        m = ScriptedMeter(script)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


class ManualClock:
    """A clock a test moves by hand (seconds since the epoch)."""

    def __init__(self, start: float = 1_779_998_400.0) -> None:  # 2026-05-28 20:00 UTC, on the hour
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def sim_bus() -> Iterator[Callable[..., Any]]:
    """Factory for simulated buses; every bus made is stopped at teardown."""
    from simulators.dlt645 import SimulatedDlt645Bus

    made: list[SimulatedDlt645Bus] = []

    def make(models: list[Any], **kw: Any) -> SimulatedDlt645Bus:
        kw.setdefault("emulate_timing", False)
        kw.setdefault("response_delay_s", 0.0)
        bus = SimulatedDlt645Bus(models, **kw)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.stop()
