"""Emergency credit in a running daemon (docs/enforcement.md, "Emergency credit"): the field report end to
end.  The decision-by-decision tests are in ``tests/unit/policy/test_emergency_credit.py``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

WEDNESDAY_11 = datetime(2026, 12, 2, 11, 0, tzinfo=UTC)  # a weekday, 11:00 GMT: cuts are allowed


def test_a_running_gateway_offers_once_and_never_operates_the_relay(tmp_path: Path) -> None:
    """The field report end to end: a real daemon (uk, a simulated DL/T 645 meter on a pty, the clock at
    a Wednesday 11:00 GMT), £5 of emergency credit and a balance of 0.00.  Before the fix the relay was
    tripped and re-closed on every decision; now the offer is made once and the relay is left alone
    while a dozen readings are charged and decided.  The texts it sends to the head office (the outbox's
    events) state the figures in the gateway's configured money (CNY here), not the preset's (GBP)."""
    import asyncio
    import json

    from support.gateway_harness import base_config, write_config
    from support.waiting import async_wait_for

    from gateway.config import load_config
    from gateway.core.timeutil import ScaledClock
    from gateway.runtime.daemon import Gateway
    from simulators.dlt645 import SimulatedDlt645Bus
    from simulators.model import FastClock, LoadProfile, MeterModel

    clock = ScaledClock(1.0, start=WEDNESDAY_11)
    model = MeterModel("000000000001", clock=FastClock(1.0, start=clock.epoch()), profile=LoadProfile((500,)))
    sim = SimulatedDlt645Bus([model], baud=9600, response_delay_s=0.002)
    port = sim.start_pty()
    body = base_config(tmp_path / "pmg.db", timezone="Europe/London", policy='[policy]\npreset = "uk"\n')
    body += f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{port}"\nbaud = 9600\npoll_interval_s = 0.2\n'
    body += '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n'
    body += '\n[[accounts]]\nid = "acc1"\nemergency_credit = "5.00"\n'
    cfg = write_config(tmp_path / "gw.toml", body)

    async def scenario() -> tuple[list[str], int, dict[str, str]]:
        gw = Gateway(cfg, load_config(cfg), clock=clock)
        await gw.start()
        try:
            await async_wait_for(
                lambda: gw.store.scalar("SELECT COUNT(*) FROM readings WHERE meter_id = 'm1'") >= 12,
                timeout=30, what="a dozen readings decided",
            )
            rows = gw.store.all("SELECT action FROM relay_commands ORDER BY id")
            offers = gw.store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'policy_offer_emergency_credit'")
            sent = [json.loads(r["payload"]) for r in gw.store.all("SELECT payload FROM outbox WHERE topic = 'events'")]
            texts = {e["kind"]: e["detail"]["message"] for e in sent if e["kind"].startswith("policy_")
                     and e["detail"].get("message")}
            return [r["action"] for r in rows], int(offers), texts
        finally:
            await gw.stop()

    try:
        commands, offers, texts = asyncio.run(scenario())
    finally:
        sim.stop()
    assert commands == [], f"relay commands: {commands}"
    assert offers == 1
    assert texts["policy_offer_emergency_credit"] == (
        "emergency_credit_offer: Emergency credit of 5.00 CNY is available: press A on your meter.")
    assert texts["policy_warn"] == "credit_exhausted: Your credit has run out (balance 0.00 CNY).", texts
