"""A reference head-office consumer: subscribe, check sequence continuity per gateway and epoch, deduplicate.

Delivery from a gateway is at least once and in order per gateway (``seq`` from its outbox).  A
gateway's ``seq`` runs within an ``epoch`` (docs/mqtt.md): a reinstalled gateway, or one restored
from a backup, starts a new epoch whose seqs may begin again at 1.  So the head office keeps, per
``(gateway_id, epoch)``, every ``seq`` it has accepted: a ``seq`` seen before is a duplicate
(expected after a reconnect or a retained re-delivery) and is not processed twice; a ``seq`` above
the next expected one opens a gap that later arrivals may fill.  A gap still open at the end is a
lost message — which the transactional outbox is there to make impossible.  A message without an
epoch (a gateway from before epochs) is of epoch ``""``.

Snapshots never count in gap detection: a message marked ``"snapshot": true`` (a retained ``state``)
or delivered with the MQTT retain flag carries the seq it had when it was published, however long
ago — a first run would otherwise start its count there and report every later seq as missing.  Such
a seq is *noted*: it fills its place if it falls inside the range being tracked, but it never starts
the count, never raises the highest seq and never opens a gap.

Works with shared subscriptions (``$share/<group>/...``) on a broker cluster: several consumers share
the load and, when they share one ``--store`` database, the continuity check covers their union.
With a store the consumer remembers across restarts what it has accepted (``INSERT OR IGNORE`` keyed
by gateway, epoch and seq is the deduplication), and its persistent MQTT session makes the broker keep
QoS 1 messages for it while it is down.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from hq.connect import DEFAULT_DEADLINE_S, Broker, ConnectFailed, Protocol, TlsOptions, close, connect

__all__ = ["ConnectFailed", "HqConsumer", "MessageStore", "Received", "SeqTracker", "TlsOptions"]

Key = tuple[str, str]
"""(gateway_id, epoch): the scope of a seq."""


@dataclass(frozen=True)
class Received:
    gateway_id: str
    topic: str  # relative to <prefix>/<gateway_id>/
    seq: int | None  # None for unsequenced messages (status, best-effort acks)
    body: dict[str, Any]
    duplicate: bool
    epoch: str = ""
    counted: bool = True  # False: a snapshot or a retained delivery (noted, not counted in gaps)


def epoch_of(body: dict[str, Any]) -> str:
    """The message's epoch; ``""`` when it has none (a gateway from before epochs)."""
    epoch = body.get("epoch")
    return epoch if isinstance(epoch, str) else ""


class SeqTracker:
    """Which seqs of each (gateway, epoch) have been accepted; gaps and duplicates.

    Queries take ``epoch=None`` to mean the gateway's current epoch (the one seen first most
    recently), so a caller that knows nothing of epochs keeps working across a reinstall."""

    def __init__(self) -> None:
        self._floor: dict[Key, int] = {}  # every seq <= floor is accounted for
        self._above: dict[Key, set[int]] = {}  # counted seqs above the floor
        self._top: dict[Key, int] = {}  # the highest counted seq
        self._noted: dict[Key, set[int]] = {}  # snapshot / coalesced seqs above the floor
        self._starts: dict[str, int] = {}  # start_at() without an epoch: where any new epoch begins
        self._current: dict[str, str] = {}  # gateway -> its latest epoch
        self.duplicates: dict[str, int] = {}  # per gateway, all epochs
        self.duplicates_by_key: dict[Key, int] = {}

    # -- recording ---------------------------------------------------------------------------
    def accept(self, gateway_id: str, seq: int, epoch: str = "") -> bool:
        """Count ``seq``; True if it is new for this (gateway, epoch), False for a duplicate."""
        key = (gateway_id, epoch)
        if key not in self._floor:
            start = self._starts.get(gateway_id, seq)  # first sight: earlier ones were before our time
            self._open(key, min(start, seq) - 1)
        if self._seen(key, seq):
            self._duplicate(key)
            return False
        self._above[key].add(seq)
        self._top[key] = max(self._top[key], seq)
        self._advance(key)
        return True

    def note(self, gateway_id: str, seq: int, epoch: str = "") -> bool:
        """A snapshot's (or a retained message's) seq: fills its place, never opens a gap or starts
        the count.  True if it was not known."""
        key = (gateway_id, epoch)
        self._current.setdefault(gateway_id, epoch)
        noted = self._noted.setdefault(key, set())
        if (key in self._floor and self._seen(key, seq)) or seq in noted:
            self._duplicate(key)
            return False
        noted.add(seq)
        if key in self._floor:
            self._advance(key)
        return True

    def skip(self, gateway_id: str, ranges: list[list[int]], epoch: str = "") -> None:
        """Seqs the gateway announced it coalesced (superseded snapshots): not gaps, not duplicates."""
        key = (gateway_id, epoch)
        for lo, hi in ranges:
            for seq in range(lo, hi + 1):
                if not (key in self._floor and self._seen(key, seq)) and seq not in self._noted.get(key, ()):
                    self.note(gateway_id, seq, epoch)

    def start_at(self, gateway_id: str, first_seq: int, epoch: str | None = None) -> None:
        """Declare where this gateway's history begins for us (e.g. 1 for a new gateway); without an
        epoch, for every epoch of it not seen yet."""
        if epoch is None:
            self._starts[gateway_id] = first_seq
        elif (gateway_id, epoch) not in self._floor:
            self._open((gateway_id, epoch), first_seq - 1)

    # -- queries -------------------------------------------------------------------------------
    def current_epoch(self, gateway_id: str) -> str:
        return self._current.get(gateway_id, "")

    def highest(self, gateway_id: str, epoch: str | None = None) -> int:
        return self._top.get(self._key(gateway_id, epoch), 0)

    def gaps(self, gateway_id: str, epoch: str | None = None) -> list[tuple[int, int]]:
        """Missing ranges (inclusive) below the highest counted seq (noted seqs fill their place)."""
        key = self._key(gateway_id, epoch)
        above = self._above.get(key)
        if not above:
            return []
        top = max(above)
        present = sorted(above | {n for n in self._noted.get(key, ()) if n < top})
        out: list[tuple[int, int]] = []
        expected = self._floor[key] + 1
        for s in present:
            if s > expected:
                out.append((expected, s - 1))
            expected = s + 1
        return out

    def streams(self) -> list[Key]:
        """Every (gateway, epoch) seen, snapshots-only ones included."""
        return sorted(set(self._floor) | set(self._noted))

    def gateways(self) -> list[str]:
        return sorted({gw for gw, _ in self.streams()})

    # -- internals ----------------------------------------------------------------------------
    def _key(self, gateway_id: str, epoch: str | None) -> Key:
        return (gateway_id, self.current_epoch(gateway_id) if epoch is None else epoch)

    def _open(self, key: Key, floor: int) -> None:
        self._floor[key] = floor
        self._above[key] = set()
        self._top[key] = floor
        self._current[key[0]] = key[1]
        noted = self._noted.setdefault(key, set())
        noted.difference_update([n for n in noted if n <= floor])
        self._advance(key)

    def _seen(self, key: Key, seq: int) -> bool:
        return seq <= self._floor[key] or seq in self._above[key]

    def _duplicate(self, key: Key) -> None:
        self.duplicates[key[0]] = self.duplicates.get(key[0], 0) + 1
        self.duplicates_by_key[key] = self.duplicates_by_key.get(key, 0) + 1

    def _advance(self, key: Key) -> None:
        floor, above = self._floor[key], self._above[key]
        noted = self._noted.setdefault(key, set())
        while floor + 1 in above or floor + 1 in noted:
            floor += 1
            above.discard(floor)
            noted.discard(floor)
        self._floor[key] = floor


class MessageStore:
    """What the consumer accepted, in SQLite; the primary key (gateway_id, epoch, seq) deduplicates.

    ``counted`` is 0 for a snapshot or a retained delivery (noted, never counted in gap detection).
    A file from before epochs (key (gateway_id, seq)) is migrated in place: its rows are of epoch ""."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("BEGIN IMMEDIATE")  # several consumers may open the file at once
        try:
            columns = {r[1] for r in self.conn.execute("PRAGMA table_info(messages)")}
            if columns and "epoch" not in columns:
                self.conn.execute("ALTER TABLE messages RENAME TO messages_before_epochs")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS messages (gateway_id TEXT NOT NULL, epoch TEXT NOT NULL, "
                "seq INTEGER NOT NULL, topic TEXT NOT NULL, payload TEXT NOT NULL, "
                "counted INTEGER NOT NULL DEFAULT 1, received_at TEXT NOT NULL DEFAULT "
                "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), PRIMARY KEY (gateway_id, epoch, seq))"
            )
            if columns and "epoch" not in columns:
                self.conn.execute(
                    "INSERT INTO messages(gateway_id, epoch, seq, topic, payload, received_at) "
                    "SELECT gateway_id, '', seq, topic, payload, received_at FROM messages_before_epochs"
                )
                self.conn.execute("DROP TABLE messages_before_epochs")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS unsequenced (id INTEGER PRIMARY KEY, gateway_id TEXT NOT NULL, "
                "topic TEXT NOT NULL, payload TEXT NOT NULL, received_at TEXT NOT NULL DEFAULT "
                "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def add(
        self,
        gateway_id: str,
        topic: str,
        seq: int | None,
        payload: str,
        epoch: str = "",
        counted: bool = True,
    ) -> bool:
        """True if new (another consumer sharing the file may have stored it first)."""
        if seq is None:
            self.conn.execute(
                "INSERT INTO unsequenced(gateway_id, topic, payload) VALUES (?, ?, ?)",
                (gateway_id, topic, payload),
            )
            return True
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO messages(gateway_id, epoch, seq, topic, payload, counted) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (gateway_id, epoch, seq, topic, payload, int(counted)),
        )
        if cur.rowcount == 0 and counted:  # a live copy of what a retained delivery brought first
            self.conn.execute(
                "UPDATE messages SET counted = 1 WHERE gateway_id = ? AND epoch = ? AND seq = ? AND counted = 0",
                (gateway_id, epoch, seq),
            )
        return cur.rowcount == 1

    def seqs(self) -> dict[Key, list[int]]:
        """Every stored seq per (gateway, epoch), in order."""
        out: dict[Key, list[int]] = {}
        for gw, epoch, seq in self.conn.execute(
            "SELECT gateway_id, epoch, seq FROM messages ORDER BY gateway_id, epoch, seq"
        ):
            out.setdefault((gw, epoch), []).append(seq)
        return out

    def load_into(self, tracker: SeqTracker) -> None:
        """Replay what was accepted before into ``tracker`` (counted first, then the noted ones)."""
        rows = self.conn.execute(
            "SELECT gateway_id, epoch, seq, counted FROM messages ORDER BY counted DESC, gateway_id, epoch, seq"
        ).fetchall()
        for gw, epoch, seq, counted in rows:
            if counted:
                tracker.start_at(gw, seq, epoch)
                tracker.accept(gw, seq, epoch)
            else:
                tracker.note(gw, seq, epoch)

    def close(self) -> None:
        self.conn.close()


@dataclass
class HqConsumer:
    """``start()`` (connected, or ``ConnectFailed``), then messages go to ``on_received``; ``stop()``
    disconnects (the session is kept)."""

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
    protocol: Protocol = "5"
    connected: threading.Event = field(default_factory=threading.Event)
    subscribed: threading.Event = field(default_factory=threading.Event)
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: paho.Client | None = None

    @property
    def topic(self) -> str:
        base = f"{self.prefix.rstrip('/')}/+/#"
        return f"$share/{self.shared_group}/{base}" if self.shared_group else base

    @property
    def broker(self) -> Broker:
        return Broker(
            self.host,
            self.port,
            tls=self.tls,
            username=self.username,
            password=self.password,
            client_id=self.client_id,
            protocol=self.protocol,
        )

    def start(self, deadline_s: float = DEFAULT_DEADLINE_S) -> HqConsumer:
        """Connect and subscribe; raise ``ConnectFailed`` (one line) if either fails within the deadline."""
        if self.store is not None:
            self.store.load_into(self.tracker)

        def prepare(client: paho.Client) -> None:
            client.on_subscribe = self._on_subscribe
            client.on_message = self._on_message

        self._client = connect(
            self.broker,
            deadline_s=deadline_s,
            on_connected=self._on_connected,
            on_lost=self.connected.clear,
            prepare=prepare,
        )
        if not self.subscribed.wait(deadline_s) or self.last_error:
            self.stop()
            raise ConnectFailed(
                self.last_error or f"no answer to SUBSCRIBE {self.topic} within {deadline_s:g} s"
            )
        return self

    def stop(self) -> None:
        if self._client is not None:
            close(self._client)
            self._client = None

    def _on_connected(self, client: paho.Client) -> None:
        self.connected.set()
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, _c: paho.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        if not reasons or any(r.is_failure for r in reasons):
            self.last_error = f"the broker refused the subscription to {self.topic}"
        self.subscribed.set()

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
        except RecursionError:
            body = {"unparsed": "JSON nested too deeply"}
        if not isinstance(body, dict):
            body = {"unparsed": body}
        seq = body.get("seq")
        seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
        self.handle(gateway_id, topic, seq, body, retained=bool(msg.retain))

    def handle(
        self, gateway_id: str, topic: str, seq: int | None, body: dict[str, Any], *, retained: bool = False
    ) -> Received:
        """Accept one message (also the seam for tests without a broker)."""
        epoch = epoch_of(body)
        counted = not retained and body.get("snapshot") is not True
        with self._lock:
            if seq is None:
                new = True
            elif counted:
                new = self.tracker.accept(gateway_id, seq, epoch)
            else:
                new = self.tracker.note(gateway_id, seq, epoch)
            if new and topic == "events" and body.get("kind") == "outbox_coalesced":
                detail = body.get("detail")
                ranges = detail.get("seq_ranges", []) if isinstance(detail, dict) else []
                self.tracker.skip(gateway_id, _valid_ranges(ranges), epoch)
            if self.store is not None:
                payload = json.dumps(body, separators=(",", ":"))
                stored = self.store.add(gateway_id, topic, seq, payload, epoch, counted)
                new = new and stored
            received = Received(gateway_id, topic, seq, body, duplicate=not new, epoch=epoch, counted=counted)
        if self.on_received is not None:
            self.on_received(received)
        return received


def _valid_ranges(ranges: Any) -> list[list[int]]:
    """The ``[lo, hi]`` pairs of an ``outbox_coalesced`` event; anything else is ignored."""
    if not isinstance(ranges, list):
        return []
    return [
        [r[0], r[1]]
        for r in ranges
        if isinstance(r, list)
        and len(r) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
        and 0 < r[0] <= r[1]
        and r[1] - r[0] < 1_000_000
    ]
