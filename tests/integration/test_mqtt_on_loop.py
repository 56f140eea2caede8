"""paho served by the event loop (gateway/sync/paho_loop.py): what paho's own thread used to do.

Without paho's network thread nothing sends a PINGREQ but the link's once-a-second ``loop_misc``: an
idle connection must outlive the broker's keepalive timeout (1.5 × keepalive, MQTT 5 §3.1.2.10; without
the ``loop_misc`` calls Mosquitto drops it within 12 s at a keepalive of 5 s, and the test fails).  A
refused port says its error in one line and is retried; a stop while the broker has not answered the
CONNECT closes the socket and does not reconnect; and nothing of the link runs on another thread
once it is connected.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import pytest
from support.broker import Mosquitto
from support.waiting import async_wait_for

from gateway.config import MqttConfig
from gateway.core.timeutil import system_clock
from gateway.store.db import open_store
from gateway.sync.mqtt import MqttLink

pytestmark = pytest.mark.broker


def _config(port: int, keepalive_s: int = 5) -> MqttConfig:
    return MqttConfig(
        host="127.0.0.1", port=port, tls=False, allow_plaintext=True, keepalive_s=keepalive_s, client_id="loop-1"
    )


def test_an_idle_connection_outlives_the_keepalive_and_callbacks_run_on_the_loop(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    threads: set[int] = set()

    async def scenario() -> MqttLink:
        store = open_store(tmp_path / "gw.db")
        link = MqttLink(_config(mosquitto.port), "gw-loop", store, system_clock)
        real = link._on_publish

        def on_publish(*args: object) -> None:
            threads.add(threading.get_ident())
            real(*args)  # type: ignore[arg-type]

        task = asyncio.create_task(link.run())
        try:
            await async_wait_for(lambda: link.stats.subscribed, timeout=10, what="link up")
            assert link._client is not None
            link._client.on_publish = on_publish
            await asyncio.sleep(15.0)  # twice 1.5 × keepalive: Mosquitto checks its clients every few seconds
            assert link.stats.connected and link.stats.connects == 1, link.stats
            link.publish_raw("probe", {"n": 1})
            await async_wait_for(lambda: bool(threads), timeout=5, what="PUBACK of the probe")
            assert threads == {threading.get_ident()}  # the loop's thread, not paho's
        finally:
            await link.stop(1.0)
            await asyncio.gather(task, return_exceptions=True)
            store.close()
        return link

    link = asyncio.run(scenario())
    assert not link.stats.connected


def test_a_refused_port_says_why_and_is_retried(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> MqttLink:
        store = open_store(tmp_path / "gw.db")
        link = MqttLink(_config(port), "gw-loop", store, system_clock)
        task = asyncio.create_task(link.run())
        try:
            await async_wait_for(lambda: link.stats.connect_failures >= 2, timeout=10, what="a retry")
        finally:
            await link.stop(0.5)
            await asyncio.gather(task, return_exceptions=True)
            store.close()
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
        store = open_store(tmp_path / "gw.db")
        link = MqttLink(_config(port), "gw-loop", store, system_clock)
        task = asyncio.create_task(link.run())
        try:
            conn, _ = await loop.run_in_executor(None, server.accept)
            accepted.append(conn)
            conn.settimeout(5)
            assert (await loop.run_in_executor(None, conn.recv, 1))[:1] == b"\x10"  # CONNECT
            assert not link.stats.connected
        finally:
            await asyncio.wait_for(link.stop(0.5), 5)
            await asyncio.gather(task, return_exceptions=True)
            store.close()
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
