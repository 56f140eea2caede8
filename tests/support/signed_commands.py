"""Helpers for the sync tests (no tests here): a running gateway with command keys, signed commands.

The gateway is the real daemon in-process, its meters are DL/T 645 simulators on a real pty, its
broker a private Mosquitto; commands are signed with a key generated per test run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.config import load_config
from gateway.core.timeutil import ScaledClock, iso
from gateway.runtime.daemon import Gateway
from gateway.store.db import Store
from gateway.sync.signing import generate_key, key_id_for, public_key_b64, sign_command
from simulators.dlt645 import SimulatedDlt645Bus
from simulators.model import FastClock, LoadProfile, MeterModel
from support.gateway_harness import FAST_POLICY, base_config, write_config
from support.waiting import async_wait_for

HQ_KEY = generate_key()
HQ_KEY_ID = key_id_for(HQ_KEY.public_key())
OTHER_KEY = generate_key()  # a key the gateway does not know
_ids = itertools.count(1)

MONEY_TABLES = (
    "accounts",
    "entries",
    "payments",
    "meters",
    "relay_commands",
    "tariffs",
    "holds",
    "overrides",
)


def keys_toml() -> str:
    return f'\n[mqtt.command_keys]\n"{HQ_KEY_ID}" = "{public_key_b64(HQ_KEY.public_key())}"\n'


def command(kind: str, now: datetime, /, gateway_id: str = "gw-test", **fields: Any) -> dict[str, Any]:
    """An unsigned command of ``kind`` valid for an hour from ``now``."""
    return {
        "id": f"cmd-{next(_ids)}",
        "type": kind,
        "gateway_id": gateway_id,
        "issued_at": iso(now),
        "expires_at": iso(now + timedelta(hours=1)),
        **fields,
    }


def signed(kind: str, now: datetime, /, **fields: Any) -> dict[str, Any]:
    return sign_command(command(kind, now, **fields), HQ_KEY, HQ_KEY_ID)


def money_dump(store: Store) -> str:
    """Every row of every table that holds money or power decisions, as text (byte-for-byte compare)."""
    lines = []
    for table in MONEY_TABLES:
        for row in store.all(f"SELECT * FROM {table} ORDER BY rowid"):
            lines.append(f"{table}|" + "|".join(repr(v) for v in tuple(row)))
    return "\n".join(lines)


def money_digest(store: Store) -> str:
    return hashlib.sha256(money_dump(store).encode()).hexdigest()


@dataclass
class Running:
    gateway: Gateway
    models: list[MeterModel]

    @property
    def store(self) -> Store:
        return self.gateway.store


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    mqtt_port: int,
    *,
    meters: int = 2,
    extra: str = "",
    poll_s: float = 3600.0,
    speed: float = 1.0,
    policy: str = FAST_POLICY,
    mqtt_extra: str = "",
) -> AsyncIterator[Running]:
    """A gateway with ``meters`` simulated meters (accounts acc1..accN), command keys and a broker.

    ``speed`` > 1 runs the gateway's and the meters' clocks that much faster (energy accrues fast);
    ``mqtt_extra`` adds lines to the ``[mqtt]`` table.
    """
    clock = ScaledClock(speed)
    models = [
        MeterModel(f"{i:012d}", clock=FastClock(speed, start=clock.epoch()), profile=LoadProfile((500,)))
        for i in range(1, meters + 1)
    ]
    sim = SimulatedDlt645Bus(models, baud=9600, response_delay_s=0.002)
    port = sim.start_pty()
    body = base_config(tmp_path / "pmg.db", mqtt_port=mqtt_port, policy=policy, mqtt_extra=mqtt_extra)
    body += keys_toml() + extra
    body += f'\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "{port}"\nbaud = 9600\npoll_interval_s = {poll_s}\n'
    for i in range(1, meters + 1):
        body += (
            f'\n[[meters]]\nid = "m{i}"\nbus = "b1"\naddress = "{i:012d}"\naccount = "acc{i}"\n'
            'tariff = "flat-cn"\n'
        )
    cfg_path = write_config(tmp_path / "gw.toml", body)
    gateway = Gateway(cfg_path, load_config(cfg_path), clock=clock)
    try:
        await gateway.start()
        try:
            yield Running(gateway, models)
        finally:
            await gateway.stop()
    finally:
        sim.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def settle() -> None:
    await asyncio.sleep(0)


async def settled(running: Running) -> None:
    """Wait until the gateway's own start-up work (first polls, the trip of the empty accounts) is done,
    so that any later change to the money tables is the command's doing."""
    store = running.store
    await async_wait_for(
        lambda: store.scalar("SELECT COUNT(*) FROM meters WHERE last_register_wh IS NULL") == 0
        and store.scalar("SELECT COUNT(*) FROM relay_commands WHERE status IN ('pending', 'sending')") == 0,
        timeout=20,
        what="first polls and relay commands done",
    )
    previous = ""
    while (now := command_state(store)) != previous:
        previous = now
        await asyncio.sleep(0.5)


def command_state(store: Store) -> str:
    """What a command can change, byte for byte.  Charges, registers and relay states are left out:
    they move with the meters' own polls and with relay commands an earlier fuzzed command applied."""
    queries = [
        "SELECT * FROM payments ORDER BY rowid",
        "SELECT * FROM entries WHERE kind != 'charge' ORDER BY rowid",
        "SELECT * FROM tariffs ORDER BY rowid",
        "SELECT * FROM holds ORDER BY rowid",
        "SELECT * FROM overrides ORDER BY rowid",
        "SELECT id, name, tariff_id, protected, protected_category, emergency_credit_minor, notice_served_at, "
        "notice_delivered_at, notice_channel FROM accounts",
        "SELECT id, account_id, keep_power FROM meters ORDER BY id",
    ]
    return "\n".join(repr(tuple(row)) for q in queries for row in store.all(q))
