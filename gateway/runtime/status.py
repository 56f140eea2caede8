"""StatusView health at a glance, for ``pmg status`` and the systemd STATUS line.

``pmg status`` must work with nothing but read access to the database (a technician's shell, no
daemon socket), yet some numbers live only in the daemon's memory (broker connected, bus error rates).
So the daemon writes a small *live snapshot* to the ``meta`` row ``status_json`` every few seconds,
and ``collect`` joins it with what the database itself says (outbox backlog, unreachable meters,
accounts per warning level, pending relay commands, last settlement).  A snapshot older than a few
intervals means the daemon is not running (or is stuck) — ``collect`` says so rather than showing
stale numbers as live.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.core.timeutil import iso, parse_iso
from gateway.runtime.timeguard import META_KEY as META_TIME_TRUST
from gateway.runtime.timeguard import status as time_status
from gateway.store.chain import head
from gateway.store.db import Store, dumps
from gateway.store.outbox import backlog

if TYPE_CHECKING:
    from gateway.runtime.ports import StatusView

META_STATUS = "status_json"
STALE_AFTER_INTERVALS = 3


def live_snapshot(gateway: StatusView, now: datetime, now_mono: float) -> dict[str, Any]:
    """What only the running daemon knows, as plain JSON."""
    buses: dict[str, Any] = {}
    for bus_id, worker in gateway.workers.items():
        s = worker.stats
        polls = s.polls_ok + s.polls_failed
        link = getattr(worker.link, "stats", None)
        buses[bus_id] = {
            "meters": len(worker.meters),
            "polls_ok": s.polls_ok,
            "polls_failed": s.polls_failed,
            "error_rate": round(s.polls_failed / polls, 4) if polls else None,
            "failed_by_kind": dict(s.failed_by_kind),
            "relay_ok": s.relay_ok,
            "relay_failed": s.relay_failed,
            "last_latency_ms": round(s.last_latency_s * 1000, 1),
            "heartbeat_age_s": round(max(0.0, now_mono - worker.heartbeat), 1),
            "busy_s": None if (busy_since := worker.busy_since) is None else round(now_mono - busy_since, 1),
            # A bus none of whose meters answered for unhealthy_after_s (a dead link, not a dead meter).
            "healthy": worker.healthy(now_mono),
            "silent_s": round(worker.silent_for(now_mono), 1),
            "unhealthy_after_s": worker.unhealthy_after_s,
            "link_down": bool(getattr(worker.link, "down", False)) or not worker.running,
            "link_errors": int(getattr(link, "link_errors", 0)),
            "link_reopens": int(getattr(link, "reopens", 0)),
            "last_link_error": getattr(link, "last_link_error", None),
        }
    broker: dict[str, Any] | None = None
    if gateway.mqtt is not None:
        st = gateway.mqtt.stats
        broker = {
            "connected": st.connected,
            "subscribed": st.subscribed,
            "connects": st.connects,
            "last_error": st.last_error,
            "published": st.published,
            "acknowledged": st.acknowledged,
            "last_ack_at": st.last_ack_at,
        }
    trust = getattr(gateway, "timetrust", None)
    return {
        "written_at": iso(now),
        "pid": os.getpid(),
        "version": __version__,
        "gateway_id": gateway.cfg.gateway_id,
        "healthy": gateway.healthy(now_mono),
        "interval_s": gateway.cfg.metrics.status_interval_s,
        "buses": buses,
        "broker": broker,
        "time": None if trust is None else trust.snapshot(),
    }


def write_snapshot(store: Store, snapshot: dict[str, Any]) -> None:
    with store.tx():
        store.meta_set(META_STATUS, dumps(snapshot))


def clear_snapshot(store: Store, now: datetime) -> None:
    """On a clean stop: mark the snapshot stopped so ``pmg status`` does not show it as live."""
    raw = store.meta_get(META_STATUS)
    snap = json.loads(raw) if raw else {}
    snap.update({"stopped_at": iso(now), "written_at": iso(now)})
    write_snapshot(store, snap)


def status_line(snapshot: dict[str, Any]) -> str:
    """One line for systemd's STATUS= (shown by ``systemctl status``)."""
    buses = snapshot.get("buses", {})
    failing = sorted(b for b, v in buses.items() if (v.get("error_rate") or 0) >= 0.5)
    broker = snapshot.get("broker")
    parts = [f"{len(buses)} buses"]
    dead = unhealthy_buses(snapshot)
    if dead:
        parts.append("UNHEALTHY: " + ",".join(dead))
    if (snapshot.get("time") or {}).get("trusted") is False:
        parts.append("TIME UNTRUSTED")
    if failing:
        parts.append("failing: " + ",".join(failing))
    if broker is not None:
        parts.append("broker up" if broker.get("connected") else "broker DOWN")
    return "polling; " + "; ".join(parts)


def unhealthy_buses(snapshot: dict[str, Any] | None) -> list[str]:
    """Buses the daemon's snapshot reports unhealthy (no meter answered for ``unhealthy_after_s``)."""
    buses = (snapshot or {}).get("buses", {})
    return sorted(b for b, v in buses.items() if v.get("healthy") is False)


def daemon_lock_held(database: str | os.PathLike[str]) -> bool | None:
    """Whether a process holds the daemon's instance lock on ``database`` (``gateway.runtime.service.
    InstanceLock``): True, False, or None when this user cannot tell (no read access to the lock file).

    The snapshot alone cannot tell a live daemon from one killed a moment ago (kill -9, a power cut):
    its last snapshot is fresh for a few intervals.  The lock can: the kernel drops it with the process.
    Tested with a shared, non-blocking ``flock`` on a read-only descriptor, which never disturbs the daemon.
    """
    import fcntl

    path = os.path.realpath(database) + ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def collect(store: Store, now: datetime, *, lock_held: bool | None = None) -> dict[str, Any]:
    """The whole picture from the database (read-only) plus the daemon's last snapshot.

    ``live`` is the snapshot only while the daemon runs: a stopped daemon's last view of the broker
    or the buses is history, not status (``snapshot_at`` says when it was written).  ``lock_held``
    (``daemon_lock_held``), when known, overrules a fresh snapshot whose writer is gone.
    """
    raw = store.meta_get(META_STATUS)
    live: dict[str, Any] | None = json.loads(raw) if raw else None
    daemon = "never ran"
    snapshot_at = None
    if live is not None:
        snapshot_at = live.get("written_at")
        age = (now - parse_iso(live["written_at"])).total_seconds()
        live["age_s"] = round(age, 1)
        if live.get("stopped_at"):
            daemon = "stopped"
        elif lock_held is False:
            daemon = "stopped"  # killed without a clean stop: nobody holds the lock
        elif age > STALE_AFTER_INTERVALS * float(live.get("interval_s") or 10.0):
            daemon = "not responding"
        else:
            daemon = "running"
        if daemon != "running":
            live = None
    bl = backlog(store)
    oldest_age = (
        None if bl.oldest_created_at is None else (now - parse_iso(bl.oldest_created_at)).total_seconds()
    )
    unreachable = [
        {
            "meter": r["id"],
            "bus": r["bus_id"],
            "error": r["last_comms_error"],
            "last_ok": r["last_reading_at"],
        }
        for r in store.all(
            "SELECT id, bus_id, last_comms_error, last_reading_at FROM meters "
            "WHERE last_comms_error IS NOT NULL ORDER BY id"
        )
    ]
    quarantined = [
        {"meter": r["id"], "reading_id": r["reading_id"], "since": r["taken_at"], "detail": r["detail"]}
        for r in store.all(
            "SELECT m.id, q.id AS reading_id, q.taken_at, q.detail FROM meters m "
            "JOIN readings q ON q.id = m.quarantined_reading_id ORDER BY m.id"
        )
    ]
    levels = {
        r[0]: r[1] for r in store.all("SELECT policy_state, COUNT(*) FROM accounts GROUP BY 1 ORDER BY 1")
    }
    pending = [
        dict(r)
        for r in store.all(
            "SELECT id, meter_id, action, status, attempts, created_at FROM relay_commands "
            "WHERE status IN ('pending', 'sending') ORDER BY id"
        )
    ]
    return {
        "daemon": daemon,
        "snapshot_at": snapshot_at,
        "live": live,
        "buses_unhealthy": unhealthy_buses(live) if daemon == "running" else [],
        "meters": store.scalar("SELECT COUNT(*) FROM meters"),
        "meters_unreachable": unreachable,
        "meters_quarantined": quarantined,
        "outbox": {
            "messages": bl.messages,
            "billing_messages": bl.billing_messages,
            "oldest_created_at": bl.oldest_created_at,
            "oldest_age_s": None if oldest_age is None else round(oldest_age, 1),
            "last_seq": bl.last_seq,
        },
        "last_settlement": last_settlement(store),
        "accounts_by_state": levels,
        "relay_commands_pending": pending,
        "last_backup_at": store.meta_get("last_backup_at"),
        "time": time_status(store.meta_get(META_TIME_TRUST)),
        "chain": _chain(store),
    }


def _chain(store: Store) -> dict[str, Any] | None:
    """The ledger's hash-chain head and length (docs/ledger.md, "Tamper evidence"): what the head
    office keeps to check ``pmg ledger verify --expect-head HASH:LENGTH`` against later."""
    current = head(store.conn)
    return None if current is None else {"head": current.hash, "length": current.length}


def last_settlement(store: Store) -> str | None:
    """The end of the last settled period: a ``settle*`` meta row if settlement keeps one, else the
    latest standing-charge entry's period end."""
    rows = store.all("SELECT key, value FROM meta WHERE key LIKE 'settle%' ORDER BY key")
    if rows:
        return str(rows[-1]["value"])
    value = store.scalar("SELECT MAX(period_end) FROM entries WHERE kind = 'standing_charge'")
    return None if value is None else str(value)


def publish(gateway: StatusView) -> dict[str, Any]:
    """Write the live snapshot, refresh the gauges that come from it, tell systemd a STATUS line."""
    from gateway.runtime.service import sd_notify

    now, now_mono = gateway.clock(), gateway.monotonic()
    snap = live_snapshot(gateway, now, now_mono)
    write_snapshot(gateway.store, snap)
    if gateway.mqtt is not None:
        gateway.mqtt.refresh_chain_head()  # the next MQTT status message carries a fresh head
        gateway.mqtt.publish_status(now_mono)  # and the head office gets one every few minutes
    metrics = getattr(gateway, "metrics", None)
    if metrics is not None:
        bl = backlog(gateway.store)
        age = (
            None if bl.oldest_created_at is None else (now - parse_iso(bl.oldest_created_at)).total_seconds()
        )
        metrics.set_outbox(bl.messages, age)
        if snap["broker"] is not None:
            metrics.set_broker(bool(snap["broker"]["connected"]))
        for bus_id, b in snap["buses"].items():
            metrics.set_heartbeat_age(bus_id, b["heartbeat_age_s"])
            metrics.set_bus_health(bus_id, b["healthy"], b["silent_s"], b["link_errors"], b["link_reopens"])
    sd_notify(f"STATUS={status_line(snap)}")
    return snap


async def status_loop(gateway: StatusView) -> None:
    """Every ``[metrics] status_interval_s``: publish; a failure is logged, never fatal."""
    import asyncio
    import logging

    log = logging.getLogger("pmg.status")
    while True:
        try:
            publish(gateway)
        except Exception as exc:
            log.error("status snapshot failed: %s", exc)
        await asyncio.sleep(gateway.cfg.metrics.status_interval_s)
