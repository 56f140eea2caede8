"""HLS-GMAC invocation counters against the independent peer (Gurux), which refuses an association
whose counter is not above the last it accepted and shows that counter to the public client
(0.0.43.1.0.255): associations in a row, a driver restart between them, a lost record, a meter that
moved on behind our back; and ``run --check`` on the counter object's code."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.gateway_harness import base_config, write_config

from drivers.base import Point, Quality
from drivers.dlms.meter import DlmsMeter
from drivers.factory import LinkSettings, make_link, make_meter
from gateway.cli.main import cli
from simulators.dlms_meter import DlmsMeterModel, DlmsPtyServer, DlmsTcpServer
from simulators.dlms_peer import HlsSecrets

EK, AK = "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "a1b2c3d4e5f60718293a4b5c6d7e8f90"

@pytest.fixture(params=["tcp", "hdlc"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    hls = HlsSecrets(bytes.fromhex(EK), bytes.fromhex(AK))
    model = DlmsMeterModel(power_w=Decimal(1200), hls=hls)
    server = (DlmsTcpServer(model) if request.param == "tcp" else DlmsPtyServer(model)).start()
    keys = tmp_path / "meter.keys.toml"
    keys.write_text(f'encryption_key = "{EK}"\nauthentication_key = "{AK}"\n')
    yield {"hls": hls, "url": server.url, "kind": request.param, "keys": keys, "dir": tmp_path}
    server.stop()


def new_link(rig: dict[str, Any], retries: int = 1) -> Any:
    return make_link(LinkSettings("dlms", rig["url"], timeout_s=0.5, retries=retries, inter_frame_gap_s=0))


def new_driver(rig: dict[str, Any], link: Any = None, **options: Any) -> DlmsMeter:
    """A meter as a freshly started gateway builds it: new link, counter state from disk only."""
    link = link or new_link(rig)
    address = "1" if rig["kind"] == "tcp" else "17"
    opts = {"auth": "hls-gmac", "client": 1, "key_file": str(rig["keys"]), **options}
    return make_meter("dlms", link, address, "generic", options=opts)  # type: ignore[return-value]


def reads(meter: DlmsMeter, n: int) -> list[Any]:
    async def go() -> list[Any]:
        await meter.link.open()
        try:
            return [await meter.read(frozenset({Point.ENERGY_IMPORT})) for _ in range(n)]
        finally:
            await meter.link.close()

    return asyncio.run(go())


def records(rig: dict[str, Any]) -> list[Path]:
    return sorted(rig["dir"].glob("meter.keys.toml.ic-*"))


def test_associations_in_a_row_and_across_a_restart(rig: dict[str, Any]) -> None:
    hls = rig["hls"]
    first = reads(new_driver(rig), 3)
    assert [r.quality for r in first] == [Quality.OK] * 3, [r.error for r in first]
    seen = hls.client_counter
    [record] = records(rig)
    assert int(record.read_text()) > seen  # the record is above every counter the peer accepted
    # Restart, and without the meter's word (invocation_counter = "none"): the record alone carries it.
    after = reads(new_driver(rig, invocation_counter="none"), 2)
    assert [r.quality for r in after] == [Quality.OK] * 2, [r.error for r in after]
    assert hls.client_counter > seen and hls.refused_counters == 0


def test_without_a_record_the_meter_is_asked(rig: dict[str, Any]) -> None:
    hls = rig["hls"]
    assert reads(new_driver(rig), 1)[0].quality is Quality.OK
    for f in records(rig):
        f.unlink()  # the record lost (a new SD card)
    # Neither record nor the meter's word: the peer refuses the replayed counter (the failure the
    # counters exist for, and proof that the peer checks).
    blind = reads(new_driver(rig, invocation_counter="none"), 1)[0]
    assert blind.quality is Quality.REFUSED and hls.refused_counters == 1
    for f in records(rig):
        f.unlink()
    # The meter's counter object, read with the public client, is enough.
    r = reads(new_driver(rig), 1)[0]
    assert r.quality is Quality.OK, r.error


def test_a_meter_that_moved_on_is_read_again_and_the_association_retried(
    rig: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    hls = rig["hls"]
    m = new_driver(rig)

    async def go() -> list[Any]:
        await m.link.open()
        try:
            one = await m.read(frozenset({Point.ENERGY_IMPORT}))
            hls.client_counter = 5_000_000  # another head-end used the client meanwhile
            two = await m.read(frozenset({Point.ENERGY_IMPORT}))
            return [one, two]
        finally:
            await m.link.close()

    caplog.set_level(logging.WARNING, logger="pmg.dlms")
    one, two = asyncio.run(go())
    assert one.quality is Quality.OK and two.quality is Quality.OK, two.error
    assert hls.refused_counters == 1 and hls.client_counter > 5_000_000
    assert "behind the meter's" in caplog.text
    assert m.counter is not None and m.counter.next > 5_000_000


def test_the_public_client_reads_the_counter_and_nothing_else(rig: dict[str, Any]) -> None:
    """What the driver relies on, without HLS: the counter object readable by the public client
    (the value the peer keeps), the meter's data not."""
    rig["hls"].client_counter = 1234
    link = new_link(rig, retries=0)
    public = make_meter("dlms", link, "1" if rig["kind"] == "tcp" else "17", "generic")
    assert isinstance(public, DlmsMeter)
    hls_meter = new_driver(rig, link=link)
    counter = hls_meter.counter
    assert counter is not None

    async def go() -> Any:
        await link.open()
        try:
            await hls_meter._read_meter_counter(counter, "0.0.43.1.0.255")
            return await public.read()
        finally:
            await link.close()

    reading = asyncio.run(go())
    assert counter.meter_floor == 1235 and counter.meter_read
    assert reading.quality is Quality.REFUSED  # energy and relay refused to the public client


def _check(tmp_path: Path, extra: str) -> tuple[int, list[str]]:
    (tmp_path / "meter.keys").write_text(f'encryption_key = "{EK}"\nauthentication_key = "{AK}"\n')
    body = base_config(tmp_path / "pmg.db")
    body += '\n[[buses]]\nid = "d1"\nprotocol = "dlms"\nurl = "tcp://127.0.0.1:4059"\n'
    body += '\n[[meters]]\nid = "m1"\nbus = "d1"\naddress = "1"\naccount = "a1"\ntariff = "flat-cn"\n'
    body += '\n[meters.dlms]\nclient = 1\nauth = "hls-gmac"\nkey_file = "meter.keys"\n' + extra
    body += '\n[[accounts]]\nid = "a1"\n'
    cfg = write_config(tmp_path / "gw.toml", body)
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--check"], prog_name="pmg")
    return result.exit_code, result.output.strip().splitlines()


@pytest.mark.parametrize("value", ["1.0.1.8.0.255", "0.0.43.1.999.255", "0-0:43.1.0.255"])
def test_run_check_refuses_a_code_that_is_no_counter_object(tmp_path: Path, value: str) -> None:
    code, lines = _check(tmp_path, f'invocation_counter = "{value}"\n')
    assert code == 2 and len(lines) == 1, lines
    assert "invocation_counter" in lines[0] and "0.0.43.1.x.255" in lines[0]


@pytest.mark.parametrize("value", ["0.0.43.1.2.255", "none"])
def test_run_check_accepts_a_counter_object_or_none(tmp_path: Path, value: str) -> None:
    code, lines = _check(tmp_path, f'invocation_counter = "{value}"\n')
    assert code == 0, lines
