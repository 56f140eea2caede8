"""A command handler needs only its port (gateway.runtime.ports.CommandContext): a ten-line fake
with a real SQLite store — no broker, no daemon (docs/architecture.md, "Ports")."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from gateway.core.timeutil import iso
from gateway.store.db import open_store
from gateway.sync.commands.handlers import hold, relay
from gateway.sync.commands.schema import HoldCmd, RelayCmd

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


class FakeContext:
    """Just what a hold or relay handler may use; it records what it was asked to re-decide."""

    def __init__(self, store):
        self.store, self.cfg, self.clock = store, SimpleNamespace(minor_digits=2, currency="CNY"), lambda: NOW
        self.reviewed: list[object] = []

    async def review_policy(self) -> None:
        self.reviewed.append("all")

    async def review_meters(self, meter_ids: Iterable[str]) -> None:
        self.reviewed.append(sorted(meter_ids))


def _store(tmp_path):
    store = open_store(tmp_path / "pmg.db")
    with store.tx() as conn:
        for acc, meters in (("a1", ("m1", "m2")), ("a2", ("m3",))):
            conn.execute(
                "INSERT INTO accounts(id, tariff_id, currency, created_at, updated_at) VALUES (?, 't', 'CNY', ?, ?)",
                (acc, iso(NOW), iso(NOW)),
            )
            for m in meters:
                conn.execute(
                    "INSERT INTO meters(id, account_id, bus_id, protocol, address, created_at, updated_at) "
                    "VALUES (?, ?, 'b1', 'dlt645', '000000000001', ?, ?)",
                    (m, acc, iso(NOW), iso(NOW)),
                )
    return store


def _envelope(kind: str) -> dict[str, str]:
    return {"id": f"c-{kind}", "type": kind, "gateway_id": "gw1", "issued_at": iso(NOW),
            "expires_at": iso(NOW + timedelta(hours=1)), "key_id": "k1", "sig": "x"}


async def _run(ctx, handler, cmd):
    applied = await handler(ctx, cmd, NOW)
    with ctx.store.tx() as conn:
        result = applied.write(conn)
    await applied.after()
    return result


def test_an_override_re_decides_only_its_target_account(tmp_path):
    ctx = FakeContext(_store(tmp_path))
    cmd = RelayCmd(**_envelope("relay"), op="set", target="m1", action="connect", reason="storm",
                   until=iso(NOW + timedelta(days=1)))
    result = asyncio.run(_run(ctx, relay, cmd))
    assert ctx.reviewed == [["m1", "m2"]]  # a1's meters; a2 (m3) is not re-decided
    clear = RelayCmd(**{**_envelope("relay"), "id": "c-clear"}, op="clear", override_id=result["override_id"])
    asyncio.run(_run(ctx, relay, clear))
    assert ctx.reviewed[-1] == ["m1", "m2"]


def test_an_account_override_re_decides_that_account(tmp_path):
    ctx = FakeContext(_store(tmp_path))
    cmd = RelayCmd(**_envelope("relay"), op="set", target="a2", action="disconnect", reason="theft",
                   until=iso(NOW + timedelta(days=1)))
    asyncio.run(_run(ctx, relay, cmd))
    assert ctx.reviewed == [["m3"]]


def test_a_hold_is_gateway_wide_so_every_account_is_re_decided(tmp_path):
    ctx = FakeContext(_store(tmp_path))
    cmd = HoldCmd(**_envelope("hold"), op="set", hold_id="h1", kind="weather", reason="heat",
                  until=iso(NOW + timedelta(days=1)))
    asyncio.run(_run(ctx, hold, cmd))
    assert ctx.reviewed == ["all"]
