"""Host integration pieces: sd_notify never blocks the loop, the instance lock, key=value logging."""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import time
from pathlib import Path

import pytest

from gateway.runtime.logfmt import KeyValueFormatter, kv, quote, setup_logging
from gateway.runtime.service import AlreadyRunning, InstanceLock, sd_notify


def test_sd_notify_does_not_block_when_nobody_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        started = time.monotonic()
        results = [sd_notify("WATCHDOG=1") for _ in range(200)]
        assert time.monotonic() - started < 2.0, "sd_notify blocked on a full queue"
        assert results[0] is True and results[-1] is False  # the queue filled; later ones were dropped
        assert receiver.recv(100) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert sd_notify("READY=1") is False


def test_second_lock_on_a_database_names_the_holder(tmp_path: Path) -> None:
    first = InstanceLock(tmp_path / "pmg.db")
    first.acquire()
    try:
        with pytest.raises(AlreadyRunning, match=r"another pmg \(pid \d+\) is already running on .*pmg\.db"):
            InstanceLock(tmp_path / "pmg.db").acquire()
    finally:
        first.release()
    again = InstanceLock(tmp_path / "pmg.db")
    again.acquire()  # released locks can be taken again
    again.release()


def test_the_lock_holds_for_the_same_database_through_a_symlink_or_another_path(tmp_path: Path) -> None:
    """Two daemons on one database through two paths would charge every reading twice."""
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "pmg.db").touch()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "pmg.db").symlink_to(tmp_path / "var" / "pmg.db")  # the file itself linked
    first = InstanceLock(tmp_path / "var" / "pmg.db")
    first.acquire()
    try:
        for other in (tmp_path / "etc" / "pmg.db", tmp_path / "etc" / ".." / "var" / "pmg.db"):
            with pytest.raises(AlreadyRunning):
                InstanceLock(other).acquire()
    finally:
        first.release()


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("pmg.bus", logging.WARNING, __file__, 1, msg, args, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_key_value_lines_carry_the_fields_the_call_passes() -> None:
    fmt = KeyValueFormatter()
    line = fmt.format(
        _record("relay command failed: %s", "no answer\nat all", **kv(meter="M-1", action="trip", error=None))
    )
    assert line == 'level=warning logger=pmg.bus msg="relay command failed: no answer\\nat all" meter=M-1 action=trip'
    given = fmt.format(_record("payment applied", account="A 1", bus="rs485-1"))
    assert given.endswith('bus=rs485-1 account="A 1"')
    # No Python representation: a mapping is flattened to scalars, booleans and floats spelt plainly.
    drift = fmt.format(_record("time broadcast", **kv(bus="b1", drift_s={"M-01": -316.7, "M 2": 0.25}, ok=True)))
    assert drift.endswith("bus=b1 drift_s.M-01=-316.7 drift_s.M_2=0.25 ok=true"), drift
    assert "{" not in drift and "None" not in drift
    # Text in the message is never taken for a field (an id cannot forge one).
    assert fmt.format(_record("rejected x meter=m1")).endswith('msg="rejected x meter=m1"')
    assert KeyValueFormatter(journal=True).format(_record("x")).startswith("<4>level=warning")


def test_tracebacks_stay_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("pmg", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = KeyValueFormatter().format(record)
    assert "\n" not in line and 'exc="Traceback' in line and "RuntimeError: boom" in line


def test_quote() -> None:
    assert quote("M-0042") == "M-0042"
    assert quote("") == '""'
    assert quote('say "hi"') == '"say \\"hi\\""'


def test_setup_logging_replaces_its_own_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        stream = io.StringIO()
        setup_logging(1, stream=stream)
        setup_logging(1, stream=stream)
        ours = [h for h in root.handlers if getattr(h, "_pmg", False)]
        assert len(ours) == 1
        logging.getLogger("pmg.test").info("hello bus=%s", "b1")
        assert stream.getvalue().startswith("<6>level=info logger=pmg.test") and "bus=b1" in stream.getvalue()
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)


def test_a_schema_step_on_an_existing_database_extends_systemds_start_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index rebuilt over months of entries outlasts systemd's start timeout: the daemon asks for
    more time before each step (a killed step rolls back, and would be killed again on every restart)."""
    import sqlite3

    from gateway.runtime import daemon
    from gateway.store import migrations
    from gateway.store.db import open_store

    path = tmp_path / "pmg.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for script in migrations.MIGRATIONS[:4]:  # a database left by the previous release (schema 4)
        for statement in migrations._split(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 4")
    conn.close()
    sock = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(sock))
        monkeypatch.setenv("NOTIFY_SOCKET", str(sock))
        store = open_store(path, on_migrate=daemon._announce_migration)
        message = receiver.recv(200).decode()
        store.close()
        assert message.startswith(f"EXTEND_TIMEOUT_USEC={daemon.MIGRATION_STEP_TIMEOUT_S * 1_000_000}\n")
        assert "schema 4 -> 5" in message
        receiver.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while receiver.recv(200):  # one message per step: later releases add steps after 5
                pass
        fresh = open_store(tmp_path / "new.db", on_migrate=daemon._announce_migration)
        fresh.close()
        with pytest.raises(BlockingIOError):
            receiver.recv(200)  # a new database builds its schema without a word
