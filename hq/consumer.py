"""A reference head-office consumer: subscribe, check sequence continuity per gateway, deduplicate.

Delivery from a gateway is at least once and in order per gateway (``seq`` from its outbox), so the
head office keeps, per gateway, every ``seq`` it has accepted: a ``seq`` seen before is a duplicate
(expected after a reconnect or a retained re-delivery) and is not processed twice; a ``seq`` above
the next expected one opens a gap that later arrivals may fill.  A gap still open at the end is a
lost message — which the transactional outbox is there to make impossible.

Works with shared subscriptions (``$share/<group>/...``) on a broker cluster: several consumers share
the load and, when they share one ``--store`` database, the continuity check covers their union.
With a store the consumer remembers across restarts what it has accepted (``INSERT OR IGNORE`` keyed
by gateway and seq is the deduplication), and its persistent MQTT session makes the broker keep
QoS 1 messages for it while it is down.
"""

from __future__ import annotations

import json
import sqlite3
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Received:
    gateway_id: str
    topic: str  # relative to <prefix>/<gateway_id>/
    seq: int | None  # None for unsequenced messages (status, best-effort acks)
    body: dict[str, Any]
    duplicate: bool


class SeqTracker:
    """Which sequence numbers of each gateway have been accepted; gaps and duplicates."""

    def __init__(self) -> None:
        self._floor: dict[str, int] = {}  # every seq <= floor is accounted for
        self._above: dict[str, set[int]] = {}  # accepted seqs above the floor
        self.duplicates: dict[str, int] = {}

    def accept(self, gateway_id: str, seq: int) -> bool:
        """True if ``seq`` is new for this gateway; False for a duplicate."""
        if gateway_id not in self._floor:
            self._floor[gateway_id] = seq - 1  # first sight: earlier ones were before our time
            self._above[gateway_id] = set()
        floor, above = self._floor[gateway_id], self._above[gateway_id]
        if seq <= floor or seq in above:
            self.duplicates[gateway_id] = self.duplicates.get(gateway_id, 0) + 1
            return False
        above.add(seq)
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        self._floor[gateway_id] = floor
        return True

    def skip(self, gateway_id: str, ranges: list[list[int]]) -> None:
        """Seqs the gateway announced it coalesced (superseded snapshots): not gaps, not duplicates."""
        for lo, hi in ranges:
            for seq in range(lo, hi + 1):
                if gateway_id in self._floor and (
                    seq <= self._floor[gateway_id] or seq in self._above[gateway_id]
                ):
                    continue
                self.accept(gateway_id, seq)

    def start_at(self, gateway_id: str, first_seq: int) -> None:
        """Declare where this gateway's history begins for us (e.g. 1 for a new gateway)."""
        self._floor.setdefault(gateway_id, first_seq - 1)
        self._above.setdefault(gateway_id, set())

    def highest(self, gateway_id: str) -> int:
        above = self._above.get(gateway_id)
        return max(above) if above else self._floor.get(gateway_id, 0)

    def gaps(self, gateway_id: str) -> list[tuple[int, int]]:
        """Missing ranges (inclusive) below the highest accepted seq."""
        floor, above = self._floor.get(gateway_id, 0), sorted(self._above.get(gateway_id, ()))
        out: list[tuple[int, int]] = []
        expected = floor + 1
        for s in above:
            if s > expected:
                out.append((expected, s - 1))
            expected = s + 1
        return out

    def gateways(self) -> list[str]:
        return sorted(self._floor)


class MessageStore:
    """What the consumer accepted, in SQLite; the primary key (gateway_id, seq) deduplicates."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS messages (gateway_id TEXT NOT NULL, seq INTEGER NOT NULL, "
            "topic TEXT NOT NULL, payload TEXT NOT NULL, received_at TEXT NOT NULL DEFAULT "
            "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), PRIMARY KEY (gateway_id, seq))"
        )
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS unsequenced (id INTEGER PRIMARY KEY, gateway_id TEXT NOT NULL, "
            "topic TEXT NOT NULL, payload TEXT NOT NULL, received_at TEXT NOT NULL DEFAULT "
            "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
        )

    def add(self, gateway_id: str, topic: str, seq: int | None, payload: str) -> bool:
        """True if new (another consumer sharing the file may have stored it first)."""
        if seq is None:
            self.conn.execute(
                "INSERT INTO unsequenced(gateway_id, topic, payload) VALUES (?, ?, ?)",
                (gateway_id, topic, payload),
            )
            return True
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO messages(gateway_id, seq, topic, payload) VALUES (?, ?, ?, ?)",
            (gateway_id, seq, topic, payload),
        )
        return cur.rowcount == 1

    def seqs(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for gw, seq in self.conn.execute("SELECT gateway_id, seq FROM messages ORDER BY gateway_id, seq"):
            out.setdefault(gw, []).append(seq)
        return out

    def close(self) -> None:
        self.conn.close()


@dataclass
class TlsOptions:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass
class HqConsumer:
    """``start()``, then messages go to ``on_received``; ``stop()`` disconnects (session kept)."""

    host: str
    port: int
    prefix: str = "pmg"
    shared_group: str | None = None
    tls: TlsOptions | None = field(default_factory=TlsOptions)
    username: str | None = None
    password: str | None = None
    client_id: str = "pmg-hq"
    store: MessageStore | None = None
    on_received: Callable[[Received], None] | None = None
    tracker: SeqTracker = field(default_factory=SeqTracker)
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: paho.Client | None = None

    @property
    def topic(self) -> str:
        base = f"{self.prefix.rstrip('/')}/+/#"
        return f"$share/{self.shared_group}/{base}" if self.shared_group else base

    def start(self) -> HqConsumer:
        if self.store is not None:
            for gw, seqs in self.store.seqs().items():
                self.tracker.start_at(gw, seqs[0])
                for s in seqs:
                    self.tracker.accept(gw, s)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        if self.tls is not None:
            context = ssl.create_default_context(cafile=self.tls.ca_file)
            if self.tls.cert_file:
                context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            client.tls_set_context(context)
        if self.username:
            client.username_pw_set(self.username, self.password)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda *_a: self.connected.clear()
        client.on_subscribe = lambda *_a: self.subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        client.connect_async(self.host, self.port, clean_start=False, properties=props)
        client.loop_start()
        self._client = client
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused connection: {reason}"
            return
        self.connected.set()
        client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        prefix_len = len(self.prefix.rstrip("/").split("/"))
        if len(parts) <= prefix_len + 1 or parts[prefix_len + 1] == "commands":
            return  # our own commands, or not a gateway topic
        gateway_id, topic = parts[prefix_len], "/".join(parts[prefix_len + 1 :])
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = {"unparsed": msg.payload.decode("utf-8", errors="replace")}
        if not isinstance(body, dict):
            body = {"unparsed": body}
        seq = body.get("seq")
        seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        self.handle(gateway_id, topic, seq, body)

    def handle(self, gateway_id: str, topic: str, seq: int | None, body: dict[str, Any]) -> Received:
        """Accept one message (also the seam for tests without a broker)."""
        with self._lock:
            new = True if seq is None else self.tracker.accept(gateway_id, seq)
            if new and topic == "events" and body.get("kind") == "outbox_coalesced":
                self.tracker.skip(gateway_id, body.get("detail", {}).get("seq_ranges", []))
            if self.store is not None:
                stored = self.store.add(gateway_id, topic, seq, json.dumps(body, separators=(",", ":")))
                new = new and stored
            received = Received(gateway_id, topic, seq, body, duplicate=not new)
        if self.on_received is not None:
            self.on_received(received)
        return received
