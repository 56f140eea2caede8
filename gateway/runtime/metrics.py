"""Prometheus metrics, one registry per Gateway.

A registry per gateway (never prometheus-client's global one) so that tests — and a lab host running
several gateways — can keep their numbers apart.  Everything here is fed from the event loop thread
(bus worker reads, relay outcomes, the status snapshot); the HTTP server thread only renders, so no
database access ever happens off the loop.  The server binds a local address only by configuration
(``[metrics] listen = "127.0.0.1:9108"``): metrics reveal meter counts and payment timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from gateway.core.listen import MetricsError, parse_listen
from gateway.core.timeutil import parse_iso
from gateway.store.db import Store

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
RECONNECT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)




@dataclass
class _Server:
    httpd: WSGIServer
    thread: Thread


class GatewayMetrics:
    """The gateway's instruments and (optionally) the HTTP endpoint that exposes them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.poll_latency = Histogram(
            "pmg_poll_latency_seconds",
            "Time to read one meter, per bus (a timeout counts its whole budget).",
            ["bus"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reads = Counter(
            "pmg_meter_reads",
            "Meter reads by bus and quality (ok, timeout, bad_frame, refused, implausible).",
            ["bus", "quality"],
            registry=r,
        )
        self.relay_commands = Counter(
            "pmg_relay_commands",
            "Relay command outcomes (confirmed, failed, pending = will retry) by action.",
            ["action", "outcome"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "pmg_outbox_depth", "Messages not yet acknowledged by the broker.", registry=r
        )
        self.outbox_oldest_age = Gauge(
            "pmg_outbox_oldest_age_seconds",
            "Age of the oldest undelivered message (0 when empty).",
            registry=r,
        )
        self.broker_connected = Gauge("pmg_broker_connected", "1 while connected to the broker.", registry=r)
        self.payment_to_reconnect = Histogram(
            "pmg_payment_to_reconnect_seconds",
            "From a payment received to its reconnect confirmed by relay read-back.",
            buckets=RECONNECT_BUCKETS,
            registry=r,
        )
        self.bus_heartbeat_age = Gauge(
            "pmg_bus_heartbeat_age_seconds",
            "Seconds since the bus worker last made progress.",
            ["bus"],
            registry=r,
        )
        self.bus_healthy = Gauge(
            "pmg_bus_healthy",
            "1 while some meter on the bus answered within its unhealthy_after_s, 0 when none did.",
            ["bus"],
            registry=r,
        )
        self.bus_silent = Gauge(
            "pmg_bus_silent_seconds",
            "Seconds since a meter on the bus last answered (since start if none has).",
            ["bus"],
            registry=r,
        )
        self.link_errors = Gauge(
            "pmg_bus_link_errors",
            "Link failures since start (I/O errors, reopens that failed); a count kept by the link.",
            ["bus"],
            registry=r,
        )
        self.link_reopens = Gauge(
            "pmg_bus_link_reopens", "Times the bus link was opened again since start.", ["bus"], registry=r
        )
        self._server: _Server | None = None
        self._read_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    # -- feeding ------------------------------------------------------------------------------------
    def observe_read(self, bus: str, quality: str, latency_s: float) -> None:
        # labels() resolves the child under a lock on every call: keep the children (every poll lands here)
        children = self._read_children.get((bus, quality))
        if children is None:
            children = self._read_children[(bus, quality)] = (
                self.poll_latency.labels(bus),
                self.reads.labels(bus, quality),
            )
        children[0].observe(latency_s)
        children[1].inc()

    def observe_relay(self, action: str, outcome: str) -> None:
        self.relay_commands.labels(action, outcome).inc()

    def observe_reconnect(self, seconds: float) -> None:
        self.payment_to_reconnect.observe(max(0.0, seconds))

    def set_outbox(self, depth: int, oldest_age_s: float | None) -> None:
        self.outbox_depth.set(depth)
        self.outbox_oldest_age.set(oldest_age_s or 0.0)

    def set_broker(self, connected: bool) -> None:
        self.broker_connected.set(1 if connected else 0)

    def set_heartbeat_age(self, bus: str, age_s: float) -> None:
        self.bus_heartbeat_age.labels(bus).set(age_s)

    def set_bus_health(self, bus: str, healthy: bool, silent_s: float, link_errors: int, reopens: int) -> None:
        self.bus_healthy.labels(bus).set(1 if healthy else 0)
        self.bus_silent.labels(bus).set(silent_s)
        self.link_errors.labels(bus).set(link_errors)
        self.link_reopens.labels(bus).set(reopens)

    def render(self) -> bytes:
        """The exposition text (what the HTTP endpoint serves)."""
        return generate_latest(self.registry)

    # -- serving ------------------------------------------------------------------------------------
    def serve(self, listen: str) -> tuple[str, int]:
        """Start the HTTP endpoint; returns the bound (host, port) — port 0 picks a free one."""
        host, port = parse_listen(listen)
        try:
            httpd, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"metrics.listen: cannot listen on {listen}: {exc.strerror or exc}") from None
        self._server = _Server(httpd, thread)
        bound = httpd.server_address
        return str(bound[0]), int(bound[1])

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None:
            return None
        bound = self._server.httpd.server_address
        return str(bound[0]), int(bound[1])

    def stop(self) -> None:
        """Stop the endpoint and join its thread (idempotent)."""
        if self._server is None:
            return
        self._server.httpd.shutdown()
        self._server.httpd.server_close()
        self._server.thread.join(timeout=5)
        self._server = None


def observe_relay_outcome(
    metrics: GatewayMetrics, store: Store, action: str, status: str, payment_id: str | None, now: datetime
) -> None:
    """Count an outcome; for a confirmed reconnect caused by a payment, time payment → power."""
    metrics.observe_relay(action, status)
    if status != "confirmed" or not payment_id:
        return
    received = store.scalar("SELECT received_at FROM payments WHERE payment_id = ?", payment_id)
    if received is not None:
        metrics.observe_reconnect((now - parse_iso(received)).total_seconds())
