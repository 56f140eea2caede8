"""The MQTT link to the head office: drain the outbox in order, receive commands.

paho-mqtt keeps unacknowledged messages in memory only, so durability is ours: a message leaves
the outbox (is marked delivered) only when the broker's PUBACK for it arrives.  After any disconnect
the publisher starts again from the oldest undelivered sequence number, so delivery is at least once
and in order; the head office deduplicates by (gateway_id, seq).

paho runs its network loop on its own thread; every callback only hands a value to the asyncio loop
(``call_soon_threadsafe``) — no database access happens off the loop thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import MqttConfig
from gateway.store.db import Store
from gateway.sync import outbox
from gateway.timeutil import Clock, iso

log = logging.getLogger("pmg.mqtt")

CommandHandler = Callable[[str, bytes], Awaitable[object]]
"""(command type, raw payload) -> None; called on the loop thread."""

SESSION_EXPIRY_S = 7 * 24 * 3600  # keep our command subscription a week while we are offline
WINDOW = 200  # messages published but not yet acknowledged
BOUND_CHECK_S = 10.0  # how often the backlog bound is enforced (a COUNT on an index)


@dataclass
class LinkStats:
    connected: bool = False
    subscribed: bool = False  # the broker granted the command subscription (SUBACK)
    connects: int = 0
    connect_failures: int = 0
    last_error: str | None = None
    published: int = 0
    acknowledged: int = 0
    last_ack_at: str | None = None
    backlog: int = 0  # undelivered messages at the last bound check
    coalesced: int = 0  # superseded state snapshots removed to keep the backlog under its bound


class MqttLink:
    """Owns the paho client; one per gateway."""

    def __init__(
        self,
        cfg: MqttConfig,
        gateway_id: str,
        store: Store,
        clock: Clock,
        *,
        on_command: CommandHandler | None = None,
        config_dir: Path | None = None,
        version: str = "",
    ) -> None:
        self.cfg = cfg
        self.gateway_id = gateway_id
        self.store = store
        self.clock = clock
        self.on_command = on_command
        self.prefix = f"{cfg.topic_prefix.rstrip('/')}/{gateway_id}"
        self.stats = LinkStats()
        self.version = version
        self._config_dir = config_dir or Path.cwd()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._acked: list[int] = []
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._next_after = 0
        self._generation = 0
        self._client: paho.Client | None = None
        self._stopping = False
        self._handlers: set[asyncio.Future[Any]] = set()
        self._tls_context: ssl.SSLContext | None = None
        self._probing = False
        self._bound_checked = -BOUND_CHECK_S
        self._refusal: str | None = (
            None  # the broker's CONNACK refusal: more telling than the disconnect after it
        )

    # -- paho setup --------------------------------------------------------------------------
    def _path(self, value: str) -> str:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else self._config_dir / p)

    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"pmg-{self.gateway_id}",
            protocol=paho.MQTTv5,
        )
        if cfg.tls:
            context = ssl.create_default_context(cafile=self._path(cfg.ca_file) if cfg.ca_file else None)
            if cfg.client_cert:
                context.load_cert_chain(
                    self._path(cfg.client_cert), self._path(cfg.client_key) if cfg.client_key else None
                )
            client.tls_set_context(context)
            self._tls_context = context
        password = cfg.password
        if cfg.password_file:
            password = Path(self._path(cfg.password_file)).read_text().strip()
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        client.will_set(f"{self.prefix}/status", self._status_payload("offline"), qos=1, retain=True)
        client.reconnect_delay_set(1, 60)
        client.max_inflight_messages_set(WINDOW)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = self._on_connect_fail
        return client

    def _status_payload(self, state: str) -> bytes:
        body = {
            "schema": "pmg.status/1",
            "gateway_id": self.gateway_id,
            "state": state,
            "at": iso(self.clock()),
            "version": self.version,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    # -- paho callbacks (paho's thread: hand over only) ----------------------------------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._call(self._refused, f"broker refused connection: {reason}")
            return
        client.publish(f"{self.prefix}/status", self._status_payload("online"), qos=1, retain=True)
        client.subscribe(f"{self.prefix}/commands/+", qos=1)
        self._call(self._set_connected, True)

    def _on_connect_fail(self, _c: paho.Client, _u: Any) -> None:
        self._call(self._connect_failed)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._call(self._set_connected, False, str(reason))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self._call(self._ack, mid, reason.is_failure if reason is not None else False)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        granted = bool(reasons) and not any(r.is_failure for r in reasons)
        self._call(self._set_subscribed, granted)

    def _set_subscribed(self, granted: bool) -> None:
        self.stats.subscribed = granted
        if not granted:
            self._set_error("broker refused the command subscription")

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._call(self._dispatch, msg.topic, bytes(msg.payload))

    # -- loop-thread handlers --------------------------------------------------------------------
    def _set_error(self, text: str) -> None:
        self.stats.last_error = text
        log.warning("mqtt error=%r", text)

    def _connect_failed(self) -> None:
        """paho does not say why a connection failed; find out once (a TLS handshake shows the reason)."""
        self.stats.connect_failures += 1
        if self._probing:
            return
        self._probing = True

        async def probe() -> None:
            try:
                reason = await asyncio.to_thread(_probe, self.cfg.host, self.cfg.port, self._tls_context)
                self._set_error(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {reason}")
            finally:
                self._probing = False

        task = asyncio.ensure_future(probe())
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def _refused(self, text: str) -> None:
        self._refusal = text
        self._set_error(text)

    def _set_connected(self, up: bool, reason: str | None = None) -> None:
        was_up, self.stats.connected = self.stats.connected, up
        if up:
            self._refusal = None
            self.stats.connects += 1
            self._connected.set()
            log.info("mqtt connected host=%s port=%s", self.cfg.host, self.cfg.port)
        else:
            self._connected.clear()
            self.stats.subscribed = False
            if reason and not self._stopping and (was_up or self._refusal is None):
                self.stats.last_error = reason
                log.warning("mqtt disconnected reason=%r", reason)
        # Restart from the oldest undelivered message: what was in flight may be lost.
        self._generation += 1
        self._inflight.clear()
        self._next_after = 0
        self._wake.set()

    def _ack(self, mid: int, failed: bool) -> None:
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
        if failed:
            # The broker refused it (e.g. not authorised): keep it and retry from there.
            self._next_after = min(self._next_after, seq - 1)
            self.stats.last_error = f"broker refused message seq {seq}"
        else:
            self._acked.append(seq)
        self._wake.set()

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if self.on_command is None:
            return
        kind = topic.rsplit("/", 1)[-1]
        task = asyncio.ensure_future(self.on_command(kind, payload))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    # -- public -----------------------------------------------------------------------------------
    def notify(self) -> None:
        """New messages were committed to the outbox."""
        self._wake.set()

    async def run(self) -> None:
        """Connect (retrying forever) and drain the outbox until ``stop``."""
        self._loop = asyncio.get_running_loop()
        self._client = self._make_client()
        try:
            self._client.connect_async(
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=False,
                properties=self._connect_properties(),
            )
            self._client.loop_start()
            while not self._stopping:
                await self._pump()
                await self._wait()
        finally:
            self._flush_acks()

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        return props

    async def _wait(self) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=0.5)
        except TimeoutError:
            pass

    async def _pump(self) -> None:
        self._flush_acks()
        self._check_bound()
        client = self._client
        if client is None or not self.stats.connected:
            return
        room = WINDOW - len(self._inflight)
        if room <= 0:
            return
        for msg in outbox.pending(self.store, self._next_after, room):
            info = client.publish(
                f"{self.prefix}/{msg.topic}", msg.envelope(self.gateway_id), qos=msg.qos, retain=msg.retain
            )
            if info.rc != paho.MQTT_ERR_SUCCESS:
                break  # disconnected meanwhile; the reconnect restarts from the oldest undelivered
            self._inflight[info.mid] = msg.seq
            self._next_after = msg.seq
            self.stats.published += 1

    def _check_bound(self) -> None:
        """The backlog grows while the broker is away: keep it bounded (never dropping billing)."""
        now_mono = time.monotonic()
        if now_mono - self._bound_checked < BOUND_CHECK_S:
            return
        self._bound_checked = now_mono
        result = outbox.enforce_bound(self.store, self.cfg.max_backlog_messages, self.clock())
        self.stats.backlog = result.pending
        if result.coalesced or result.over:
            self.stats.coalesced += result.coalesced
            log.warning(
                "outbox backlog=%d bound=%d coalesced=%d",
                result.pending,
                self.cfg.max_backlog_messages,
                result.coalesced,
            )

    def _flush_acks(self) -> None:
        if not self._acked:
            return
        seqs, self._acked = self._acked, []
        outbox.mark_delivered(self.store, seqs, self.clock())
        self.stats.acknowledged += len(seqs)
        self.stats.last_ack_at = iso(self.clock())

    async def drain(self, deadline_s: float) -> bool:
        """Publish what the broker will take within ``deadline_s``; True if the outbox emptied."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            await self._pump()
            if not self._inflight and not outbox.pending(self.store, 0, 1):
                return True
            await self._wait()
        self._flush_acks()
        return not outbox.pending(self.store, 0, 1)

    async def stop(self, deadline_s: float = 5.0) -> None:
        """Flush within the deadline, say goodbye (retained offline status), disconnect."""
        if self.stats.connected:
            await self.drain(deadline_s)
        self._stopping = True
        self._wake.set()
        client = self._client
        if client is not None:
            if self.stats.connected:
                info = client.publish(
                    f"{self.prefix}/status", self._status_payload("offline"), qos=1, retain=True
                )
                try:
                    await asyncio.wait_for(asyncio.to_thread(info.wait_for_publish, 1.0), 1.5)
                except (TimeoutError, RuntimeError, ValueError):
                    pass
            client.disconnect()
            client.loop_stop()
        self._flush_acks()

    def publish_raw(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        """Best-effort, non-durable publish (acks for commands are also written to the outbox)."""
        if self._client is not None and self.stats.connected:
            self._client.publish(
                f"{self.prefix}/{topic}", json.dumps(payload, separators=(",", ":")), qos=1, retain=retain
            )


def _probe(host: str, port: int, context: ssl.SSLContext | None) -> str:
    """Why a connection to the broker fails: the socket or TLS error, as one line."""
    try:
        with socket.create_connection((host, port), timeout=5) as sock:
            if context is None:
                return "connection failed after TCP connect"
            with context.wrap_socket(sock, server_hostname=host):
                return "connection failed after the TLS handshake"
    except (OSError, ssl.SSLError) as exc:
        return str(exc) or type(exc).__name__
