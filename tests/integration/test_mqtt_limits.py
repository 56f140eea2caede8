"""Resource limits on the command path (docs/mqtt.md "Limits"): a broker anyone may publish to must not
be able to fill the gateway's memory, its log or the head office's ack stream.

- The link asks the broker for an MQTT 5 Maximum Packet Size (``[mqtt] max_packet_bytes``): a real
  Mosquitto then drops an oversized command instead of sending it, so the gateway never reads it
  (peak RSS stays flat while 10 commands of 8 MB are published).
- Rejections are rate-limited per code (token bucket), the rest summed up in one line.
- Ids an attacker chose are escaped before they reach a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import Mosquitto
from support.gateway_harness import subscriber
from support.signed_commands import running_gateway, settled
from support.waiting import async_wait_for, wait_for

from gateway.config import MqttConfig
from gateway.core.textsafe import one_line
from gateway.core.timeutil import system_clock
from gateway.runtime.logfmt import KeyValueFormatter
from gateway.store.db import open_store
from gateway.sync.commands.processor import MAX_COMMAND_BYTES, CommandProcessor
from gateway.sync.mqtt import MqttLink
from gateway.sync.ratelimit import RejectionLimiter

BIG = 8 * 1024 * 1024
N_BIG = 10  # below Mosquitto 2.0.11's in-flight window of 20: see docs/mqtt.md "Limits"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_lets_a_rate_through_per_code_and_counts_the_rest() -> None:
    clock = FakeMonotonic()
    limiter = RejectionLimiter(60, monotonic=clock)
    allowed = sum(limiter.allow("malformed") for _ in range(1000))
    assert allowed == 60, "a burst of one minute's worth, then nothing"
    assert limiter.allow("unauthenticated"), "each code has its own bucket"
    clock.now += 1.0  # one token per second comes back at 60 a minute
    assert limiter.allow("malformed") and not limiter.allow("malformed")
    assert limiter.take_summary() == "941 rejected commands suppressed (malformed=941)"
    assert limiter.take_summary() is None, "the summary resets"
    clock.now += 3600
    assert sum(limiter.allow("malformed") for _ in range(100)) == 60, (
        "the bucket never holds more than a minute"
    )


def test_one_line_escapes_control_characters_and_bounds_length() -> None:
    forged = 'cmd-1\nlevel=error msg="relay opened"\x1b[2J\x1b[31m\u2028\x85'
    safe = one_line(forged)
    assert "\n" not in safe and "\x1b" not in safe and "\u2028" not in safe and "\x85" not in safe
    assert safe.startswith("cmd-1\\nlevel=error") and "\\x1b[2J" in safe
    assert len(one_line("x" * 10_000, 50)) == 50


@pytest.fixture
def processor(
    tmp_path: Path, mosquitto: Mosquitto
) -> Iterator[tuple[asyncio.AbstractEventLoop, CommandProcessor]]:
    loop = asyncio.new_event_loop()
    manager = running_gateway(tmp_path, mosquitto.port)
    running = loop.run_until_complete(manager.__aenter__())
    try:
        loop.run_until_complete(settled(running))
        yield loop, CommandProcessor(running.gateway)
    finally:
        loop.run_until_complete(manager.__aexit__(None, None, None))
        loop.close()


def test_a_flood_of_rejected_commands_costs_a_bounded_number_of_log_lines_and_acks(
    processor: tuple[asyncio.AbstractEventLoop, CommandProcessor],
    mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop, proc = processor
    proc.summary_s = 0.2
    flood = 20_000
    with subscriber(mosquitto.port, "pmg/+/acks") as sub, caplog.at_level(logging.WARNING, "pmg.commands"):

        async def scenario() -> None:
            for i in range(flood):
                ack = await proc.handle("topup", f"garbage {i}".encode())
                assert ack["code"] == "malformed", "every command still gets its verdict"
            # a different code afterwards is let through: when its ack arrives, all before it have
            await proc.handle("topup", b"x" * (MAX_COMMAND_BYTES + 1))
            await async_wait_for(
                lambda: any("rejected commands suppressed" in r.getMessage() for r in caplog.records),
                what="the summary line",
            )

        loop.run_until_complete(scenario())
        wait_for(lambda: any(b.get("code") == "oversized" for b in sub.of("acks")), what="the marker ack")
        acks = sub.of("acks")
    rejected_lines = [r for r in caplog.records if "command rejected" in r.getMessage()]
    summaries = [r.getMessage() for r in caplog.records if "rejected commands suppressed" in r.getMessage()]
    malformed_acks = [b for b in acks if b.get("code") == "malformed"]
    assert len(rejected_lines) <= 60 + 1 + 5, len(rejected_lines)  # the burst, the marker, a refill
    assert len(malformed_acks) <= 65, len(malformed_acks)
    assert sum(int(s.split()[0]) for s in summaries) >= flood - 65, summaries


def test_a_command_id_cannot_forge_a_log_line(
    processor: tuple[asyncio.AbstractEventLoop, CommandProcessor], caplog: pytest.LogCaptureFixture
) -> None:
    loop, proc = processor
    evil = 'x\nlevel=error logger=pmg.relay msg="relay opened" meter=m1\x1b[2J\x1b]0;pwned\x07'
    with caplog.at_level(logging.WARNING, "pmg.commands"):
        loop.run_until_complete(proc.handle("topup", json.dumps({"id": evil, "type": "topup"}).encode()))
    # The journal's line, as the formatter writes it: the id is one quoted field value.
    lines = [KeyValueFormatter().format(r) for r in caplog.records if "command rejected" in r.getMessage()]
    assert len(lines) == 1
    assert "\n" not in lines[0] and "\x1b" not in lines[0] and "\x07" not in lines[0]
    assert " meter=m1" not in lines[0], "an id must not pose as a logfmt field"


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _current_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _publish(port: int, topic: str, payload_file: Path, count: int) -> None:
    """Publish from another process (mosquitto_pub), so only the gateway's memory is measured here."""
    binary = shutil.which("mosquitto_pub")
    assert binary, "mosquitto_pub is installed with mosquitto"
    for _ in range(count):
        subprocess.run(
            [
                binary,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                topic,
                "-f",
                str(payload_file),
            ],
            check=True,
            timeout=60,
            capture_output=True,
        )


def test_an_oversized_publish_never_reaches_the_gateway(mosquitto: Mosquitto, tmp_path: Path) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=mosquitto.port, tls=False, allow_plaintext=True, keepalive_s=5)
    store = open_store(tmp_path / "gw.db")
    received: list[tuple[str, int]] = []

    async def on_command(kind: str, payload: bytes) -> None:
        received.append((kind, len(payload)))

    link = MqttLink(cfg, "gw-big", store, system_clock, on_command=on_command)
    big = tmp_path / "big.json"
    big.write_bytes(b'{"pad": "' + b"x" * BIG + b'"}')
    small = tmp_path / "small.json"
    small.write_bytes(b'{"marker": true}')

    async def scenario() -> tuple[int, int]:
        task = asyncio.create_task(link.run())
        try:
            await async_wait_for(lambda: link.stats.connected and link.stats.subscribed, what="subscribed")
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to now
            before = _current_rss_kb()
            await asyncio.to_thread(_publish, mosquitto.port, "pmg/gw-big/commands/topup", big, N_BIG)
            await asyncio.to_thread(_publish, mosquitto.port, "pmg/gw-big/commands/marker", small, 1)
            await async_wait_for(lambda: any(k == "marker" for k, _ in received), timeout=30, what="marker")
            return before, _peak_rss_kb()
        finally:
            await link.stop(1.0)
            task.cancel()

    try:
        before, peak = asyncio.run(scenario())
    finally:
        store.close()
    print(f"peak RSS grew {peak - before} kB over {N_BIG} publishes of {BIG} bytes")
    assert all(size < 256 * 1024 for _, size in received), "the default [mqtt] max_packet_bytes is 256 KiB"
    assert [k for k, _ in received] == ["marker"], "the 8 MB commands were dropped by the broker"
    assert peak - before < BIG // 1024 // 2, f"peak RSS grew {peak - before} kB"
