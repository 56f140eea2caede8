"""Connect to the head office's broker, or say in one line why not.

Every ``pmg hq`` command starts here.  paho's own ``connect_async`` retries forever and reports
nothing: a head-office command pointed at the wrong port, host, CA or password would wait (or, worse,
finish "successfully" having received nothing).  ``connect`` instead makes the first connection
synchronously within a deadline — TCP, the TLS handshake, CONNECT/CONNACK — and raises
``ConnectFailed`` (an ``OperationFailed``: the CLI exits 1) with the reason in one line: refused,
unknown host, TLS to a plaintext port, plaintext to a TLS port, certificate verification failed, not
authorised.  Once connected, paho's loop runs and reconnects on its own (with a persistent session
the broker keeps what arrives meanwhile).

Protocol: MQTT 5 by default; ``"3.1.1"`` for brokers that speak only that (a NATS server's MQTT
gateway, older brokers).  With 3.1.1 a persistent session is ``clean_session = False`` (the broker
keeps it until it expires it by its own policy: 3.1.1 has no session expiry to ask for).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.core.errors import OperationFailed

Protocol = Literal["5", "3.1.1"]
PROTOCOLS: tuple[Protocol, ...] = ("5", "3.1.1")
SESSION_EXPIRY_S = 7 * 24 * 3600  # MQTT 5: how long the broker keeps a persistent session while we are away
DEFAULT_DEADLINE_S = 10.0


class ConnectFailed(OperationFailed):
    """The broker could not be reached or refused us; the message is one line, for the operator."""


@dataclass
class TlsOptions:
    """Verified TLS (the system's CAs, or ``ca_file``), optionally with a client certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass
class Broker:
    """Where and how to connect.  ``tls=None`` is plaintext (it must be asked for by the caller)."""

    host: str
    port: int
    tls: TlsOptions | None = field(default_factory=TlsOptions)
    username: str | None = None
    password: str | None = None
    client_id: str = "pmg-hq"
    protocol: Protocol = "5"
    persistent: bool = True
    """Keep the session (subscriptions, queued QoS 1 messages) across disconnects."""
    keepalive_s: int = 30

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


OnConnected = Callable[[paho.Client], None]


def connect(
    broker: Broker,
    *,
    deadline_s: float = DEFAULT_DEADLINE_S,
    on_connected: OnConnected | None = None,
    on_lost: Callable[[], None] | None = None,
    prepare: Callable[[paho.Client], None] | None = None,
) -> paho.Client:
    """A paho client connected to ``broker`` (its network loop running), or ``ConnectFailed``.

    ``prepare`` sets callbacks (``on_message``, ...) before the connection is made, so nothing that
    arrives right after CONNACK is missed.  ``on_connected`` runs (on paho's thread) after every
    successful CONNACK, reconnects included: the place to subscribe; ``on_lost`` after every
    disconnect.  ``on_connect`` and
    ``on_disconnect`` belong to this module; ``client.user_data`` carries a ``Link`` for callers
    that want to see the connection's state."""
    if broker.protocol not in PROTOCOLS:
        raise ConnectFailed(f"MQTT protocol {broker.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    end = time.monotonic() + deadline_s
    client = _client(broker)
    link = Link(on_connected, on_lost)
    client.user_data_set(link)
    client.on_connect = link.on_connect
    client.on_disconnect = link.on_disconnect
    if prepare is not None:
        prepare(client)
    client.connect_timeout = max(0.1, end - time.monotonic())
    try:
        if broker.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            if broker.persistent:
                props.SessionExpiryInterval = SESSION_EXPIRY_S
            client.connect(
                broker.host,
                broker.port,
                keepalive=broker.keepalive_s,
                clean_start=not broker.persistent,
                properties=props,
            )
        else:
            client.connect(broker.host, broker.port, keepalive=broker.keepalive_s)
    except Exception as exc:
        client.loop_stop()
        raise ConnectFailed(f"cannot connect to {broker.where}: {_reason(exc, broker)}") from None
    client.loop_start()
    if not link.answered.wait(max(0.0, end - time.monotonic())):
        close(client)
        raise ConnectFailed(f"cannot connect to {broker.where}: no answer to CONNECT within {deadline_s:g} s")
    if link.refused is not None or not link.connected.is_set():
        close(client)
        raise ConnectFailed(f"cannot connect to {broker.where}: {link.refused or 'connection lost'}")
    return client


class Link:
    """The connection's state as paho's thread reports it; the first CONNACK (or loss) sets ``answered``."""

    def __init__(self, on_connected: OnConnected | None, on_lost: Callable[[], None] | None = None) -> None:
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.answered = threading.Event()
        self.connected = threading.Event()
        self.refused: str | None = None
        self.last_disconnect: str | None = None

    def on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            if not self.answered.is_set():
                self.refused = f"the broker refused the connection: {reason}"
                self.answered.set()
            return
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected(client)
        self.answered.set()

    def on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        self.last_disconnect = str(reason)
        if self.on_lost is not None:
            self.on_lost()
        if not self.answered.is_set():
            # Plaintext to a TLS listener: the broker reads our CONNECT as a bad handshake and hangs up.
            self.refused = (
                f"the broker closed the connection before answering ({reason}; a TLS port reached "
                "without TLS, a protocol it does not speak, or a broker not ready for sessions?)"
            )
            self.answered.set()


def close(client: paho.Client) -> None:
    """Disconnect (a persistent session stays at the broker) and stop paho's thread."""
    try:
        client.disconnect()
    finally:
        client.loop_stop()


def _client(broker: Broker) -> paho.Client:
    if broker.protocol == "5":
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=broker.client_id, protocol=paho.MQTTv5)
    else:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=broker.client_id,
            protocol=paho.MQTTv311,
            clean_session=not broker.persistent,
        )
    if broker.tls is not None:
        client.tls_set_context(tls_context(broker.tls))
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    client.reconnect_delay_set(1, 30)
    return client


def tls_context(tls: TlsOptions) -> ssl.SSLContext:
    """Verified TLS; an unreadable CA or certificate file is a ``ConnectFailed`` in one line."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        files = ", ".join(str(Path(f)) for f in (tls.ca_file, tls.cert_file, tls.key_file) if f)
        raise ConnectFailed(f"cannot use the TLS files ({files}): {_reason(exc, None)}") from None
    return context


def _reason(exc: BaseException, broker: Broker | None) -> str:
    """One line for the operator, with the likely cause where the error alone does not say it."""
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError) or (
        broker is not None and broker.tls is not None and isinstance(exc, ConnectionResetError)
    ):
        detail = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        return f"TLS handshake failed ({detail}; is it a plaintext port? then --plaintext)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    text = str(exc).replace("\n", " ").strip()
    return text or type(exc).__name__
