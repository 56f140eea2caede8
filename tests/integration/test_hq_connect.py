"""``pmg hq`` cannot connect or log in: one line, exit 1 — for each way it goes wrong, against a real broker.

Before, ``pmg hq tail`` pointed at a wrong port or with TLS at a plaintext listener waited for
``--idle-exit`` and exited 0 with ``{"summary": {}}``: nothing received, success reported.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.broker import Mosquitto, free_port, mosquitto_binary
from support.pki import make_ca, make_server_cert

from hq.connect import Broker, ConnectFailed, TlsOptions, close, connect

PMG = str(Path(sys.executable).parent / "pmg")


@dataclass
class Brokers:
    plain: Mosquitto  # anonymous, no TLS
    tls: Mosquitto  # TLS only, anonymous
    auth: Mosquitto  # plaintext, password file with hq / s3cret
    ca: Path
    wrong_ca: Path


@pytest.fixture(scope="module")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Brokers]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed")
    tmp = tmp_path_factory.mktemp("hq-connect")
    ca_path, ca, ca_key = make_ca(tmp, "test-ca")
    wrong_ca, _, _ = make_ca(tmp, "other-ca")
    cert, key = make_server_cert(tmp, ca, ca_key)
    passwd = tmp / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "hq", "s3cret"], check=True, timeout=10)
    started: list[Mosquitto] = []
    try:
        for broker in (
            Mosquitto(tmp / "plain"),
            Mosquitto(tmp / "tls", listener_extra=f"cafile {ca_path}\ncertfile {cert}\nkeyfile {key}\n"),
            Mosquitto(tmp / "auth", extra=f"allow_anonymous false\npassword_file {passwd}\n"),
        ):
            started.append(broker.start())
        yield Brokers(*started, ca=ca_path, wrong_ca=wrong_ca)
    finally:
        for broker in started:
            broker.stop()


def _cases(b: Brokers) -> dict[str, tuple[Broker, str]]:
    """name -> (where and how to connect, what the one line must say)."""
    return {
        "tls to a plaintext port": (Broker("127.0.0.1", b.plain.port), "TLS handshake failed"),
        "plaintext to a TLS port": (
            Broker("127.0.0.1", b.tls.port, tls=None),
            "closed the connection before answering",
        ),
        "a refused port": (Broker("127.0.0.1", free_port(), tls=None), "connection refused"),
        "an unknown host": (Broker("no-such-host.invalid", 1883, tls=None), "unknown host"),
        "bad credentials": (
            Broker("127.0.0.1", b.auth.port, tls=None, username="hq", password="guess"),
            "refused the connection: Not authorized",
        ),
        "no credentials where they are required": (
            Broker("127.0.0.1", b.auth.port, tls=None),
            "refused the connection: Not authorized",
        ),
        "a certificate from another CA": (
            Broker("127.0.0.1", b.tls.port, tls=TlsOptions(ca_file=str(b.wrong_ca))),
            "certificate verification failed",
        ),
        "bad credentials over 3.1.1": (
            Broker("127.0.0.1", b.auth.port, tls=None, username="hq", password="guess", protocol="3.1.1"),
            "refused the connection",
        ),
    }


CASES = [
    "tls to a plaintext port",
    "plaintext to a TLS port",
    "a refused port",
    "an unknown host",
    "bad credentials",
    "no credentials where they are required",
    "a certificate from another CA",
    "bad credentials over 3.1.1",
]


@pytest.mark.parametrize("case", CASES)
def test_connect_raises_one_line_within_its_deadline(brokers: Brokers, case: str) -> None:
    broker, expected = _cases(brokers)[case]
    started = time.monotonic()
    with pytest.raises(ConnectFailed) as failed:
        close(connect(broker, deadline_s=5))
    assert time.monotonic() - started < 5.5
    message = str(failed.value)
    assert expected in message and "\n" not in message, message
    assert message.startswith(f"cannot connect to {broker.host}:{broker.port}: "), message


def test_connect_returns_a_connected_client_when_all_is_right(brokers: Brokers) -> None:
    good = [
        Broker("127.0.0.1", brokers.plain.port, tls=None),
        Broker("127.0.0.1", brokers.plain.port, tls=None, protocol="3.1.1"),
        Broker("127.0.0.1", brokers.tls.port, tls=TlsOptions(ca_file=str(brokers.ca))),
        Broker("127.0.0.1", brokers.auth.port, tls=None, username="hq", password="s3cret"),
    ]
    for broker in good:
        client = connect(broker, deadline_s=5)
        try:
            assert client.is_connected()
        finally:
            close(client)


def _tail_args(broker: Broker) -> list[str]:
    args = [PMG, "hq", "tail", "--host", broker.host, "--port", str(broker.port), "--idle-exit", "1"]
    args += ["--protocol", broker.protocol, "--connect-deadline", "5"]
    if broker.tls is None:
        args.append("--plaintext")
    elif broker.tls.ca_file:
        args += ["--ca-file", broker.tls.ca_file]
    if broker.username:
        args += ["--username", broker.username]
    if broker.password:
        args += ["--password", broker.password]
    return args


@pytest.mark.parametrize("case", CASES)
def test_hq_tail_fails_with_one_line_and_exit_1(brokers: Brokers, case: str) -> None:
    broker, expected = _cases(brokers)[case]
    run = subprocess.run(_tail_args(broker), capture_output=True, text=True, timeout=30)
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], run.stderr
    assert "summary" not in run.stderr and "Traceback" not in run.stderr


def test_hq_tail_with_the_right_credentials_runs_and_exits_0(brokers: Brokers) -> None:
    broker = Broker("127.0.0.1", brokers.auth.port, tls=None, username="hq", password="s3cret")
    run = subprocess.run(_tail_args(broker), capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert '"summary": []' in run.stderr
