"""Head-office commands arriving over MQTT: authenticated, fresh, idempotent, all-or-nothing.

Order of checks, and why:
1. size, JSON, envelope shape — cheap, before any cryptography;
2. the Ed25519 signature (``signing``) — nothing unauthenticated touches the database: its rejection
   ack is published best-effort and not stored, so a flood of garbage cannot grow the outbox;
3. the replay table (``commands``: id, digest of the canonical form, original ack) — a replay of a
   known command returns the original ack even after it expired, and applies nothing; the same id
   with other content is refused;
4. the type named in the topic must be the signed ``type`` and the signed ``gateway_id`` ours (the
   topic is not signed; a command for another gateway must not be replayed here);
5. freshness (``expires_at`` passed, ``issued_at`` in the future beyond clock skew, lifetime);
6. the type's own validation, then one transaction: the change, the ``commands`` row and the ack in
   the outbox (topic ``acks``) commit together or not at all.

A flood of rejected commands (anyone who can publish to the broker can send garbage) is rate-limited
per rejection code (``ratelimit.RejectionLimiter``, ``[mqtt] rejected_commands_per_minute``): the
unstored acks and the warning lines beyond the rate are dropped and summed up in one line, "N
rejected commands suppressed", at most every ``SUMMARY_S``.  Every id and reason an attacker chose
is escaped before it is logged (``textsafe.one_line``): a newline or an ANSI escape in a command id
cannot forge a log line.  Oversized commands never get here: the link asks the broker for a maximum
packet size (docs/mqtt.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from gateway.core.textsafe import one_line
from gateway.core.timeutil import iso
from gateway.store import outbox
from gateway.store.db import dumps
from gateway.sync.commands.handlers import HANDLERS, Applied, CommandRejected
from gateway.sync.commands.schema import MODELS, Envelope, first_error
from gateway.sync.ratelimit import RejectionLimiter
from gateway.sync.signing import SigningError, Verifier, digest

if TYPE_CHECKING:
    from gateway.runtime.ports import CommandContext

log = logging.getLogger("pmg.commands")

MAX_COMMAND_BYTES = 64 * 1024
CLOCK_SKEW = timedelta(minutes=5)
MAX_LIFETIME = timedelta(days=7)
ACK_SCHEMA = "pmg.ack/1"
SUMMARY_S = 60.0  # at most one "N rejected commands suppressed" line this often
DEFAULT_REJECTIONS_PER_MINUTE = 60

__all__ = ["MAX_COMMAND_BYTES", "CommandProcessor", "CommandRejected"]


class CommandProcessor:
    """Owns the command path of one gateway; ``handle`` is the MQTT link's ``on_command``."""

    def __init__(self, gateway: CommandContext) -> None:
        self.gateway = gateway
        self._keys: dict[str, str] = {}
        self._verifier = Verifier({})
        self.verifier  # noqa: B018 - a bad key in the configuration fails here, at start
        self._busy: dict[str, asyncio.Lock] = {}
        mqtt = gateway.cfg.mqtt
        rate = mqtt.rejected_commands_per_minute if mqtt is not None else DEFAULT_REJECTIONS_PER_MINUTE
        self.limiter = RejectionLimiter(rate)
        self.summary_s = SUMMARY_S
        self._summary_pending = False

    @property
    def verifier(self) -> Verifier:
        """The keys of the *current* configuration: a SIGHUP reload can rotate keys."""
        mqtt = self.gateway.cfg.mqtt
        keys = dict(mqtt.command_keys) if mqtt is not None else {}
        if keys != self._keys:
            self._verifier, self._keys = Verifier(keys), keys
        return self._verifier

    async def handle(self, kind: str, payload: bytes) -> dict[str, Any]:
        """Process one command and return the ack that was queued or published for it."""
        now = self.gateway.clock()
        try:
            raw = self._authenticate(kind, payload)
        except CommandRejected as exc:
            cmd_id = _peek_id(payload)
            ack = self._ack(cmd_id, kind, "rejected", now, code=exc.code, reason=exc.reason)
            if self._allow(exc.code):  # unauthenticated: a flood costs neither log lines nor acks
                _log_rejected(kind, cmd_id, exc.code, exc.reason)
                self._publish_unstored(ack)
            return ack
        cmd_id = str(raw["id"])
        lock = self._busy.setdefault(cmd_id, asyncio.Lock())
        try:
            async with lock:  # the same id twice at once: the second sees the first's result as a replay
                return await self._authenticated(kind, raw, now)
        except Exception as exc:  # a fault of ours (database full, a bug): say so, remember nothing
            log.exception("command failed type=%s id=%s", _inert(kind, 32), _inert(cmd_id, 128))
            ack = self._ack(cmd_id, kind, "failed", now, code="error", reason=f"gateway error: {exc}"[:300])
            self._publish_unstored(ack)
            return ack
        finally:
            if not lock.locked():
                self._busy.pop(cmd_id, None)

    # -- steps ------------------------------------------------------------------------------------
    def _authenticate(self, kind: str, payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_COMMAND_BYTES:
            raise CommandRejected("oversized", f"{len(payload)} bytes, the limit is {MAX_COMMAND_BYTES}")
        try:
            raw = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise CommandRejected("malformed", f"not UTF-8 JSON: {str(exc)[:120]}") from None
        if not isinstance(raw, dict):
            raise CommandRejected("malformed", f"a command is a JSON object, not {type(raw).__name__}")
        if "sig" not in raw:
            raise CommandRejected("unauthenticated", "unsigned: no 'sig'")
        try:
            Envelope.model_validate({k: raw.get(k) for k in Envelope.model_fields if k in raw})
        except ValidationError as exc:
            raise CommandRejected("malformed", first_error(exc)) from None
        try:
            self.verifier.verify(raw)
        except SigningError as exc:
            raise CommandRejected("unauthenticated", str(exc)) from None
        return raw

    async def _authenticated(self, kind: str, raw: dict[str, Any], now: datetime) -> dict[str, Any]:
        gw = self.gateway
        cmd_id = str(raw["id"])
        dig = digest(raw)
        row = gw.store.one("SELECT digest, ack_json FROM commands WHERE id = ?", cmd_id)
        if row is not None:
            if row["digest"] != dig:
                return self._reject(
                    cmd_id, kind, now, "conflict", f"id '{cmd_id}' was already used for another command"
                )
            original: dict[str, Any] = json.loads(row["ack_json"])
            ack = {**original, "replay": True, "at": iso(now)}
            with gw.store.tx() as conn:
                self._queue_ack(conn, ack, now)
            return ack
        if raw["type"] != kind:
            return self._reject(
                cmd_id, kind, now, "malformed", f"topic says '{kind}' but the command is '{raw['type']}'"
            )
        if raw["gateway_id"] != gw.cfg.gateway_id:
            return self._reject(
                cmd_id, kind, now, "wrong_gateway", f"command is for gateway '{raw['gateway_id']}'"
            )
        try:
            cmd = MODELS[kind].model_validate(raw)
        except ValidationError as exc:
            return self._record(cmd_id, kind, dig, now, CommandRejected("invalid", first_error(exc)))
        gw.witness_time(cmd.issued)  # a signed issued_at is a witness on our clock
        try:
            self._check_time(cmd, now)
            applied = await HANDLERS[kind](gw, cmd, now)
        except CommandRejected as exc:
            return self._record(cmd_id, kind, dig, now, exc)
        return await self._apply(cmd_id, kind, dig, now, applied)

    def _check_time(self, cmd: Envelope, now: datetime) -> None:
        if cmd.expires <= now:
            raise CommandRejected("expired", f"expired at {cmd.expires_at} (gateway time {iso(now)})")
        if cmd.issued > now + CLOCK_SKEW:
            raise CommandRejected(
                "not_yet_valid", f"issued_at {cmd.issued_at} is in the future (gateway time {iso(now)})"
            )
        if cmd.expires - cmd.issued > MAX_LIFETIME:
            raise CommandRejected("invalid", f"lifetime over {MAX_LIFETIME.days} days")
        if cmd.expires <= cmd.issued:
            raise CommandRejected("invalid", "expires_at is not after issued_at")

    async def _apply(
        self, cmd_id: str, kind: str, dig: str, now: datetime, applied: Applied
    ) -> dict[str, Any]:
        gw = self.gateway
        try:
            with gw.store.tx() as conn:
                before = _last_relay_command(conn)
                result = dict(applied.result)
                if applied.write is not None:
                    result.update(applied.write(conn) or {})
                ack = self._ack(cmd_id, kind, applied.status, now, result=result)
                self._store(conn, cmd_id, kind, dig, now, ack)
                _note_origin(conn, before, cmd_id)
        except CommandRejected as exc:
            return self._record(cmd_id, kind, dig, now, exc)
        if applied.after is not None:
            pending = applied.after()
            if pending is not None:
                await pending
        gw.notify_outbox()
        log.info("command applied type=%s id=%s status=%s", kind, _inert(cmd_id, 128), applied.status)
        return ack

    # -- acks ---------------------------------------------------------------------------------------
    def _ack(
        self,
        cmd_id: str | None,
        kind: str,
        status: str,
        now: datetime,
        *,
        code: str | None = None,
        reason: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "schema": ACK_SCHEMA,
            "command_id": cmd_id,
            "type": kind[:32],
            "status": status,
            "code": code or status,
            "reason": reason,
            "result": result,
            "at": iso(now),
            "replay": False,
        }

    def _queue_ack(self, conn: sqlite3.Connection, ack: dict[str, Any], now: datetime) -> None:
        outbox.put(conn, "acks", dict(ack), now, billing=ack["type"] in ("topup", "tariff", "account"))

    def _store(
        self, conn: sqlite3.Connection, cmd_id: str, kind: str, dig: str, now: datetime, ack: dict[str, Any]
    ) -> None:
        conn.execute(
            "INSERT INTO commands(id, type, digest, received_at, ack_json) VALUES (?, ?, ?, ?, ?)",
            (cmd_id, kind, dig, iso(now), dumps(ack)),
        )
        self._queue_ack(conn, ack, now)

    def _record(
        self, cmd_id: str, kind: str, dig: str, now: datetime, exc: CommandRejected
    ) -> dict[str, Any]:
        """An authenticated command refused on its merits: remember the refusal so a replay gets it again."""
        if self._allow(exc.code):
            _log_rejected(kind, cmd_id, exc.code, exc.reason)
        ack = self._ack(cmd_id, kind, "rejected", now, code=exc.code, reason=exc.reason)
        with self.gateway.store.tx() as conn:
            self._store(conn, cmd_id, kind, dig, now, ack)
        self.gateway.notify_outbox()
        return ack

    def _reject(self, cmd_id: str, kind: str, now: datetime, code: str, reason: str) -> dict[str, Any]:
        """Refused without remembering (the id may still arrive legitimately): ack via the outbox."""
        if self._allow(code):
            _log_rejected(kind, cmd_id, code, reason)
        ack = self._ack(cmd_id, kind, "rejected", now, code=code, reason=reason)
        with self.gateway.store.tx() as conn:
            self._queue_ack(conn, ack, now)
        self.gateway.notify_outbox()
        return ack

    # -- flood control ------------------------------------------------------------------------------
    def _allow(self, code: str) -> bool:
        """Whether this rejection may be logged (and, unauthenticated, acknowledged); if not, a
        summary line is due within ``summary_s``."""
        mqtt = self.gateway.cfg.mqtt  # a SIGHUP reload may change the rate
        if mqtt is not None:
            self.limiter.rate_per_minute = mqtt.rejected_commands_per_minute
        if self.limiter.allow(code):
            return True
        if not self._summary_pending:
            self._summary_pending = True
            asyncio.get_running_loop().call_later(self.summary_s, self.log_summary)
        return False

    def log_summary(self) -> None:
        """Log "N rejected commands suppressed (code=n, …)" for what the limiter held back."""
        self._summary_pending = False
        line = self.limiter.take_summary()
        if line is not None:
            log.warning("%s in the last %g s", line, self.summary_s)

    def _publish_unstored(self, ack: dict[str, Any]) -> None:
        link = self.gateway.mqtt
        if link is not None:
            link.publish_raw("acks", {**ack, "gateway_id": self.gateway.cfg.gateway_id})


def _last_relay_command(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM relay_commands").fetchone()[0])


def _note_origin(conn: sqlite3.Connection, before: int, cmd_id: str) -> None:
    """The relay commands this command's decision queued (a top-up's reconnection, an account's cut):
    every one written in its transaction, which nothing else writes meanwhile.  Their
    ``relay_confirmed`` event names the command (docs/mqtt.md, "Following a top-up to power")."""
    conn.execute(
        "INSERT OR IGNORE INTO relay_command_origins(relay_command_id, command_id) "
        "SELECT id, ? FROM relay_commands WHERE id > ?",
        (cmd_id, before),
    )


def _inert(text: object, limit: int) -> str:
    """Attacker-chosen text for a log line: control characters escaped, and ``=`` too, so an id like
    ``x meter=m1`` cannot pose as one of the line's logfmt fields (``gateway.runtime.logfmt``)."""
    return one_line(text, limit).replace("=", "\\x3d")


def _log_rejected(kind: str, cmd_id: str | None, code: str, reason: str | None) -> None:
    log.warning(
        "command rejected type=%s id=%s code=%s reason=%s",
        _inert(kind, 32),
        _inert(cmd_id, 128),
        code,
        _inert(reason, 300),
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _peek_id(payload: bytes) -> str | None:
    """The command id, if one can be read, so even a rejection of garbage can be correlated."""
    try:
        raw = json.loads(payload[:MAX_COMMAND_BYTES].decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return None
    cmd_id = raw.get("id") if isinstance(raw, dict) else None
    return cmd_id[:128] if isinstance(cmd_id, str) else None
