"""Fuzz of the DLMS decoding path: whatever bytes a meter sends back, a conversation ends in a value or
a typed ``DriverError`` — never another exception, never a hang.

The replies are those of a real exchange with the Gurux peer over HDLC (UA, AARE, the GET responses for
1.0.1.8.0.255 attributes 2 and 3, the DISC's UA), mutated (bit flips, cuts, insertions) or replaced by
random bytes.  The link runs on a scripted port and a clock that jumps, so a timeout costs nothing.
``slow`` runs 100,000 examples (``pytest -m slow``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import DriverError
from drivers.dlms import values as v
from drivers.dlms.link import DlmsLink, Session, Target

CAPTURE = [
    bytes.fromhex(h)
    for h in (
        "7ea01f21022373e6c781800005018006018007040000000108040002000161dc7e",  # UA to SNRM
        "7ea0382102233034e7e6e7006129a109060760857405080101a203020100a305a103020100be10040e0800065f1f040000125dffff0007fb277e",  # AARE
        "7ea0162102235209a6e6e700c401c10006000010f9a2e77e",  # GET 1.0.1.8.0.255/2: 4345 Wh
        "7ea0172102237479e9e6e700c401c10002020ffd16215e6e7e",  # GET .../3: a current register's {-3, A}
        "7ea00821022373e6c77e",  # UA to DISC (header only)
    )
]


class ScriptedPort:
    """A pyserial stand-in: each write makes the next scripted reply readable."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = list(replies)
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        if self.replies:
            self.buf += self.replies.pop(0)
        return len(data)

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        self.buf.clear()

    @property
    def in_waiting(self) -> int:
        return len(self.buf)

    def read(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def jumping_clock() -> Callable[[], float]:
    t = [0.0]

    def now() -> float:
        t[0] += 0.25
        return t[0]

    return now


def converse(replies: list[bytes]) -> Any:
    link = DlmsLink("/dev/null", timeout_s=1.0, retries=0, monotonic=jumping_clock())
    link._serial = ScriptedPort(replies)

    def work(s: Session) -> Any:
        raw = v.raw_number(s.get(3, "1.0.1.8.0.255", 2))
        return v.in_unit(raw, v.scaler_unit(s.get(3, "1.0.1.8.0.255", 3)), "energy")

    return link._converse_blocking(Target(1, 17), work, 1)


def test_the_capture_itself_decodes() -> None:
    with pytest.raises(v.ValueProblem, match="unit is A, expected Wh"):  # scaler-unit {-3, A}: decoded, refused as energy
        converse(CAPTURE)


def mutate(data: st.DataObject) -> list[bytes]:
    replies = []
    for reply in CAPTURE:
        b = bytearray(reply)
        how = data.draw(st.sampled_from(["keep", "keep", "flip", "cut", "insert", "random"]))
        if how == "flip" and b:
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del b[data.draw(st.integers(0, len(b))) :]
        elif how == "insert":
            i = data.draw(st.integers(0, len(b)))
            b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif how == "random":
            b = bytearray(data.draw(st.binary(max_size=80)))
        replies.append(bytes(b))
    return replies


def check(data: st.DataObject) -> None:
    try:
        converse(mutate(data))
    except DriverError:
        pass


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_replies_give_typed_errors_only(data: st.DataObject) -> None:
    check(data)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 278 s here for the 100,000
@settings(max_examples=100_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_replies_give_typed_errors_only_at_length(data: st.DataObject) -> None:
    check(data)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=40))
def test_value_decoders_give_typed_errors_only(raw: bytes) -> None:
    for fn in (v.scaler_unit, v.raw_number, v.clock_time):
        try:
            fn(raw)
        except v.ValueProblem:
            pass
