"""The HLS invocation counter record (drivers/dlms/counter.py): reserved before use, only raised,
atomic on disk (a process killed while writing leaves a value above every counter it handed out),
one-line errors; the counter-object code checked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.base import MeterRefused
from drivers.dlms.counter import (
    MARGIN,
    MAX_COUNTER,
    ClientCounter,
    CounterError,
    CounterFile,
    check_counter_obis,
    counter_path,
)


def test_a_block_is_recorded_before_any_counter_of_it_is_handed_out(tmp_path: Path) -> None:
    store = CounterFile(tmp_path / "m.keys.ic")
    c = ClientCounter(store)
    first = c.block(attempts=3)
    assert store.load() == 3 * MARGIN  # on disk before the first attempt starts
    assert [first(), first(), first()] == [0, MARGIN, 2 * MARGIN]
    with pytest.raises(CounterError, match="more association attempts"):
        first()
    nxt = c.block(attempts=1)
    assert nxt() == 3 * MARGIN and store.load() == 4 * MARGIN


def test_a_retry_after_an_attempt_that_went_past_its_share_repeats_no_counter(tmp_path: Path) -> None:
    """The link retries a whole conversation after a timeout; the first attempt reported (``used``,
    in a ``finally``) how far it got.  The same counter under the same key is the same GCM nonce."""
    store = CounterFile(tmp_path / "m.keys.ic")
    c = ClientCounter(store)
    first = c.block(attempts=3)
    sent: list[range] = []
    for _ in range(3):
        at = first()
        went_to = at + MARGIN + 10  # a conversation longer than its share, then a timeout
        c.used(went_to)
        sent.append(range(at, went_to))
        assert store.load() >= went_to  # the record covers every counter sent
    every = [n for r in sent for n in r]
    assert len(every) == len(set(every))


def test_a_restart_continues_above_the_record_and_the_meter(tmp_path: Path) -> None:
    store = CounterFile(tmp_path / "m.keys.ic")
    ClientCounter(store).block(attempts=1)
    again = ClientCounter(CounterFile(store.path))  # a new process
    assert again.block(attempts=1)() == MARGIN
    behind = ClientCounter(CounterFile(store.path))
    behind.saw_meter(10_000)  # the meter has seen more than we recorded: its word wins
    assert behind.block(attempts=1)() == 10_001
    assert store.load() == 10_001 + MARGIN


def test_the_record_never_goes_down(tmp_path: Path) -> None:
    store = CounterFile(tmp_path / "m.keys.ic")
    c = ClientCounter(store)
    c.block(attempts=1)
    c.used(5)  # inside the block: nothing to record
    assert store.load() == MARGIN
    c.used(MARGIN + 40)  # a long conversation went past its block
    assert store.load() == MARGIN + 40 and c.next == MARGIN + 40


def test_the_file_is_replaced_whole_and_private(tmp_path: Path) -> None:
    store = CounterFile(tmp_path / "m.keys.ic")
    store.save(7)
    store.save(9)
    assert store.path.read_text() == "9\n"
    assert os.stat(store.path).st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keys.ic"]  # no temporary left behind


@pytest.mark.parametrize("text", ["", "abc\n", "-3\n", f"{MAX_COUNTER + 2}\n"])
def test_a_bad_record_is_refused_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.keys.ic"
    path.write_text(text)
    with pytest.raises(CounterError) as exc:
        ClientCounter(CounterFile(path)).block(attempts=1)
    assert isinstance(exc.value, MeterRefused)  # the meter is not associated: a refusal, typed
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_an_unwritable_record_stops_the_association(tmp_path: Path) -> None:
    c = ClientCounter(CounterFile(tmp_path / "absent-dir" / "m.keys.ic"))
    with pytest.raises(CounterError, match="cannot record the invocation counter"):
        c.block(attempts=1)


def test_a_spent_counter_is_refused(tmp_path: Path) -> None:
    store = CounterFile(tmp_path / "m.keys.ic")
    store.save(MAX_COUNTER - MARGIN)
    with pytest.raises(CounterError, match="keys must be changed"):
        ClientCounter(store).block(attempts=2)


_WRITER = """
import sys
from pathlib import Path
from drivers.dlms.counter import ClientCounter, CounterFile
c = ClientCounter(CounterFile(Path(sys.argv[1])))
while True:
    first = c.block(attempts=1)
    print(first(), flush=True)  # handed out only once recorded
"""


def test_killed_while_writing_the_record_still_covers_every_counter_handed_out(tmp_path: Path) -> None:
    path = tmp_path / "m.keys.ic"
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    handed: list[int] = []
    try:
        for line in proc.stdout:
            handed.append(int(line))
            if len(handed) == 300:
                break
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-write, as likely as not
        proc.wait(timeout=10)
    assert len(handed) == 300
    recorded = CounterFile(path).load()
    assert recorded >= handed[-1] + MARGIN  # every counter any handed-out block could use is below it
    assert ClientCounter(CounterFile(path)).block(attempts=1)() >= handed[-1] + MARGIN


@pytest.mark.parametrize("good", ["0.0.43.1.0.255", "0.0.43.1.3.255", "0.0.43.1.255.255", "none"])
def test_counter_object_codes(good: str) -> None:
    assert check_counter_obis(good) == good


@pytest.mark.parametrize(
    "bad",
    ["1.0.1.8.0.255", "0.0.43.1.256.255", "0.0.43.1.x.255", "0.0.43.0.0.255", "", "0.0.43.1.0.255\n", "0.0.43.1.٣.255"],
)
def test_other_codes_are_refused_in_one_line(bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape("0.0.43.1.x.255")) as exc:
        check_counter_obis(bad)
    assert "\n" not in str(exc.value)


def test_one_record_per_line_meter_and_client(tmp_path: Path) -> None:
    key = tmp_path / "site.keys.toml"
    a = counter_path(key, "tcp://10.0.0.5:4059_1", 1)
    assert a.parent == tmp_path and a.name.startswith("site.keys.toml.ic-")
    assert len({a, counter_path(key, "tcp://10.0.0.6:4059_1", 1), counter_path(key, "tcp://10.0.0.5:4059_1", 2)}) == 3
