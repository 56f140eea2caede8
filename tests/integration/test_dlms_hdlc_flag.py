"""HDLC (IEC 62056-46) frames are delimited by their length, so 0x7E may sit inside one: here the
last byte of a reply's frame check sequence.  dlms-cosem's transport took that frame's closing flag
for an opening one and waited for a frame that never came (a timeout on every retry, since the same
value gives the same frame); drivers/dlms/__init__.py (``close_hdlc_frames``) reads it right."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from drivers.base import Point, Quality, Reading
from drivers.factory import LinkSettings, make_link, make_meter
from simulators.dlms_meter import DlmsMeterModel, DlmsPtyServer
from simulators.dlms_peer import PeerServer

ENERGY_WH = 53  # the public client's GET of 1.0.1.8.0.255 = 53 Wh is answered by ...35 53 7E 7E


def test_a_reply_whose_check_sequence_ends_in_a_flag_byte_is_read() -> None:
    model = DlmsMeterModel(power_w=Decimal(0), energy_wh=Decimal(ENERGY_WH))
    replies: list[bytes] = []
    server = DlmsPtyServer(model)
    peer: PeerServer = server.meter.server
    answer = peer.answer

    def recording(data: bytes) -> bytes:
        reply = answer(data)
        replies.append(reply)
        return reply

    peer.answer = recording  # type: ignore[method-assign]
    server.start()
    link = make_link(LinkSettings("dlms", server.url, timeout_s=0.3, retries=0, inter_frame_gap_s=0))
    meter = make_meter("dlms", link, "17", "generic")

    async def go() -> Reading:
        await link.open()
        try:
            return await meter.read(frozenset({Point.ENERGY_IMPORT}))
        finally:
            await link.close()

    try:
        r = asyncio.run(go())
    finally:
        server.stop()
    assert any(rep.endswith(b"\x7e\x7e") for rep in replies)  # the case is really on the line
    assert r.quality is Quality.OK, r.error
    assert r.energy_import_wh == ENERGY_WH
