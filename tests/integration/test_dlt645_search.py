"""The DL/T 645 bus search: what a listening window means (pure), how the simulated line collides,
and the search against simulated meters on a pty whose addresses it is not told."""

from __future__ import annotations

import pytest
from support.dlt645_fixtures import run_async, sim_bus  # noqa: F401  (fixture)

from drivers.dlt645 import di as dis
from drivers.dlt645.frame import DIR_REPLY, Frame, address_matches, encode
from drivers.dlt645.link import Dlt645Link
from drivers.dlt645.search import Heard, classify, identify, pattern, probe_request, search
from simulators.dlt645.bus import collide
from simulators.model import Fault, MeterModel


def reply(address: str, request: Frame) -> bytes:
    value = dis.lookup(dis.COMM_ADDRESS).encode(address)
    return encode(Frame(address, DIR_REPLY | request.function, request.data[:4] + value), wakeup=2)


def test_pattern_wildcards_the_high_pairs() -> None:
    assert pattern(()) == "AAAAAAAAAAAA"
    assert pattern((61, 1)) == "AAAAAAAA0161"
    assert pattern((1, 2, 3, 4, 5, 6)) == "060504030201"
    assert address_matches("AAAAAAAA0161", "123456780161")
    assert not address_matches("AAAAAAAA0161", "123456780162")
    with pytest.raises(ValueError):
        pattern((100,))


def test_a_window_is_silence_one_meter_or_many() -> None:
    request = probe_request(pattern((7,)))
    one = reply("000001000007", request)
    two = reply("000002000007", request)
    assert classify(b"", request).outcome is Heard.SILENCE
    assert classify(b"\xfe\xfe", request).outcome is Heard.SILENCE  # wake-up bytes only
    judged = classify(one, request)
    assert judged.outcome is Heard.ONE and judged.address == "000001000007"
    # our own request echoed by the adapter, then the answer: still one meter
    assert classify(encode(request) + one, request).outcome is Heard.ONE
    # two clean answers one after the other (different response delays): more than one
    assert classify(one + two, request).outcome is Heard.MANY
    # overlapping answers (the simulator's OR per byte slot): more than one
    ((_, garbled),) = collide([(0.0, one), (0.0, two)], 0.001)
    assert classify(garbled, request).outcome is Heard.MANY
    # a valid frame with noise around it is not trusted either
    assert classify(b"\x00" + one, request).outcome is Heard.MANY
    # a late answer from an address this probe did not name is kept, and is not this probe's answer
    late = reply("000009000003", request)
    judged = classify(late, request)
    assert judged.outcome is Heard.SILENCE and judged.strays == ("000009000003",)


def test_the_simulated_line_overlaps_or_queues_replies() -> None:
    a, b = b"\x68\x01\x16", b"\x68\x02\x16"
    assert collide([(0.0, a), (0.0, b)], 0.001) == [(0.0, b"\x68\x03\x16")]
    # b starts one byte time later: its bytes land one slot on
    assert collide([(0.0, a), (0.001, b)], 0.001) == [(0.0, bytes([0x68, 0x69, 0x16 | 0x02, 0x16]))]
    # b starts after a has ended: two transmissions
    assert collide([(0.0, a), (0.01, b)], 0.001) == [(0.0, a), (0.01, b)]
    assert collide([(0.0, a), (0.0, b)], 0.0) == [(0.0, b"\x68\x03\x16")]


ADDRESSES = [
    # different last pairs: found at the first level
    "202612000011",
    "202612000012",
    "000000000099",
    # the same last pair 07: split on the second pair; 0107 twice: split on the third
    "000001000007",
    "000000020107",
    "000000030107",
]


def fast_link(url: str) -> Dlt645Link:
    return Dlt645Link(url, baud=115200, timeout_s=0.3, retries=1, backoff_s=0.0, inter_frame_gap_s=0.001)


@run_async
async def test_search_finds_meters_it_was_not_told_about_and_identifies_them(sim_bus) -> None:  # noqa: F811
    models = [MeterModel(address=a, meter_number=a[::-1], asset_number=f"ZJ-{a[-4:]}") for a in ADDRESSES]
    models[0].model_name = "DDZY719"
    models[0].prepaid_money_cents = 1000  # a money-prepaid meter
    models[1].faults.add(Fault.LATE_ANSWER)  # answers after the window: caught as a late answer
    models[1].late_answer_s = 0.07
    bus = sim_bus(models, response_delay_s=0.002)
    seen: list[tuple[int, int]] = []
    async with fast_link(bus.start_pty()) as link:
        result = await search(
            link, window_s=0.04, progress=lambda found, probes, _: seen.append((found, probes))
        )
    assert sorted(result.addresses) == sorted(ADDRESSES)
    assert result.suspects == [] and result.unconfirmed == []
    # root, then 100 for the last pair, 100 under 07, 100 under 0107
    assert result.stats.probes == 301 and result.stats.collisions == 3
    assert seen[-1] == (len(ADDRESSES), 301) and [f for f, _ in seen] == sorted(f for f, _ in seen)
    first = next(m for m in result.meters if m.address == "202612000011")
    assert first.meter_number == "110000216202" and first.asset_number == "ZJ-0011"
    assert first.model == "DDZY719" and first.meter_type == "money prepaid"
    other = next(m for m in result.meters if m.address == "000000000099")
    assert other.model is None and other.meter_type == "not prepaid" and other.notes == ()


@run_async
async def test_one_meter_answers_the_first_probe_and_an_empty_line_is_silent(sim_bus) -> None:  # noqa: F811
    bus = sim_bus([MeterModel(address="123456789012")])
    async with fast_link(bus.start_pty()) as link:
        result = await search(link, window_s=0.05)
    assert result.addresses == ["123456789012"] and result.stats.probes == 1
    silent = MeterModel(address="000000000001", faults={Fault.NO_ANSWER})
    bus = sim_bus([silent])
    async with fast_link(bus.start_pty()) as link:
        result = await search(link, window_s=0.05)
        assert result.meters == [] and result.stats.probes == 1 and result.stats.silent == 1
        with pytest.raises(Exception, match="no answer"):
            await identify(link, "000000000001")
