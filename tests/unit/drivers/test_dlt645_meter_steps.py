"""A DL/T 645 read is written once, as steps (``drivers.dlt645.meter``), and driven two ways: from the
event loop (``read``, each batch one ``request_many``) and on the link's thread (``poll_blocking``, each
batch one call of the held bus's exchange).  The two must give the same reading for every kind of
answer: clean, split over follow-up frames, refused, a point the meter does not have, a 1997 meter, a
poll cut short by a timeout, a port that fails half-way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from support.dlt645_fixtures import ManualClock

from drivers.base import BILLING_POINTS, DriverError, LinkError, MeterTimeout, Point, Quality, Reading
from drivers.dlt645.frame import Frame
from drivers.dlt645.meter import Dlt645Meter
from gateway.runtime.bus import POLL_POINTS
from simulators.dlt645.responder import respond
from simulators.model import Fault, LoadProfile, MeterModel

TAKEN_AT = datetime(2026, 5, 28, 20, 0, tzinfo=UTC)
ALL_POINTS = frozenset(Point)
Exchange = Callable[[Sequence[Frame]], list[Any]]


def _model(**kw: Any) -> MeterModel:
    return MeterModel(address="000000000042", profile=LoadProfile((500,)), clock=ManualClock(), **kw)


def _exchange(model: MeterModel, *, timeout_at: int = 0, link_error_at: int = 0) -> Exchange:
    """The meter behind a line, frame by frame: the n-th frame may time out (the batch stops there) or
    find the port dead (``LinkError``, as the link raises it)."""
    sent = 0

    def exchange(frames: Sequence[Frame]) -> list[Any]:
        nonlocal sent
        out: list[Any] = []
        for frame in frames:
            sent += 1
            if sent == link_error_at:
                raise LinkError("DL/T 645 link socket://x: the other end closed the connection")
            if sent == timeout_at:
                out.append(MeterTimeout(f"meter {frame.address}: no answer"))
                break
            out.append(respond(model, frame)[0])
        return out

    return exchange


class _LoopLink:
    """What ``read`` needs of a link, answering through the same exchange."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange

    async def request_many(self, frames: Sequence[Frame], *, retries: int | None = None) -> list[Any]:
        return self.exchange(frames)


CASES: dict[str, tuple[dict[str, Any], dict[str, int], frozenset[Point], str]] = {
    "clean poll": ({}, {}, POLL_POINTS, "2007"),
    "block over follow-up frames": ({"block_chunk": 8}, {}, POLL_POINTS, "2007"),
    "every point, some not there": ({}, {}, ALL_POINTS, "2007"),
    "refused": ({"faults": {Fault.ABNORMAL_REPLY}}, {}, POLL_POINTS, "2007"),
    "1997 meter": ({}, {}, BILLING_POINTS, "1997"),
    "second frame times out": ({}, {"timeout_at": 2}, POLL_POINTS, "2007"),
    "follow-up times out": ({"block_chunk": 8}, {"timeout_at": 3}, POLL_POINTS, "2007"),
    "port fails half-way": ({"block_chunk": 8}, {"link_error_at": 3}, POLL_POINTS, "2007"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_thread_and_the_loop_read_the_same(case: str) -> None:
    model_kw, line_kw, points, version = CASES[case]

    def meter(link: Any) -> Dlt645Meter:
        return Dlt645Meter(link, "000000000042", protocol_version=version, clock=lambda: TAKEN_AT)

    from_loop: Reading = asyncio.run(meter(_LoopLink(_exchange(_model(**model_kw), **line_kw))).read(points))
    on_thread = meter(None).poll_blocking(_exchange(_model(**model_kw), **line_kw), points)
    assert on_thread == from_loop
    expected_ok = not line_kw and Fault.ABNORMAL_REPLY not in model_kw.get("faults", set())
    assert (from_loop.quality is Quality.OK) is expected_ok, from_loop


def test_an_error_the_steps_do_not_expect_is_not_swallowed() -> None:
    """Only driver errors become a reading's quality; a bug in the exchange stays a bug."""

    def broken(_frames: Sequence[Frame]) -> list[Any]:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        Dlt645Meter(None, "000000000042", clock=lambda: TAKEN_AT).poll_blocking(broken, POLL_POINTS)  # type: ignore[arg-type]
    assert issubclass(LinkError, DriverError)
