"""The MQTT link to the head office: drain the outbox in order, receive commands.

paho-mqtt keeps unacknowledged messages in memory only, so durability is ours: a message leaves
the outbox (is marked delivered) only when the broker's PUBACK for it arrives.  After any disconnect
the publisher starts again from the oldest undelivered sequence number, so delivery is at least once
and in order; the head office deduplicates by (gateway_id, seq).

paho's socket is served by the asyncio loop (``gateway.sync.paho_loop``), not by a thread of paho's
own: every paho callback runs on the loop thread, with the database; only a connection attempt (a
blocking connect and TLS handshake) runs on a worker thread, and touches nothing of ours.

Trickle economy.  The daemon commits a message or two per second per hundred meters, each on its own,
so the per-message overhead of delivery matters more than the burst rate:

- PUBACKs are queued on a deque as paho reads them, without waking the pump; the pump collects them
  when it runs anyway (every ``notify()``), when ``ACK_WAKE`` of them wait (a burst needs its window
  back), at once during ``drain``/``stop`` or for a refusal, and at the latest every ``ACK_FLUSH_S``.
- Acknowledged seqs are marked delivered in batches — when ``ACK_BATCH`` wait or ``ACK_FLUSH_S``
  after the previous mark — and always before a reconnect re-reads the outbox, on ``drain`` and
  on ``stop``.  The marks are committed without an fsync (``outbox.mark_delivered``): losing one to
  a crash or power cut only sends that message again, which the head office's dedup by seq
  absorbs; the next durable commit of the gateway makes them durable too.
- The outbox is only read when something may be waiting: ``notify()`` was called, the previous
  read filled the window, a reconnect or a refusal rewound the cursor, or ``POLL_S`` passed (a
  writer that does not notify is still picked up).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
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
from gateway.core.idle import Idle
from gateway.core.logfields import kv
from gateway.core.timeutil import Clock, iso
from gateway.store import chain, epochs, outbox, outbox_bound
from gateway.store.db import Store
from gateway.sync.paho_loop import PahoOnLoop

log = logging.getLogger("pmg.mqtt")

CommandHandler = Callable[[str, bytes], Awaitable[object]]
"""(command type, raw payload) -> None; called on the loop thread."""

SESSION_EXPIRY_S = 7 * 24 * 3600  # keep our command subscription a week while we are offline
WINDOW = 200  # messages on the wire to the broker and not yet acknowledged (paho's in-flight limit)
# Messages handed to paho and not yet acknowledged: twice its window, so while the pump is busy
# elsewhere paho's own queue refills the broker's window the moment a PUBACK frees a slot.
HANDED = 2 * WINDOW
BOUND_CHECK_S = 10.0  # how often the backlog bound is enforced (a COUNT on an index)
POLL_S = 0.5  # read the outbox at least this often even without notify()
ACK_FLUSH_S = 0.25  # acknowledged seqs wait at most about this long to be marked delivered
ACK_BATCH = WINDOW // 2  # ... or until this many wait
LINGER_S = 0.2  # at a trickle, a freshly committed message waits this long after the last read for company
# The retained status is republished with a fresh ledger chain head (docs/ledger.md, "Tamper
# evidence") at most this often while connected, and only when the head moved.
STATUS_REPUBLISH_S = 300.0
ACK_WAKE = WINDOW // 4  # the pump is woken once this many PUBACKs queue up (window back)


@dataclass
class LinkStats:
    connected: bool = False
    subscribed: bool = False  # the broker granted the command subscription (SUBACK)
    connects: int = 0
    connect_failures: int = 0
    last_error: str | None = None
    published: int = 0
    acknowledged: int = 0  # marked delivered in the outbox (after the broker's PUBACK)
    ack_flushes: int = 0  # transactions that marked them (several acks each at a trickle)
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
        self.chain_head: chain.Head | None = None  # the ledger's hash-chain head, for status messages
        self._status_head: chain.Head | None = None  # the head the last status message carried
        self._status_at = -math.inf  # monotonic time of the last republished status
        self._config_dir = config_dir or Path.cwd()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = Idle()  # the pumps' sleep in _wait (run, drain), cut short by _wakeup
        self._connected = asyncio.Event()
        self._acked: list[int] = []  # acknowledged seqs not yet marked delivered
        self._last_flush = -math.inf  # monotonic time acks were last marked
        # (mid, refused) appended as paho reads each PUBACK, taken by the pump
        self._ack_queue: collections.deque[tuple[int, bool]] = collections.deque()
        self._ack_wake_scheduled = False  # a wake-up of the pump to take the queue is scheduled
        self._prompt_acks = False  # drain/stop: wake the loop for every PUBACK
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._next_after = 0
        self._dirty = True  # the outbox may hold messages after _next_after: read it
        self._last_read = 0.0  # monotonic time of the last outbox read
        self._window_full = False  # the last outbox read filled the in-flight window (a backlog)
        self._generation = 0
        self._client: paho.Client | None = None
        self._driver: PahoOnLoop | None = None  # serves the client's socket from the loop
        self._closing: asyncio.Future[None] | None = None  # the one goodbye and disconnect
        self._stopping = False
        self._handlers: set[asyncio.Future[Any]] = set()
        self._bound_checked = -BOUND_CHECK_S
        self._refusal: str | None = (
            None  # the broker's CONNACK refusal: more telling than the disconnect after it
        )
        self.epoch: str | None = None  # the outbox's current epoch, for status messages
        self._recorded_seq = 0  # the highest seq recorded beside the database as handed out
        self._recorder = epochs.Recorder(store.path)
        # the head office's resend requests: delivered rows to publish again, before anything else
        self._resends: collections.deque[outbox.OutboxMessage] = collections.deque()
        self._resend_inflight: dict[int, outbox.OutboxMessage] = {}  # paho mid -> message resent

    # -- paho setup --------------------------------------------------------------------------
    def _path(self, value: str) -> str:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else self._config_dir / p)

    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        client_id = cfg.client_id or f"pmg-{self.gateway_id}"
        if cfg.protocol == "3.1.1":
            # No session expiry in 3.1.1: clean_session = False asks the broker to keep the session
            # (our command subscription and the QoS 1 commands queued for us) until its own policy
            # expires it.  No Maximum Packet Size either: the broker's max_packet_size is the only
            # guard against an oversized command (docs/mqtt.md, "Connection").
            client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311, clean_session=False
            )
        else:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        if cfg.tls:
            context = ssl.create_default_context(cafile=self._path(cfg.ca_file) if cfg.ca_file else None)
            if cfg.client_cert:
                context.load_cert_chain(
                    self._path(cfg.client_cert), self._path(cfg.client_key) if cfg.client_key else None
                )
            client.tls_set_context(context)
        password = cfg.password
        if cfg.password_file:
            password = Path(self._path(cfg.password_file)).read_text().strip()
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        client.will_set(f"{self.prefix}/status", self._status_payload("offline"), qos=1, retain=True)
        client.max_inflight_messages_set(WINDOW)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def refresh_chain_head(self) -> None:
        """Read the hash chain's head for the next status message (docs/ledger.md, "Tamper evidence").

        Called from the event loop (``run``, and the daemon's status loop every few seconds): the
        status message is built in paho's CONNACK callback, which reads only this attribute."""
        self.chain_head = chain.head(self.store.conn)
        self.epoch = epochs.current(self.store.conn)

    def publish_status(self, now_mono: float) -> bool:
        """Republish the retained ``online`` status when the chain head has moved since the last one
        and ``STATUS_REPUBLISH_S`` have passed since this last republished it: the head office then
        holds a head at most that old, not only the one of the last connection.  From the event loop
        (the daemon's status loop); True when it published."""
        client, current = self._client, self.chain_head
        if client is None or not self.stats.connected or current is None or current == self._status_head:
            return False
        if now_mono - self._status_at < STATUS_REPUBLISH_S:
            return False
        client.publish(f"{self.prefix}/status", self._status_payload("online"), qos=1, retain=True)
        self._status_head, self._status_at = current, now_mono
        return True

    def _status_payload(self, state: str) -> bytes:
        body: dict[str, Any] = {
            "schema": "pmg.status/1",
            "gateway_id": self.gateway_id,
            "state": state,
            "at": iso(self.clock()),
            "version": self.version,
        }
        if self.epoch is not None:
            body["epoch"] = self.epoch
        head = self.chain_head  # one read of an attribute the loop replaces whole: no lock needed
        if head is not None:
            body["chain_head"] = head.hash
            body["chain_length"] = head.length
        return json.dumps(body, separators=(",", ":")).encode()

    # -- paho callbacks (on the loop thread, inside paho's loop_read/loop_write/loop_misc) ------------
    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the loop's next turn, not inside paho's read of the socket."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(fn, *args)

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._call(self._refused, f"broker refused connection: {reason}")
            return
        self._status_head = self.chain_head
        client.publish(f"{self.prefix}/status", self._status_payload("online"), qos=1, retain=True)
        client.subscribe(f"{self.prefix}/commands/+", qos=1)
        self._call(self._set_connected, True)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._call(self._set_connected, False, str(reason))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        """Queue the PUBACK; wake the loop only when it should not wait for its next turn."""
        refused = reason.is_failure if reason is not None else False
        queue = self._ack_queue
        queue.append((mid, refused))
        if (refused or self._prompt_acks or len(queue) >= ACK_WAKE) and not self._ack_wake_scheduled:
            self._ack_wake_scheduled = True
            self._call(self._wakeup)

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
        log.warning("mqtt error", extra=kv(error=text))

    def _connect_failed(self, exc: BaseException) -> None:
        """A connection attempt failed before the broker could answer: the socket or TLS error says
        why (a refused port, an unknown host, a certificate the CA file does not vouch for)."""
        self.stats.connect_failures += 1
        reason = str(exc) or type(exc).__name__
        self._set_error(f"cannot connect to {self.cfg.host}:{self.cfg.port}: {reason}")

    def _refused(self, text: str) -> None:
        self._refusal = text
        self._set_error(text)

    def _set_connected(self, up: bool, reason: str | None = None) -> None:
        was_up, self.stats.connected = self.stats.connected, up
        if up:
            self._refusal = None
            self.stats.connects += 1
            if self._driver is not None:
                self._driver.accepted()
            self._connected.set()
            log.info("mqtt connected", extra=kv(host=self.cfg.host, port=self.cfg.port))
        else:
            self._connected.clear()
            self.stats.subscribed = False
            if reason and not self._stopping and (was_up or self._refusal is None):
                self.stats.last_error = reason
                log.warning("mqtt disconnected", extra=kv(reason=str(reason)))
        # Restart from the oldest undelivered message: what was in flight may be lost.  PUBACKs
        # queued before this event are taken while their mids still map to seqs, and marked, so
        # the re-read does not send again what the broker already has.
        self._take_acks()
        self._flush_acks(force=True)
        self._generation += 1
        self._inflight.clear()
        if self._resend_inflight:  # resent messages in flight may be lost too: send them again
            self._resends.extendleft(sorted(self._resend_inflight.values(), key=lambda m: -m.seq))
            self._resend_inflight.clear()
        self._next_after = 0
        self._dirty = True
        self._wakeup()

    def _take_acks(self) -> None:
        """Move the PUBACKs paho read into ``_acked`` (seqs), freeing window room."""
        self._ack_wake_scheduled = False  # first: a PUBACK queued from now on may wake us again
        queue = self._ack_queue
        rewound = False
        while queue:
            mid, refused = queue.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                self._resend_inflight.pop(mid, None)  # a resent message (already marked delivered)
                continue  # or a retransmission's ack from before a reconnect
            if refused:
                # The broker refused it (e.g. not authorised): keep it and retry from there.
                self._next_after = min(self._next_after, seq - 1)
                self._dirty = rewound = True
                self.stats.last_error = f"broker refused message seq {seq}"
            else:
                self._acked.append(seq)
        if rewound:
            self._flush_acks(force=True)  # the re-read must not send again what was acknowledged

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
        self._dirty = True
        self._wakeup()

    async def run(self) -> None:
        """Connect (retrying forever) and drain the outbox until ``stop``."""
        self._loop = asyncio.get_running_loop()
        self.refresh_chain_head()  # the last will built next carries the head as of this connection
        self._client = self._make_client()
        self._driver = PahoOnLoop(self._client, on_connect_failed=self._connect_failed)
        # connect_async only records where to connect; the driver's attempts (reconnect) connect
        if self.cfg.protocol == "3.1.1":  # the session is kept by clean_session=False (_make_client)
            self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        else:
            self._client.connect_async(
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=False,
                properties=self._connect_properties(),
            )
        network = asyncio.create_task(self._driver.run())
        try:
            while not self._stopping:
                await self._pump()
                await self._wait()
                await self._linger()
        finally:
            await self._close_network()  # the one shutdown, whether stop() or a cancellation began it
            await asyncio.gather(network, return_exceptions=True)
            self._take_acks()
            self._flush_acks(force=True)
            self._recorder.close()

    def _connect_properties(self) -> Properties:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        # MQTT 5 §3.1.2.11.4: the broker must not send a larger packet; it drops it instead, so an
        # oversized command (64 MB from anyone who may publish) is never read into our memory.
        props.MaximumPacketSize = self.cfg.max_packet_bytes
        return props

    def _wakeup(self) -> None:
        """Wake the pumps sleeping in ``_wait`` (loop thread only; a wake-up while none sleeps is
        not kept: each pump reads what is due before it sleeps)."""
        self._idle.wake()

    async def _wait(self) -> None:
        """Sleep until woken, or until acks are due to be taken and marked, or ``POLL_S``."""
        timeout = POLL_S
        if self._acked:  # due to be marked ACK_FLUSH_S after the previous mark
            timeout = max(0.0, self._last_flush + ACK_FLUSH_S - time.monotonic())
        elif self._inflight or self._resend_inflight:  # PUBACKs may be queued without a wake-up: look soon
            timeout = ACK_FLUSH_S
        await self._idle.sleep(timeout)

    async def _linger(self) -> None:
        """At a trickle (a usage message per reading, dozens a second across the buses), publishing
        each message the moment it is committed costs a socket write and a PUBACK round
        per message.  Reading the outbox at most every ``LINGER_S`` lets the messages of that moment
        go out together: the same bytes, a fraction of the wake-ups, at most ``LINGER_S`` later.  A
        backlog (the last read filled the window) is drained without pause, and so is a stop."""
        if self._window_full or not self._dirty or self._stopping:
            return
        delay = self._last_read + LINGER_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _pump(self) -> None:
        self._take_acks()
        self._flush_acks()
        self._check_bound()
        client = self._client
        if client is None or not self.stats.connected:
            return
        room = HANDED - len(self._inflight) - len(self._resend_inflight)
        if room <= 0:
            return
        if self._resends:
            self._pump_resends(client, room)
            return  # the rest after them: what is queued now (the resend's ack) follows what was asked
        now_mono = time.monotonic()
        if not self._dirty and now_mono - self._last_read < POLL_S:
            return  # nothing was committed since the last read returned all there was
        self._dirty = False
        self._last_read = now_mono
        batch = outbox.pending(self.store, self._next_after, room)
        self._window_full = len(batch) == room
        if self._window_full:
            self._dirty = True  # the window filled: there may be more behind it
        if batch:
            self._record_published(batch[-1])
        prefix, gateway_id, inflight, published = self.prefix + "/", self.gateway_id, self._inflight, 0
        for msg in batch:
            info = client.publish(prefix + msg.topic, msg.envelope(gateway_id), qos=msg.qos, retain=msg.retain)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                self._dirty = True
                break  # disconnected meanwhile; the reconnect restarts from the oldest undelivered
            inflight[info.mid] = msg.seq
            self._next_after = msg.seq
            published += 1
        self.stats.published += published

    def _record_published(self, last: outbox.OutboxMessage) -> None:
        """Before a seq first leaves, say so beside the database: a restored backup that never
        allocated it then starts a new epoch (gateway.store.epochs)."""
        if last.seq <= self._recorded_seq or not last.epoch:
            return
        try:
            self._recorder.record(last.epoch, last.seq)
        except OSError as exc:  # published anyway: a restore would go unnoticed, said once
            if self._recorded_seq >= 0:
                self._set_error(f"cannot record the published seq beside the database: {exc}")
            self._recorded_seq = -1
            return
        self._recorded_seq = last.seq

    def resend(self, messages: list[outbox.OutboxMessage]) -> None:
        """Publish these delivered messages again, in order, with their own epoch and seq and
        ``"resent": true``, never retained (the head office's ``resend`` command; docs/mqtt.md)."""
        self._resends.extend(messages)
        self._dirty = True
        self._wakeup()

    @property
    def resends_waiting(self) -> int:
        return len(self._resends) + len(self._resend_inflight)

    def _pump_resends(self, client: paho.Client, room: int) -> None:
        while self._resends and room > 0:
            msg = self._resends[0]
            info = client.publish(
                f"{self.prefix}/{msg.topic}", msg.envelope(self.gateway_id, resent=True), qos=msg.qos
            )
            if info.rc != paho.MQTT_ERR_SUCCESS:
                return  # disconnected meanwhile; the reconnect goes on from here
            self._resends.popleft()
            self._resend_inflight[info.mid] = msg
            self.stats.published += 1
            room -= 1
        self._dirty = True  # the outbox waited meanwhile

    def _check_bound(self) -> None:
        """The backlog grows while the broker is away: keep it bounded (never dropping billing)."""
        now_mono = time.monotonic()
        if now_mono - self._bound_checked < BOUND_CHECK_S:
            return
        self._bound_checked = now_mono
        result = outbox_bound.enforce_bound(self.store, self.cfg.max_backlog_messages, self.clock())
        self.stats.backlog = result.pending
        if result.coalesced or result.over:
            self.stats.coalesced += result.coalesced
            log.warning(
                "outbox over its bound",
                extra=kv(backlog=result.pending, bound=self.cfg.max_backlog_messages, coalesced=result.coalesced),
            )

    def _flush_acks(self, *, force: bool = False) -> None:
        """Mark acknowledged seqs delivered: in batches (see the module docstring), all if ``force``."""
        if not self._acked:
            return
        now_mono = time.monotonic()
        if not force and len(self._acked) < ACK_BATCH and now_mono - self._last_flush < ACK_FLUSH_S:
            return
        seqs, self._acked = self._acked, []
        self._last_flush = now_mono
        now = self.clock()
        outbox.mark_delivered(self.store, seqs, now)
        self.stats.acknowledged += len(seqs)
        self.stats.ack_flushes += 1
        self.stats.last_ack_at = iso(now)

    async def drain(self, deadline_s: float) -> bool:
        """Publish what the broker will take within ``deadline_s``; True if the outbox emptied.

        Every PUBACK wakes the loop meanwhile and acks are marked at once: a stop should not wait
        for the trickle-rate batching."""
        end = time.monotonic() + deadline_s
        self._prompt_acks = True
        try:
            while time.monotonic() < end:
                self._dirty = True
                await self._pump()
                self._flush_acks(force=True)
                if not self._inflight and not outbox.pending(self.store, 0, 1):
                    return True
                await self._wait()
        finally:
            self._prompt_acks = False
            self._take_acks()
            self._flush_acks(force=True)
        return not outbox.pending(self.store, 0, 1)

    async def stop(self, deadline_s: float = 5.0) -> None:
        """Flush within the deadline, say goodbye (retained offline status), disconnect."""
        if self.stats.connected:
            await self.drain(deadline_s)
        self._stopping = True
        self._wakeup()
        await self._close_network()
        self._take_acks()
        self._flush_acks(force=True)

    async def _close_network(self) -> None:
        """Say goodbye and disconnect, once: ``stop()`` and the end of ``run()`` both come here, and
        the second waits for the first (closing the socket under the goodbye would leave the broker
        to publish the last will, an older ``offline`` status, over the fresh one)."""
        if self._closing is None:
            driver = self._driver
            if driver is None:
                return
            self._closing = asyncio.ensure_future(driver.stop(self._goodbye))
        await asyncio.shield(self._closing)
        if self.stats.connected:  # closed by force (paho never got to say so): not connected now
            self._set_connected(False)

    async def _goodbye(self) -> None:
        """The retained ``offline`` status, acknowledged (at most a second), before the DISCONNECT."""
        client = self._client
        if client is None or not self.stats.connected:
            return
        info = client.publish(f"{self.prefix}/status", self._status_payload("offline"), qos=1, retain=True)
        end = time.monotonic() + 1.0
        while not info.is_published() and self.stats.connected and time.monotonic() < end:
            await asyncio.sleep(0.01)  # the PUBACK is read on this loop

    def publish_raw(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        """Best-effort, non-durable publish (acks for commands are also written to the outbox)."""
        if self._client is not None and self.stats.connected:
            self._client.publish(
                f"{self.prefix}/{topic}", json.dumps(payload, separators=(",", ":")), qos=1, retain=retain
            )
