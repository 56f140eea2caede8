"""Interop: HLS-GMAC (security suite 0) between the gateway's client (dlms-cosem) and the independent
peer (Gurux, whose AES-GCM and GMAC do the meter's side), over the TCP wrapper and HDLC on a pty:
the association, ciphered GETs and the relay with the right keys; another key refused in one line;
no key in any output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Quality, RelayAction, RelayState
from drivers.dlms.meter import DlmsMeter
from drivers.factory import LinkSettings, make_link, make_meter
from simulators.dlms_meter import DlmsMeterModel, DlmsPtyServer, DlmsTcpServer
from simulators.dlms_peer import HlsSecrets

EK, AK = "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "a1b2c3d4e5f60718293a4b5c6d7e8f90"
OTHER_EK = "00112233445566778899aabbccddeeff"
T0 = datetime(2027, 5, 1, 8, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


@pytest.fixture(params=["tcp", "hdlc"])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    clock = Clock()
    hls = HlsSecrets(bytes.fromhex(EK), bytes.fromhex(AK))
    model = DlmsMeterModel(power_w=Decimal(1200), now=clock, hls=hls)
    server = (DlmsTcpServer(model) if request.param == "tcp" else DlmsPtyServer(model)).start()
    keys = tmp_path / "meter.keys.toml"
    keys.write_text(f'encryption_key = "{EK}"\nauthentication_key = "{AK}"\n')
    yield {"model": model, "hls": hls, "clock": clock, "url": server.url, "kind": request.param, "keys": keys}
    server.stop()


def meter_for(rig: dict[str, Any], keys: Path | None = None, **options: Any) -> DlmsMeter:
    link = make_link(LinkSettings("dlms", rig["url"], timeout_s=0.5, retries=0, inter_frame_gap_s=0))
    address = "1" if rig["kind"] == "tcp" else "17"
    opts = {"auth": "hls-gmac", "client": 1, "key_file": str(keys or rig["keys"]), **options}
    return make_meter("dlms", link, address, "generic", options=opts)  # type: ignore[return-value]


def run(meter: DlmsMeter, coro_fn: Any) -> Any:
    async def go() -> Any:
        await meter.link.open()
        try:
            return await coro_fn()
        finally:
            await meter.link.close()

    return asyncio.run(go())


def no_secret_in(text: str) -> None:
    for secret in (EK, AK, OTHER_EK, EK[:8], AK[:8], OTHER_EK[:8]):
        assert secret not in text.lower()


def test_right_keys_read_in_a_ciphered_association(
    rig: dict[str, Any], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    model, clock, hls = rig["model"], rig["clock"], rig["hls"]
    model.advance()
    clock.t += timedelta(hours=1)  # 1200 W for 1 h
    m = meter_for(rig)
    reading = run(m, m.read)
    assert reading.quality is Quality.OK, reading.error
    assert reading.energy_import_wh == 1200 and reading.relay is RelayState.CLOSED
    # The peer decrypted and authenticated every APDU (a bad tag is counted, never acted on), and its
    # own counter moved on with each ciphered reply: AARE 1, the GMAC of its HLS answer 2, the answer
    # 3, five GETs 4-8 and on the wrapper the release 9: no GCM nonce used twice.
    assert hls.bad_tags == 0 and hls.refused_counters == 0
    assert hls.client_counter is not None and hls.client_counter > 0
    assert hls.server_counter == (10 if rig["kind"] == "tcp" else 9)
    out, err = capfd.readouterr()
    no_secret_in(out + err + caplog.text + repr(m) + repr(hls))


def test_right_keys_trip_the_relay_in_a_ciphered_association(rig: dict[str, Any]) -> None:
    m = meter_for(rig)
    assert run(m, lambda: m.relay(RelayAction.TRIP)) is RelayState.OPEN
    assert rig["model"].actions == ["remote_disconnect"] and not rig["model"].output
    assert rig["hls"].bad_tags == 0


def test_another_key_is_refused_in_one_line(
    rig: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = tmp_path / "wrong.keys.toml"
    wrong.write_text(f'encryption_key = "{OTHER_EK}"\nauthentication_key = "{AK}"\n')
    m = meter_for(rig, keys=wrong)
    r = run(m, m.read)
    assert r.quality is Quality.REFUSED and r.energy_import_wh is None
    assert "association refused" in (r.error or "") and "\n" not in (r.error or "")
    assert rig["hls"].bad_tags == 1  # refused by the peer's tag check, not by a garbled parse
    with pytest.raises(Exception, match="association refused"):
        run(m, lambda: m.relay(RelayAction.TRIP))
    assert rig["model"].actions == []
    out, err = capfd.readouterr()
    no_secret_in(out + err + caplog.text + repr(m) + (r.error or ""))
