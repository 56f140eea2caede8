"""The documented install, done in a temporary root: the README's steps, the unit and docs/operations.md
describe one layout, and it works.

The layout (README, "Running under systemd"): a venv in /opt/pmg (``/opt/pmg/bin/pmg``), the
configuration in /etc/pmg (``gateway.toml``, ``tariffs/``) laid out by ``pmg install-config`` from the
examples the wheel ships, the state in /var/lib/pmg (the unit's StateDirectory and WorkingDirectory).
This builds the wheel, installs it into ROOT/opt/pmg outside the checkout (tests/support/wheel.py:
offline), lays out ROOT/etc/pmg, checks the example with ``pmg run --check``, points its buses at
simulated meters (served by the installed ``pmg sim``: ptys for the serial buses, TCP for the Modbus
TCP one), runs the unit's own ExecStart line (paths moved under ROOT) as systemd would — a notify
socket, the unit's environment and working directory — until every meter is read, stops it with
SIGTERM and checks the ledger.  ``systemd-analyze verify`` checks the unit against the installed
binary where systemd is available.
"""

from __future__ import annotations

import grp
import os
import re
import shlex
import shutil
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.waiting import wait_for
from support.wheel import REPO, build_wheel, clean_env, first_line, venv_with
from test_daemon_acceptance import NotifySocket

UNIT = REPO / "systemd" / "pmg.service"
README = REPO / "README.md"
OPERATIONS = REPO / "docs" / "operations.md"
PMG = "/opt/pmg/bin/pmg"
CONFIG = "/etc/pmg/gateway.toml"
ANALYZE = shutil.which("systemd-analyze")


def _unit() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _under(root: Path, text: str) -> str:
    """The layout's absolute paths moved under ``root``."""
    for top in ("/opt/pmg", "/etc/pmg", "/var/lib/pmg"):
        text = text.replace(top, f"{root}{top}")
    return text


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT with the wheel installed in ROOT/opt/pmg, and nothing else."""
    build = tmp_path_factory.mktemp("build")
    root = tmp_path_factory.mktemp("root")
    venv_with(root / "opt" / "pmg", build_wheel(build))
    return root


def _pmg(root: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_under(root, PMG), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or root,
        env=clean_env(),
    )


@contextmanager
def _process(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[str]]:
    kwargs.setdefault("env", clean_env())
    proc = subprocess.Popen(argv, text=True, **kwargs)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _replace_once(text: str, old: str, new: str) -> str:
    """An edit of the example that must apply exactly once: a changed example fails here, loudly."""
    assert text.count(old) == 1, f"the example no longer has exactly one {old!r}"
    return text.replace(old, new)


def test_the_documents_describe_one_layout() -> None:
    """README's steps, the unit and docs/operations.md name the same binary, configuration and user."""
    unit = _unit()
    assert shlex.split(unit["ExecStart"][0])[:4] == [PMG, "run", "--config", CONFIG]
    assert unit["User"] == ["pmg"] and "DynamicUser" not in unit
    assert unit["StateDirectory"] == ["pmg"] and unit["WorkingDirectory"] == ["/var/lib/pmg"]
    readme, operations = README.read_text(), OPERATIONS.read_text()
    steps = readme[readme.index("## Running under systemd") :]
    steps = steps[: steps.index("\n## ", 3)]
    for needed in ("useradd --system", "python3 -m venv /opt/pmg", f"{PMG} install-config", CONFIG, "pmg.service"):
        assert needed in steps, needed
    binaries = re.compile(r"(?<![\w.-])/[\w./-]*?/bin/pmg\b")
    link = f"ln -s {PMG} /usr/local/bin/pmg"  # the technician's short name: a link to the one binary
    assert link in steps
    for name, text in (("README.md", readme), ("docs/operations.md", operations), ("pmg.service", UNIT.read_text())):
        text = text.replace(link, "")
        assert set(binaries.findall(text)) <= {PMG}, (name, set(binaries.findall(text)))
    assert "DynamicUser=yes" not in operations and PMG in operations


@pytest.mark.slow
def test_install_config_then_run_check_then_a_short_run_that_stops_cleanly(root: Path, tmp_path: Path) -> None:
    etc = root / "etc" / "pmg"
    state = root / "var" / "lib" / "pmg"
    group = grp.getgrgid(os.getgid()).gr_name  # the installer's `--group pmg`, with a group we have

    # 1. /etc/pmg from the shipped examples: the configuration and the tariffs it names.
    done = _pmg(root, "install-config", "--root", str(root), "--group", group)
    assert done.returncode == 0, done.stderr
    config = etc / "gateway.toml"
    assert f"wrote {config}" in done.stdout
    shipped = _pmg(root, "install-config", "--root", str(tmp_path / "nowhere"))
    assert shipped.returncode == 2 and shipped.stderr.count("\n") == 1  # bad input: one line
    tariffs = sorted(p.name for p in (etc / "tariffs").glob("*.toml"))
    assert {"flat-cn.toml", "tou-cn.toml"} <= set(tariffs)
    for path, mode in ((etc, 0o750), (etc / "tariffs", 0o750), (config, 0o640)):
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == mode and st.st_gid == os.getgid(), path
    config.write_text(config.read_text() + "\n# edited by the installer\n")
    again = _pmg(root, "install-config", "--root", str(root))
    assert again.returncode == 0 and f"kept {config} (exists)" in again.stdout
    assert config.read_text().endswith("# edited by the installer\n")  # never overwritten

    # 2. The example as laid out passes the check, from the unit's working directory.
    state.mkdir(parents=True)
    check = _pmg(root, "run", "--check", "-c", _under(root, CONFIG), cwd=state)
    assert check.returncode == 0, check.stderr
    assert f"{config}: OK (3 buses, 4 meters)" in check.stdout

    # 3. The installer's edits: the database in ROOT, the buses on simulated meters, no head office.
    with (
        _process([_under(root, PMG), "sim", "dlt645", "--meters", "2", "--pty", "--no-timing"], stdout=subprocess.PIPE) as dlt,
        _process([_under(root, PMG), "sim", "modbus", "--profile", "dds238", "--pty"], stdout=subprocess.PIPE) as rtu,
        _process([_under(root, PMG), "sim", "modbus", "--profile", "sdm120", "--tcp", "0"], stdout=subprocess.PIPE) as tcp,
    ):
        dlt_pty = first_line(dlt, 30).split(" on ")[1].split()[0]
        rtu_pty = first_line(rtu, 30).rsplit(" ", 1)[1].strip()
        tcp_url = first_line(tcp, 30).rsplit(" ", 1)[1].strip()
        text = config.read_text()
        text = _replace_once(text, 'database = "/var/lib/pmg/pmg.db"', f'database = "{state}/pmg.db"')
        text = _replace_once(text, 'url = "/dev/ttyUSB0"', f'url = "{dlt_pty}"')
        text = _replace_once(text, 'url = "/dev/ttyUSB1"', f'url = "{rtu_pty}"')
        text = _replace_once(text, 'url = "tcp://192.0.2.10:502"', f'url = "{tcp_url}"')
        text = _replace_once(text, 'listen = "127.0.0.1:9108"', 'listen = "127.0.0.1:0"')
        text = text[: text.index("[mqtt]\n")] + text[text.index("[metrics]\n") :]
        config.write_text(text)
        check = _pmg(root, "run", "--check", "-c", str(config), cwd=state)
        assert check.returncode == 0, check.stderr

        # 4. The unit's ExecStart, environment and working directory, under a notify socket.
        unit = _unit()
        argv = shlex.split(_under(root, unit["ExecStart"][0]))
        env = clean_env()
        for assignment in shlex.split(_under(root, " ".join(unit["Environment"]))):
            key, _, value = assignment.partition("=")
            env[key] = value
        notify = NotifySocket(tmp_path / "notify.sock")
        env["NOTIFY_SOCKET"] = str(notify.path)
        env["WATCHDOG_USEC"] = str(int(unit["WatchdogSec"][0]) * 1_000_000)
        log = tmp_path / "daemon.log"
        try:
            with open(log, "w") as err, _process(argv, cwd=state, env=env, stdout=subprocess.DEVNULL, stderr=err) as daemon:
                env_used = env  # the same environment for the technician's commands below

                def read_meters() -> int:
                    if not (state / "pmg.db").exists():
                        return 0
                    db = sqlite3.connect(f"file:{state / 'pmg.db'}?mode=ro", uri=True, timeout=10)
                    try:
                        return int(
                            db.execute("SELECT COUNT(DISTINCT meter_id) FROM readings WHERE quality = 'ok'").fetchone()[0]
                        )
                    except sqlite3.OperationalError:  # the schema is being created
                        return 0
                    finally:
                        db.close()

                try:
                    wait_for(lambda: notify.seen("READY=1"), timeout=60, what="READY=1")
                    wait_for(lambda: read_meters() == 4, timeout=60, what="all four meters read")
                    # The first backup, a few seconds after the start, in the state directory.
                    wait_for(lambda: list((state / "backups").glob("pmg-*.db")), timeout=60, what="a backup")
                except AssertionError:
                    raise AssertionError(log.read_text()[-3000:]) from None
                daemon.send_signal(signal.SIGTERM)
                assert daemon.wait(int(unit["TimeoutStopSec"][0])) == 0, log.read_text()[-3000:]
        finally:
            notify.close()
        assert "Traceback" not in log.read_text()
        verify = subprocess.run(
            [_under(root, PMG), "ledger", "verify", "-c", str(config)],
            capture_output=True, text=True, timeout=60, cwd=state, env=env_used,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        for sim in (dlt, rtu, tcp):
            sim.send_signal(signal.SIGTERM)
            assert sim.wait(10) == 0


@pytest.mark.slow
@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verifies_the_unit_against_the_installed_binary(root: Path, tmp_path: Path) -> None:
    """The shipped unit, its ExecStart moved under ROOT (nothing else changed), names a real program."""
    text = UNIT.read_text()
    copy = tmp_path / "pmg.service"
    copy.write_text(text.replace(f"ExecStart={PMG} ", f"ExecStart={_under(root, PMG)} "))
    assert copy.read_text() != text
    proc = subprocess.run(
        [str(ANALYZE), "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "pmg.service" not in proc.stderr, proc.stderr
