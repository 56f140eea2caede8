"""What the pages show, read from the database through a read-only connection.

Each function takes an open ``Store`` and returns plain dicts for the templates; none writes.  The
list of meters is one query however many meters there are (a page of them is shown), so a page
stays well under 300 ms with 2,000 meters (docs/web.md, "Speed").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.core.timeutil import iso, parse_iso
from gateway.ledger.forecast import DailyCostCache
from gateway.policy.decide import decide
from gateway.policy.explain import explain
from gateway.runtime.components import Components
from gateway.runtime.status import collect
from gateway.store.db import Store
from gateway.web import fmt

PAGE = 100
SORTS = {
    "meter": "m.id",
    "account": "m.account_id, m.id",
    "balance": "a.balance_minor, m.id",
    "state": "a.policy_state, m.id",
    "reading": "m.last_reading_at DESC, m.id",
}
STATES = ("normal", "warning", "notice", "limited", "cut", "reconnecting", "protected", "keep-power", "problem")
_STATE_SQL = {
    "normal": "a.policy_state = 'normal'",
    "warning": "a.policy_state LIKE 'warning_%'",
    "notice": "a.policy_state = 'notice_served'",
    "limited": "a.policy_state = 'load_limited'",
    "cut": "a.policy_state = 'disconnected'",
    "reconnecting": "a.policy_state = 'reconnection_pending'",
    "protected": "(a.protected = 1 OR a.protected_category IS NOT NULL)",
    "keep-power": "(m.keep_power = 1 OR m.id IN (SELECT target FROM overrides WHERE action = 'connect' "
    "AND cleared_at IS NULL AND expires_at > :now) OR a.id IN (SELECT target FROM overrides "
    "WHERE action = 'connect' AND cleared_at IS NULL AND expires_at > :now))",
    "problem": "(m.last_comms_error IS NOT NULL OR m.quarantined_reading_id IS NOT NULL)",
}


def enforcement(state: str, protected: bool, keep_power: bool, kept_on: bool) -> tuple[str, int | None]:
    """The one word a supervisor reads: normal / warning n / notice served / limited / cut / protected /
    keep-power (a configured 保电 flag, or a manual connect order in force)."""
    if keep_power or kept_on:
        return "keep-power", None
    if state.startswith("warning_"):
        return "warning", int(state.rsplit("_", 1)[1])
    named = {
        "notice_served": "notice served",
        "load_limited": "limited",
        "disconnected": "cut",
        "reconnection_pending": "reconnecting",
    }
    if state in named:
        return named[state], None
    return ("protected" if protected else "normal"), None


@dataclass(frozen=True)
class Query:
    q: str = ""
    state: str = ""
    sort: str = "meter"
    page: int = 1


def _kept_on(store: Store, now: datetime) -> set[str]:
    return {
        r[0]
        for r in store.all(
            "SELECT target FROM overrides WHERE action = 'connect' AND cleared_at IS NULL AND expires_at > ?",
            iso(now),
        )
    }


def meters(
    store: Store, parts: Components, costs: DailyCostCache, query: Query, now: datetime
) -> dict[str, Any]:
    digits = parts.cfg.minor_digits
    where, params = ["1 = 1"], {"now": iso(now)}
    if query.q:
        where.append("(m.id LIKE :q ESCAPE '\\' OR m.account_id LIKE :q ESCAPE '\\' OR m.address LIKE :q "
                     "ESCAPE '\\' OR a.name LIKE :q ESCAPE '\\')")
        params["q"] = f"%{_like(query.q)}%"
    if query.state in _STATE_SQL:
        where.append(_STATE_SQL[query.state])
    sql_where = " AND ".join(where)
    total = int(store.conn.execute(
        f"SELECT COUNT(*) FROM meters m JOIN accounts a ON a.id = m.account_id WHERE {sql_where}", params
    ).fetchone()[0])
    pages = max(1, -(-total // PAGE))
    page = min(max(1, query.page), pages)
    rows = store.conn.execute(
        "SELECT m.id, m.account_id, m.protocol, m.address, m.bus_id, m.keep_power, m.relay, m.relay_at, "
        "m.last_register_wh, m.last_reading_at, m.last_comms_error, m.quarantined_reading_id, "
        "a.balance_minor, a.emergency_credit_minor, a.policy_state, a.protected, a.protected_category, a.name, "
        "r.delta_wh, (SELECT p.taken_at FROM readings p WHERE p.meter_id = m.id AND p.taken_at < r.taken_at "
        "             ORDER BY p.taken_at DESC LIMIT 1) AS previous_at "
        "FROM meters m JOIN accounts a ON a.id = m.account_id LEFT JOIN readings r ON r.id = m.last_reading_id "
        f"WHERE {sql_where} ORDER BY {SORTS.get(query.sort, SORTS['meter'])} LIMIT :limit OFFSET :offset",
        {**params, "limit": PAGE, "offset": (page - 1) * PAGE},
    ).fetchall()
    kept = _kept_on(store, now)
    out = []
    for r in rows:
        label, level = enforcement(
            r["policy_state"], bool(r["protected"]) or r["protected_category"] is not None,
            bool(r["keep_power"]), r["id"] in kept or r["account_id"] in kept,
        )
        days = costs.days_left(store.conn, parts.book, r["account_id"], r["balance_minor"], now,
                               minor_digits=digits)
        out.append({
            "id": r["id"],
            "account": r["account_id"],
            "name": r["name"],
            "protocol": r["protocol"],
            "address": r["address"],
            "bus": r["bus_id"],
            "energy": fmt.kwh(r["last_register_wh"]),
            "power": _power(r["delta_wh"], r["previous_at"], r["last_reading_at"]),
            "read_at": fmt.local(r["last_reading_at"], parts.cfg.tz),
            "relay": r["relay"] or "",
            "state": label,
            "level": level,
            "balance": fmt.money(r["balance_minor"], digits),
            "negative": r["balance_minor"] < 0,
            "days": fmt.days(days),
            "problem": r["last_comms_error"] or ("quarantined" if r["quarantined_reading_id"] else ""),
        })
    return {"rows": out, "total": total, "page": page, "pages": pages}


def _power(delta_wh: int | None, previous_at: str | None, at: str | None) -> str:
    """Average power over the last reading's interval, in whole W (integer arithmetic)."""
    if delta_wh is None or previous_at is None or at is None:
        return ""
    seconds = int((parse_iso(at) - parse_iso(previous_at)).total_seconds())
    return "" if seconds <= 0 else str(delta_wh * 3600 // seconds)


def site(store: Store, parts: Components, now: datetime, verified: dict[str, Any]) -> dict[str, Any]:
    data = collect(store, now)
    live = data.get("live") or {}
    since = iso(now - timedelta(minutes=5))
    rates = {
        r[0]: r[1]
        for r in store.all(
            "SELECT m.bus_id, COUNT(*) FROM meters m JOIN readings r ON r.meter_id = m.id "
            "AND r.taken_at >= ? GROUP BY m.bus_id",
            since,
        )
    }
    buses = []
    for bus in parts.cfg.buses:
        b = (live.get("buses") or {}).get(bus.id, {})
        buses.append({
            "id": bus.id,
            "protocol": bus.protocol,
            "meters": len(parts.cfg.meters_on(bus.id)),
            "healthy": b.get("healthy"),
            "error_rate": b.get("error_rate"),
            "per_min": f"{rates.get(bus.id, 0) / 5:.1f}",
        })
    broker = live.get("broker")
    return {
        "gateway_id": parts.cfg.gateway_id,
        "version": live.get("version"),
        "timezone": parts.cfg.timezone,
        "now": fmt.local(iso(now), parts.cfg.tz),
        "daemon": data["daemon"],
        "time": data["time"],
        "broker": None if broker is None else bool(broker.get("connected")),
        "mqtt_configured": parts.cfg.mqtt is not None,
        "outbox": data["outbox"],
        "buses": buses,
        "last_backup": fmt.local(data.get("last_backup_at"), parts.cfg.tz),
        "chain": data.get("chain"),
        "verify": verified,
        "accounts_by_state": data["accounts_by_state"],
        "unreachable": len(data["meters_unreachable"]),
        "quarantined": len(data["meters_quarantined"]),
        "pending_relay": len(data["relay_commands_pending"]),
    }


def meter_live(store: Store, parts: Components, meter_id: str, now: datetime) -> dict[str, Any] | None:
    """The part of a meter page that changes: relay, state, balance, its relay commands."""
    r = store.one(
        "SELECT m.id, m.account_id, m.keep_power, m.relay, m.relay_at, m.last_register_wh, m.last_reading_at, "
        "m.last_comms_error, a.balance_minor, a.policy_state, a.protected, a.protected_category "
        "FROM meters m JOIN accounts a ON a.id = m.account_id WHERE m.id = ?",
        meter_id,
    )
    if r is None:
        return None
    kept = _kept_on(store, now)
    label, level = enforcement(
        r["policy_state"], bool(r["protected"]) or r["protected_category"] is not None,
        bool(r["keep_power"]), r["id"] in kept or r["account_id"] in kept,
    )
    commands = [
        {
            **dict(c),
            "created_at": fmt.local(c["created_at"], parts.cfg.tz),
            "updated_at": fmt.local(c["updated_at"], parts.cfg.tz),
        }
        for c in store.all(
            "SELECT id, action, status, attempts, actor, reason, outcome, created_at, updated_at "
            "FROM relay_commands WHERE meter_id = ? ORDER BY id DESC LIMIT 20",
            meter_id,
        )
    ]
    return {
        "id": r["id"],
        "account": r["account_id"],
        "relay": r["relay"] or "",
        "relay_at": fmt.local(r["relay_at"], parts.cfg.tz),
        "state": label,
        "level": level,
        "policy_state": r["policy_state"],
        "balance": fmt.money(r["balance_minor"], parts.cfg.minor_digits),
        "energy": fmt.kwh(r["last_register_wh"]),
        "read_at": fmt.local(r["last_reading_at"], parts.cfg.tz),
        "comms_error": r["last_comms_error"],
        "commands": commands,
    }


def meter_page(
    store: Store, parts: Components, costs: DailyCostCache, meter_id: str, now: datetime
) -> dict[str, Any] | None:
    live = meter_live(store, parts, meter_id, now)
    if live is None:
        return None
    tz, digits = parts.cfg.tz, parts.cfg.minor_digits
    m = store.one("SELECT protocol, address, bus_id FROM meters WHERE id = ?", meter_id)
    assert m is not None
    account = live["account"]
    readings = [
        {**dict(r), "taken_at": fmt.local(r["taken_at"], tz)}
        for r in store.all(
            "SELECT id, taken_at, quality, register_wh, relay, outcome, delta_wh, detail FROM readings "
            "WHERE meter_id = ? ORDER BY taken_at DESC LIMIT 20",
            meter_id,
        )
    ]
    charges = [
        {**dict(e), "created_at": fmt.local(e["created_at"], tz), "amount": fmt.money(e["amount_minor"], digits)}
        for e in store.all(
            "SELECT id, created_at, kind, amount_minor, energy_wh, external_id FROM entries "
            "WHERE account_id = ? ORDER BY id DESC LIMIT 20",
            account,
        )
    ]
    balance = int(store.scalar("SELECT balance_minor FROM accounts WHERE id = ?", account))
    days = costs.days_left(store.conn, parts.book, account, balance, now, minor_digits=digits)
    return {
        **live,
        "protocol": m["protocol"],
        "address": m["address"],
        "bus": m["bus_id"],
        "days": fmt.days(days),
        "readings": readings,
        "charges": charges,
        "series": week(store, parts, meter_id, account, now),
        "explain": explain_text(store, parts, meter_id, now),
    }


def week(store: Store, parts: Components, meter_id: str, account: str, now: datetime) -> list[dict[str, Any]]:
    """Seven local days ending today: energy charged on the meter and the account's balance at each
    day's end (the balance now, walked back through the account's entries)."""
    tz = parts.cfg.tz
    today = now.astimezone(tz).date()
    days = [today - timedelta(days=i) for i in range(6, -1, -1)]
    starts = [datetime(d.year, d.month, d.day, tzinfo=tz) for d in days]
    since = iso(starts[0])
    energy = [0] * 7
    for at, wh in store.all(
        "SELECT taken_at, delta_wh FROM readings WHERE meter_id = ? AND taken_at >= ? AND delta_wh IS NOT NULL "
        "AND outcome = 'charged'",
        meter_id,
        since,
    ):
        i = (parse_iso(at).astimezone(tz).date() - days[0]).days
        if 0 <= i < 7:
            energy[i] += int(wh)
    balance = int(store.scalar("SELECT balance_minor FROM accounts WHERE id = ?", account))
    moves = [0] * 8  # entries after each day's end (index 7: none; walked back from now)
    for at, amount in store.all(
        "SELECT created_at, amount_minor FROM entries WHERE account_id = ? AND created_at >= ?", account, since
    ):
        i = (parse_iso(at).astimezone(tz).date() - days[0]).days
        if 0 <= i < 7:
            moves[i] += int(amount)
    ends, running = [0] * 7, balance
    for i in range(6, -1, -1):
        ends[i] = running
        running -= moves[i]
    return [
        {"day": d.isoformat(), "energy_wh": e, "balance_minor": b}
        for d, e, b in zip(days, energy, ends, strict=True)
    ]


def explain_text(store: Store, parts: Components, meter_id: str, now: datetime) -> str:
    """``pmg explain``'s text for this meter: the daemon's own ``decide`` on a read-only snapshot."""
    acc, meter, holds, overrides = parts.policy.snapshot(store.conn, meter_id, now)
    d = decide(acc, meter, now, parts.calendar, parts.rules, holds=holds, overrides=overrides, money=parts.policy.money)
    return explain(d, acc, meter, now, parts.calendar, parts.rules)


EVENT_LIMIT = 200


def local_bound(text: str, tz: Any) -> str:
    """A date or date-time typed in the gateway's local time, as a stored UTC instant (ValueError)."""
    value = datetime.fromisoformat(text)
    if not 1970 <= value.year <= 2199:
        raise ValueError(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return iso(value)


def _like(text: str) -> str:
    """``text`` matched literally inside a LIKE pattern (with ``ESCAPE '\\'``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def events(store: Store, tz: Any, *, limit: int = EVENT_LIMIT, **filters: str) -> list[dict[str, Any]]:
    """The audit log, newest first, filtered (``kind`` ending in ``*`` matches a prefix)."""
    kind, meter, actor = filters.get("kind", ""), filters.get("meter", ""), filters.get("actor", "")
    start, end = filters.get("start", ""), filters.get("end", "")
    where, params = ["1 = 1"], []
    if kind:
        if kind.endswith("*"):
            where.append("kind LIKE ? ESCAPE '\\'")
            params.append(_like(kind[:-1]) + "%")
        else:
            where.append("kind = ?")
            params.append(kind)
    if meter:
        where.append("(meter_id = ? OR account_id = ?)")
        params += [meter, meter]
    if actor:
        where.append("actor LIKE ? ESCAPE '\\'")
        params.append("%" + _like(actor) + "%")
    if start:
        where.append("at >= ?")
        params.append(start)
    if end:
        where.append("at < ?")
        params.append(end)
    rows = store.all(
        "SELECT id, at, kind, severity, account_id, meter_id, actor, detail_json FROM events "
        f"WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
        *params,
        limit,
    )
    out = []
    for r in rows:
        detail = json.loads(r["detail_json"])
        trace = detail.get("trace") if isinstance(detail, dict) else None
        rules = (
            "; ".join(f"{t.get('rule')}={'ok' if t.get('passed') else 'NO'}" for t in trace if isinstance(t, dict))
            if isinstance(trace, list)
            else ""
        )
        out.append({
            **{k: r[k] for k in ("id", "at", "kind", "severity", "account_id", "meter_id", "actor")},
            "local": fmt.local(r["at"], tz),
            "rules": rules,
            "detail": detail,
            "detail_text": json.dumps(detail, ensure_ascii=False, sort_keys=True)[:400],
        })
    return out
