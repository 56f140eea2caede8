"""paho served by the event loop (gateway/sync/paho_loop.py): what paho's own thread used to do.

Without paho's network thread nothing sends a PINGREQ but the link's once-a-second ``loop_misc``: an
idle connection must outlive the broker's keepalive timeout (1.5 × keepalive, MQTT 5 §3.1.2.10; without
the ``loop_misc`` calls Mosquitto drops it within 12 s at a keepalive of 5 s, and the test fails).  A
refused port says its error in one line and is retried; a stop while the broker has not answered the
CONNECT closes the socket and does not reconnect; and nothing of the link runs on another thread
once it is connected.  A stop on a slow line says goodbye before it closes (or the broker would
publish the last will, an older ``offline``, over the fresh one), and a connection attempt that
outlives the stop never brings its connection up.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from support.broker import Mosquitto
from support.gateway_harness import subscriber
from support.waiting import async_wait_for

from gateway.config import MqttConfig
from gateway.core.timeutil import system_clock
from gateway.store.db import open_store
from gateway.sync import paho_loop
from gateway.sync.mqtt import MqttLink

pytestmark = pytest.mark.broker


def _config(port: int, keepalive_s: int = 5) -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1", port=port, tls=False, allow_plaintext=True, keepalive_s=keepalive_s, client_id="loop-1"
    )


@asynccontextmanager
async def _running(tmp_path: Path, port: int, gateway_id: str) -> AsyncIterator[MqttLink]:
    """A link to ``port`` running on this loop; stopped (at most 5 s), its task gathered and its
    store closed on the way out, whatever the test did meanwhile (a second stop is harmless)."""
    store = open_store(tmp_path / "gw.db")
    link = MqttLink(_config(port), gateway_id, store, system_clock)
    task = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        await asyncio.wait_for(link.stop(0.5), 5)
        await asyncio.gather(task, return_exceptions=True)
        store.close()


def test_an_idle_connection_outlives_the_keepalive_and_callbacks_run_on_the_loop(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    threads: set[int] = set()

    async def scenario() -> MqttLink:
        async with _running(tmp_path, mosquitto.port, "gw-loop") as link:
            real = link._on_publish

            def on_publish(*args: object) -> None:
                threads.add(threading.get_ident())
                real(*args)  # type: ignore[arg-type]

            await async_wait_for(lambda: link.stats.subscribed, timeout=10, what="link up")
            assert link._client is not None
            link._client.on_publish = on_publish
            await asyncio.sleep(15.0)  # twice 1.5 × keepalive: Mosquitto checks its clients every few seconds
            assert link.stats.connected and link.stats.connects == 1, link.stats
            link.publish_raw("probe", {"n": 1})
            await async_wait_for(lambda: bool(threads), timeout=5, what="PUBACK of the probe")
            assert threads == {threading.get_ident()}  # the loop's thread, not paho's
        return link

    link = asyncio.run(scenario())
    assert not link.stats.connected


def test_a_refused_port_says_why_and_is_retried(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> MqttLink:
        async with _running(tmp_path, port, "gw-loop") as link:
            await async_wait_for(lambda: link.stats.connect_failures >= 2, timeout=10, what="a retry")
        return link

    link = asyncio.run(scenario())
    assert link.stats.connects == 0
    error = link.stats.last_error or ""
    assert error.startswith(f"cannot connect to 127.0.0.1:{port}: ") and "refused" in error.lower(), error
    assert "\n" not in error


def test_a_stop_before_the_connack_closes_the_socket_and_does_not_reconnect(tmp_path: Path) -> None:
    """A server that takes the TCP connection and never answers the CONNECT."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with _running(tmp_path, port, "gw-loop") as link:
            conn, _ = await loop.run_in_executor(None, server.accept)
            accepted.append(conn)
            conn.settimeout(5)
            assert (await loop.run_in_executor(None, conn.recv, 1))[:1] == b"\x10"  # CONNECT
            assert not link.stats.connected
        assert link._driver is not None and not link._driver.has_socket

    try:
        asyncio.run(scenario())
        conn = accepted[0]
        conn.settimeout(5)
        while conn.recv(4096):  # the rest of the CONNECT, then the close
            pass
        server.settimeout(2.5)  # longer than the first reconnect wait (1 s): nobody comes back
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        for conn in accepted:
            conn.close()
        server.close()


async def _delaying_proxy(target_port: int, delay_s: float) -> asyncio.Server:
    """A TCP relay to the broker that holds every chunk ``delay_s`` each way (a slow uplink)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(relay, "127.0.0.1", 0)


def test_a_stop_on_a_slow_line_says_goodbye_before_it_closes(mosquitto: Mosquitto, tmp_path: Path) -> None:
    with subscriber(mosquitto.port, "pmg/gw-slow/status") as hq:

        async def scenario() -> MqttLink:
            proxy = await _delaying_proxy(mosquitto.port, 0.05)
            try:
                async with _running(tmp_path, proxy.sockets[0].getsockname()[1], "gw-slow") as link:
                    await async_wait_for(lambda: link.stats.subscribed, timeout=10, what="link up")
                    await link.stop(1.0)
                    assert not link.stats.connected
            finally:
                proxy.close()
            await asyncio.sleep(1.0)  # a last will would be published now, when the broker sees the close
            return link

        asyncio.run(scenario())
        states = [m["state"] for m in hq.of("/status")]
    assert states == ["online", "offline"], states  # the goodbye, and no will after it


def test_an_attempt_that_outlives_the_stop_never_comes_up(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection attempt stuck in name resolution or a handshake past stop()'s wait."""
    entered, release = threading.Event(), threading.Event()
    real = paho.Client._create_socket_connection

    def slow(self: paho.Client) -> socket.socket:
        entered.set()
        release.wait(10)
        return real(self)  # type: ignore[no-any-return]

    with subscriber(mosquitto.port, "pmg/gw-late/status") as hq:  # connected before the slow connect
        monkeypatch.setattr(paho.Client, "_create_socket_connection", slow)
        monkeypatch.setattr(paho_loop, "ATTEMPT_WAIT_S", 0.2)

        async def scenario() -> MqttLink:
            try:
                async with _running(tmp_path, mosquitto.port, "gw-late") as link:
                    await async_wait_for(entered.is_set, timeout=5, what="an attempt under way")
                    await asyncio.wait_for(link.stop(0.5), 5)
                    release.set()  # the attempt now connects to the broker, after the stop
                    await asyncio.sleep(1.5)
                    assert link._driver is not None and not link._driver.has_socket
                    assert not link.stats.connected and link.stats.connects == 0
            finally:
                release.set()
            return link

        asyncio.run(scenario())
        states = [m["state"] for m in hq.of("/status")]
    assert states == [], states  # no "online" from a connection after the stop
