"""One ingest worker: a shared MQTT 5 subscription in, one PostgreSQL transaction per batch out.

The broker hands each message of ``$share/<group>/<prefix>/+/#`` to one worker of the group.  The
worker acknowledges nothing by itself (paho's ``manual_ack``): a batch is validated, written and
committed, and only then is each of its messages PUBACKed.  A worker killed at any point leaves its
unacknowledged messages in its persistent session (the broker resends them when a worker with the
same client id comes back) — at most they are stored already, and ``received`` admits them no second
time.  Nothing a publisher sends can stop a worker: what fails the checks is quarantined; a batch the
database refuses is retried row by row and the refused rows are quarantined with the database's reason.
If PostgreSQL is down the worker waits and retries, acknowledging nothing meanwhile.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from psycopg_pool import ConnectionPool

from gateway.sync.signing import Verifier, key_id_for, load_private_key, public_key_b64
from hq.ingest import gaps
from hq.ingest.migrations import migrate
from hq.ingest.schema import Message, Rejected, parse
from hq.ingest.store import Outcome, configure, ensure_month, month_of, write_batch

log = logging.getLogger("pmg.hq.ingest")

SESSION_EXPIRY_S = 7 * 24 * 3600


class IngestError(Exception):
    """The worker cannot start (broker or database unreachable, refused): one line for the operator."""


@dataclass
class IngestConfig:
    dsn: str
    host: str
    port: int = 8883
    tls: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    prefix: str = "pmg"
    group: str = "pmg-ingest"
    client_id: str = "pmg-ingest-0"
    batch_size: int = 500
    linger_s: float = 0.05
    receive_maximum: int = 1000
    signing_key: Path | None = None
    signing_key_id: str | None = None
    gap_delay_s: float = 60.0
    resend_retry_s: float = 300.0
    gap_scan_s: float = 5.0
    connect_timeout_s: float = 10.0


@dataclass
class Stats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    quarantined: int = 0
    unsequenced: int = 0
    batches: int = 0
    resends: int = 0
    db_retries: int = 0
    ages_ms: list[int] = field(default_factory=list)  # interval_end -> commit, per usage message
    seconds: dict[str, float] = field(default_factory=lambda: {"check": 0.0, "store": 0.0, "ack": 0.0})

    def as_dict(self) -> dict[str, Any]:
        ages = sorted(self.ages_ms)

        def pct(p: float) -> int | None:
            return ages[min(len(ages) - 1, int(p * len(ages)))] if ages else None

        return {
            "received": self.received, "stored": self.stored, "duplicates": self.duplicates,
            "quarantined": self.quarantined, "unsequenced": self.unsequenced, "batches": self.batches,
            "resends": self.resends, "db_retries": self.db_retries,
            "usage_age_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": ages[-1] if ages else None},
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


@dataclass(frozen=True)
class _Delivery:
    mid: int
    qos: int
    topic: str
    payload: bytes
    retain: bool


class IngestWorker:
    """``start()`` (raises :class:`IngestError`), ``run_until(event)``, ``stop()``."""

    def __init__(self, config: IngestConfig, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        self.clock = clock
        self.stats = Stats()
        self._inbox: queue.Queue[_Delivery] = queue.Queue()
        self._client: paho.Client | None = None
        self._pool: ConnectionPool[Any] | None = None
        self._connack = threading.Event()
        self.subscribed = threading.Event()
        self._connect_error: str | None = None
        self._stop = threading.Event()
        self._months: set[date] = set()
        self._key = load_private_key(config.signing_key) if config.signing_key else None
        self._key_id = (
            config.signing_key_id or key_id_for(self._key.public_key()) if self._key is not None else None
        )
        self._verifier = (
            Verifier({self._key_id: public_key_b64(self._key.public_key())})
            if self._key is not None and self._key_id is not None
            else None
        )
        self._threads: list[threading.Thread] = []

    @property
    def topic(self) -> str:
        return f"$share/{self.config.group}/{self.config.prefix.rstrip('/')}/+/#"

    # --- start -------------------------------------------------------------------------------------
    def start(self) -> IngestWorker:
        self._open_database()
        self._connect_broker()
        for target, name in ((self._write_loop, "ingest-writer"), (self._gap_loop, "ingest-gaps")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _open_database(self) -> None:
        timeout = max(1, int(self.config.connect_timeout_s))
        try:  # one plain connection first: its error is the operator's one line (the pool only retries)
            with psycopg.connect(self.config.dsn, connect_timeout=timeout, autocommit=True) as conn:
                migrate(conn)
        except psycopg.Error as exc:
            raise IngestError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from None
        pool: ConnectionPool[Any] = ConnectionPool(
            self.config.dsn, min_size=1, max_size=2, configure=configure, open=False,
            kwargs={"connect_timeout": timeout},
        )
        try:
            pool.open(wait=True, timeout=self.config.connect_timeout_s)
        except psycopg.Error as exc:
            pool.close()
            raise IngestError(f"cannot connect to PostgreSQL: {_one_line(exc)}") from None
        self._pool = pool

    def _connect_broker(self) -> None:
        c = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=c.client_id, protocol=paho.MQTTv5, manual_ack=True
        )
        if c.tls:
            context = ssl.create_default_context(cafile=c.ca_file)
            if c.cert_file:
                context.load_cert_chain(c.cert_file, c.key_file)
            client.tls_set_context(context)
        if c.username:
            client.username_pw_set(c.username, c.password)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_subscribe = lambda *_a: self.subscribed.set()
        client.reconnect_delay_set(1, 30)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = c.receive_maximum
        try:
            client.connect(c.host, c.port, keepalive=30, clean_start=False, properties=props)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.close_database()
            raise IngestError(f"cannot connect to the broker {c.host}:{c.port}: {_one_line(exc)}") from None
        client.loop_start()
        self._client = client
        if not self._connack.wait(c.connect_timeout_s) or self._connect_error:
            self.stop()
            raise IngestError(
                f"cannot connect to the broker {c.host}:{c.port}: {self._connect_error or 'no answer (CONNACK)'}"
            )
        if not self.subscribed.wait(c.connect_timeout_s):
            self.stop()
            raise IngestError(f"the broker {c.host}:{c.port} did not confirm the subscription {self.topic}")

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._connect_error = f"refused: {reason}"
        else:
            client.subscribe(self.topic, qos=1)
            log.info("connected client_id=%s topic=%s", self.config.client_id, self.topic)
        self._connack.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        self._inbox.put(_Delivery(msg.mid, msg.qos, msg.topic, bytes(msg.payload), bool(msg.retain)))

    # --- the batch loop ------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.config.linger_s
            while len(batch) < self.config.batch_size:
                left = deadline - time.monotonic()
                try:
                    batch.append(self._inbox.get(timeout=left) if left > 0 else self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self.process(batch)
            except Exception:  # a fault of the ingest itself: logged; unacknowledged, so delivered again
                log.exception("batch of %d not stored", len(batch))

    def process(self, batch: list[_Delivery]) -> None:
        """Validate, store (retrying while the database is away), then acknowledge every delivery."""
        messages: list[Message] = []
        rejected: list[Rejected] = []
        t0 = time.perf_counter()
        for d in batch:
            parsed = parse(d.topic, d.payload, prefix=self.config.prefix, retained=d.retain, verifier=self._verifier)
            if isinstance(parsed, Message):
                messages.append(parsed)
            elif isinstance(parsed, Rejected):
                rejected.append(parsed)
            # a Command (ours, correctly signed) is acknowledged and not stored
        t1 = time.perf_counter()
        outcome = self._store(messages, rejected)
        committed = self.clock()
        t2 = time.perf_counter()
        if self._client is not None:
            for d in batch:
                if d.qos > 0:
                    self._client.ack(d.mid, d.qos)
        s = self.stats
        s.seconds["check"] += t1 - t0
        s.seconds["store"] += t2 - t1
        s.seconds["ack"] += time.perf_counter() - t2
        s.received += len(batch)
        s.batches += 1
        s.stored += outcome.stored
        s.duplicates += outcome.duplicates
        s.quarantined += outcome.quarantined
        s.unsequenced += outcome.unsequenced
        for m in messages:
            if m.kind == "usage":
                try:
                    end = datetime.fromisoformat(str(m.body["interval_end"]))
                    s.ages_ms.append(int((committed - end).total_seconds() * 1000))
                except ValueError:
                    pass
        if len(s.ages_ms) > 2_000_000:
            del s.ages_ms[: len(s.ages_ms) // 2]

    def _store(self, messages: list[Message], rejected: list[Rejected]) -> Outcome:
        delay = 0.5
        while True:
            try:
                self._partitions(messages)
                return self._write(messages, rejected)
            except psycopg.OperationalError as exc:  # the database went away: wait, acknowledge nothing
                self.stats.db_retries += 1
                log.warning("database unavailable, retrying in %.1f s: %s", delay, _one_line(exc))
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)
            except Exception as exc:  # a row the database (or a check we missed) refuses: quarantine it, go on
                log.warning("batch refused (%s); storing row by row", _one_line(exc))
                return self._one_by_one(messages, rejected)

    def _write(self, messages: list[Message], rejected: list[Rejected]) -> Outcome:
        assert self._pool is not None
        with self._pool.connection() as conn:
            return write_batch(conn, messages, rejected)

    def _one_by_one(self, messages: list[Message], rejected: list[Rejected]) -> Outcome:
        total = self._write([], rejected)
        for m in messages:
            try:
                out = self._write([m], [])
            except psycopg.OperationalError:
                raise
            except Exception as exc:
                raw = _raw(m)
                out = self._write([], [Rejected(f"{self.config.prefix}/{m.gateway_id}/{m.topic}", m.gateway_id,
                                                f"database refused: {_one_line(exc)}", raw)])
            for k in ("stored", "duplicates", "quarantined", "unsequenced"):
                setattr(total, k, getattr(total, k) + getattr(out, k))
        return total

    def _partitions(self, messages: list[Message]) -> None:
        months = {month_of(str(m.body["interval_end"])) for m in messages if m.kind == "usage"} - self._months
        if not months:
            return
        assert self._pool is not None
        with self._pool.connection() as conn:
            for month in sorted(months):
                ensure_month(conn, month)
        self._months |= months

    # --- gaps ----------------------------------------------------------------------------------------
    def _gap_loop(self) -> None:
        while not self._stop.wait(self.config.gap_scan_s):
            try:
                self.scan_gaps()
            except psycopg.Error as exc:
                log.warning("gap scan failed: %s", _one_line(exc))

    def scan_gaps(self) -> None:
        assert self._pool is not None
        now = self.clock()
        with self._pool.connection() as conn:
            gaps.scan(conn, now, settle=timedelta(seconds=min(5.0, self.config.gap_delay_s)))
            if self._key is None or self._key_id is None:
                return
            self.stats.resends += gaps.request_resends(
                conn, now, self._publish_command, self._key, self._key_id,
                delay=timedelta(seconds=self.config.gap_delay_s),
                retry=timedelta(seconds=self.config.resend_retry_s),
            )

    def _publish_command(self, gateway_id: str, command: dict[str, Any]) -> None:
        if self._client is not None:
            topic = f"{self.config.prefix.rstrip('/')}/{gateway_id}/commands/{command['type']}"
            self._client.publish(topic, json.dumps(command, separators=(",", ":")), qos=1)

    # --- stop ----------------------------------------------------------------------------------------
    def run_until(self, done: threading.Event) -> None:
        while not done.wait(0.2):
            pass

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        self.close_database()

    def close_database(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _raw(m: Message) -> bytes:
    return json.dumps(m.body, separators=(",", ":"), ensure_ascii=False).encode()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
