"""The DL/T 645 link over real TCP sockets: resynchronisation, retries, timeouts, serialisation."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest
from support.dlt645_fixtures import ScriptedMeter, count_hand_offs, run_async, scripted  # noqa: F401  (fixture)

from drivers.base import BadFrame, MeterTimeout
from drivers.dlt645 import commands
from drivers.dlt645 import di as dis
from drivers.dlt645.frame import Frame, encode
from drivers.dlt645.link import Dlt645Link, LinkError

ADDR = "000000000001"
VALUE = dis.lookup(dis.ENERGY_IMPORT).encode(dis.Decimal("112280.26"))


def good(request: Frame) -> bytes:
    return encode(Frame(request.address, 0x80 | request.function, request.data[:4] + VALUE))


def silent(request: Frame) -> bytes:
    return b""


def bad_checksum(request: Frame) -> bytes:
    wire = bytearray(good(request))
    wire[-2] ^= 1
    return bytes(wire)


def link_for(meter: ScriptedMeter, **kw: object) -> Dlt645Link:
    opts: dict[str, object] = {"baud": 9600, "timeout_s": 0.3, "retries": 0, "backoff_s": 0.0, "inter_frame_gap_s": 0.0}
    opts.update(kw)
    return Dlt645Link(meter.url, **opts)  # type: ignore[arg-type]


READ = commands.read_request(ADDR, dis.ENERGY_IMPORT)


@run_async
async def test_reply_found_behind_noise_echo_foreign_reply_and_bad_checksum(scripted) -> None:  # noqa: F811
    def noisy(request: Frame) -> bytes:
        foreign = encode(Frame("000000000002", 0x91, request.data[:4] + VALUE))
        broken = bytearray(good(request))
        broken[-2] ^= 0xFF
        echo = encode(request, wakeup=4)
        return b"\x00\x68\x13" + echo + foreign + bytes(broken) + b"\xfe\xfe" + good(request)

    meter = scripted([noisy])
    async with link_for(meter) as link:
        reply = await link.request(READ)
    assert reply.address == ADDR and reply.is_reply and reply.data[4:] == VALUE
    assert link.stats.frames_skipped == 2  # the echo and the other meter's reply (the broken frame is noise)


@run_async
async def test_silence_is_a_timeout_after_all_retries(scripted) -> None:  # noqa: F811
    meter = scripted([silent])
    async with link_for(meter, timeout_s=0.1, retries=2, backoff_s=0.01) as link:
        t0 = time.monotonic()
        with pytest.raises(MeterTimeout, match=f"meter {ADDR}: no answer within") as info:
            await link.request(READ)
        elapsed = time.monotonic() - t0
    assert len(meter.requests) == 3 and link.stats.timeouts == 3
    assert 0.3 <= elapsed < 1.5
    assert "\n" not in str(info.value)


@run_async
async def test_truncated_reply_is_a_bad_frame(scripted) -> None:  # noqa: F811
    meter = scripted([lambda r: good(r)[:-3]])
    async with link_for(meter, timeout_s=0.15) as link:
        with pytest.raises(BadFrame, match="no valid reply in 17 bytes"):
            await link.request(READ)


@run_async
async def test_retry_recovers_from_a_bad_checksum(scripted) -> None:  # noqa: F811
    meter = scripted([bad_checksum, good])
    async with link_for(meter, timeout_s=0.15, retries=1) as link:
        reply = await link.request(READ)
    assert reply.data[4:] == VALUE
    assert len(meter.requests) == 2 and link.stats.bad_frames == 1


@run_async
async def test_abnormal_reply_is_returned_not_retried(scripted) -> None:  # noqa: F811
    meter = scripted([lambda r: encode(Frame(r.address, 0xD1, b"\x02"))])
    async with link_for(meter, retries=2) as link:
        reply = await link.request(READ)
    assert reply.is_abnormal and reply.refusal().no_such_data
    assert len(meter.requests) == 1


@run_async
async def test_concurrent_callers_are_serialised(scripted) -> None:  # noqa: F811
    in_flight = 0
    overlap = False
    lock = threading.Lock()

    def slow_good(request: Frame) -> bytes:
        nonlocal in_flight, overlap
        with lock:
            in_flight += 1
            overlap |= in_flight > 1
        time.sleep(0.01)  # the meter "thinks" while the line is busy
        with lock:
            in_flight -= 1
        return good(request)

    meter = scripted([slow_good])
    async with link_for(meter) as link:
        addrs = [f"{i:012d}" for i in range(1, 9)]
        replies = await asyncio.gather(
            *(link.request(commands.read_request(a, dis.ENERGY_IMPORT)) for a in addrs)
        )
    assert [r.address for r in replies] == addrs
    assert not overlap


@run_async
async def test_waiting_for_a_meter_does_not_block_the_event_loop(scripted) -> None:  # noqa: F811
    meter = scripted([silent])
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with link_for(meter, timeout_s=0.4) as link:
        task = asyncio.create_task(ticker())
        with pytest.raises(MeterTimeout):
            await link.request(READ)
        task.cancel()
    assert ticks >= 20


@run_async
async def test_wildcard_request_accepts_any_address_broadcast_is_send_only(scripted) -> None:  # noqa: F811
    def answer(request: Frame) -> bytes:
        if request.function == 0x13:
            return encode(Frame("000000000161", 0x93, bytes.fromhex("61 01 00 00 00 00")))
        return b""

    meter = scripted([answer])
    async with link_for(meter) as link:
        reply = await link.request(commands.read_address_request())
        assert commands.address_from_reply(reply) == "000000000161"
        await link.send(commands.broadcast_time_request(commands.datetime(2026, 1, 2, 3, 4, 5)))
        with pytest.raises(ValueError, match="broadcast"):
            await link.request(commands.broadcast_time_request(commands.datetime(2026, 1, 2, 3, 4, 5)))
    assert len(meter.requests) == 2


@run_async
async def test_inter_frame_gap_is_respected(scripted) -> None:  # noqa: F811
    times: list[float] = []

    def stamp(request: Frame) -> bytes:
        times.append(time.monotonic())
        return good(request)

    meter = scripted([stamp])
    async with link_for(meter, inter_frame_gap_s=0.05) as link:
        for _ in range(3):
            await link.request(READ)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.045


@run_async
async def test_open_errors_and_settings_are_one_line() -> None:
    with pytest.raises(LinkError, match="cannot open DL/T 645 link /dev/does-not-exist"):
        await Dlt645Link("/dev/does-not-exist").open()
    with pytest.raises(ValueError, match="parity"):
        Dlt645Link("/dev/null", parity="X")
    with pytest.raises(ValueError, match="invalid link settings"):
        Dlt645Link("/dev/null", timeout_s=0)
    with pytest.raises(LinkError, match="not open"):
        await Dlt645Link("/dev/null").request(READ)


@run_async
async def test_close_releases_the_executor_thread(scripted) -> None:  # noqa: F811
    meter = scripted([good])
    before = {t.name for t in threading.enumerate()}
    link = link_for(meter)
    await link.open()
    await link.request(READ)
    await link.close()
    await link.close()  # idempotent
    after = {t.name for t in threading.enumerate()}
    assert not any(n.startswith("dlt645-link") for n in after - before)


@run_async
async def test_late_reply_for_another_di_is_skipped(scripted) -> None:  # noqa: F811
    def stale_then_good(request: Frame) -> bytes:
        stale = encode(Frame(request.address, 0x91, dis.di_bytes(dis.VOLTAGE_A) + bytes.fromhex("00 22")))
        return stale + good(request)

    meter = scripted([stale_then_good])
    async with link_for(meter) as link:
        reply = await link.request(READ)
    assert reply.data == dis.di_bytes(dis.ENERGY_IMPORT) + VALUE
    assert link.stats.frames_skipped == 1


@run_async
async def test_a_reply_as_long_as_last_time_is_taken_in_one_read(scripted) -> None:  # noqa: F811
    def preambled(request: Frame) -> bytes:
        return b"\xfe\xfe\xfe\xfe" + good(request)

    meter = scripted([preambled])
    async with link_for(meter) as link:
        await link.request(READ)  # learns the reply's length (preamble included)
        reads = 0
        take = link._take

        def counting_take(ser: object, want: int) -> bytes:
            nonlocal reads
            reads += 1
            return take(ser, want)

        link._take = counting_take  # type: ignore[method-assign]
        for _ in range(3):
            reply = await link.request(READ)
            assert reply.data[4:] == VALUE
    assert reads == 3, "one read per exchange once the reply length is known"


@run_async
async def test_a_peer_that_closes_the_connection_is_a_link_error(scripted) -> None:  # noqa: F811
    meter = scripted([good])
    async with link_for(meter) as link:
        await link.request(READ)
        assert link._fd is not None, "socket:// is read straight from its descriptor"
        meter.close()
        with pytest.raises(LinkError):
            await link.request(READ)


@run_async
async def test_a_reply_shorter_than_last_time_is_still_read_whole(scripted) -> None:  # noqa: F811
    def preambled(request: Frame) -> bytes:
        return b"\xfe\xfe\xfe\xfe" + good(request)

    meter = scripted([preambled, good, good])
    async with link_for(meter) as link:
        await link.request(READ)
        for _ in range(2):  # the meter dropped its preamble: fewer bytes than expected
            reply = await link.request(READ)
            assert reply.address == ADDR and reply.data[4:] == VALUE
        other = commands.read_request("000000000002", dis.ENERGY_IMPORT)
        assert link._reply_bytes[(ADDR, READ.control, bytes(READ.data[:4]))] == len(good(READ))
        assert (other.address, other.control, bytes(other.data[:4])) not in link._reply_bytes


@run_async
async def test_a_request_is_a_batch_of_one_with_its_retries_on_the_link_thread(scripted) -> None:  # noqa: F811
    meter = scripted([bad_checksum, silent, good])
    async with link_for(meter, timeout_s=0.15, retries=2) as link:
        hand_offs = count_hand_offs(link)
        reply = await link.request(READ)
    assert reply.data[4:] == VALUE
    assert hand_offs() == 1, "retries run on the link thread (request_many's loop), not one trip each"
    s = link.stats
    assert (s.requests, s.attempts, s.bad_frames, s.timeouts) == (1, 3, 1, 1)


@run_async
async def test_a_cancelled_request_asks_no_more_after_the_attempt_on_the_wire(scripted) -> None:  # noqa: F811
    """A stopping gateway cancels its bus work: a dead meter's remaining retries (here 3 more
    timeouts and their backoffs, over a second) must not hold the bus and the stop."""
    meter = scripted([silent, silent, silent, silent])
    async with link_for(meter, timeout_s=0.3, retries=3, backoff_s=0.1) as link:
        task = asyncio.create_task(link.request(READ))
        while link.stats.attempts < 1:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        started = time.monotonic()
        async with link._lock:  # the next conversation: queued behind what the thread still does
            await link._run(lambda: None)
        waited = time.monotonic() - started
    assert link.stats.attempts == 1, "no attempt after the cancellation"
    assert waited < 0.5, f"the link thread went on for {waited:.2f} s"
