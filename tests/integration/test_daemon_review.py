"""The periodic policy review is a safety net spread over time: a slice per tick, every account per sweep."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.gateway_harness import offline_config

from gateway.config import load_config
from gateway.ledger.payments import apply_payment
from gateway.runtime.daemon import POLICY_REVIEW_S, POLICY_SWEEP_S, Gateway

METERS = 45


def test_review_slices_cover_every_meter_once_per_sweep(tmp_path: Path) -> None:
    # A bus that cannot open: no reading ever re-decides an account, only the review does.
    cfg_path = offline_config(tmp_path, METERS, width=2)
    ticks = round(POLICY_SWEEP_S / POLICY_REVIEW_S)
    per_tick = -(-METERS // ticks)
    sweep = -(-METERS // per_tick)  # ticks a sweep takes: at most ``ticks``
    assert sweep <= ticks

    async def scenario() -> None:
        gateway = Gateway(cfg_path, load_config(cfg_path))
        await gateway.start()
        store = gateway.store

        def decided() -> list[str]:
            # every account starts at zero credit: its first decision leaves the normal state
            return [r[0] for r in store.all("SELECT meter_id FROM events WHERE kind = 'policy_state' ORDER BY id")]

        try:
            assert decided() == []
            await gateway.review_slice()
            assert decided() == [f"m{i:02d}" for i in range(per_tick)], "the first slice, in id order"
            for _ in range(sweep - 1):
                await gateway.review_slice()
            assert sorted(decided()) == [f"m{i:02d}" for i in range(METERS)], "one sweep re-decides every meter"
            assert len(decided()) == METERS, "and each once"
            # Money arrives behind the policy's back (the ledger alone, no re-decision): the next slice
            # starts the next sweep at the first meter again, and re-decides only its slice.
            before = store.scalar("SELECT MAX(id) FROM events")
            with store.tx() as conn:
                for i in range(METERS):
                    apply_payment(conn, f"p{i}", f"a{i:02d}", 10_000, gateway.clock(), source="test")
            await gateway.review_slice()
            again = store.all(
                "SELECT meter_id FROM events WHERE kind = 'policy_state' AND id > ? ORDER BY id", before
            )
            assert [r[0] for r in again] == [f"m{i:02d}" for i in range(per_tick)]
        finally:
            await gateway.stop()

    asyncio.run(scenario())
