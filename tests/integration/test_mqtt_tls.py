"""TLS to the broker: verified by default, refused with the wrong CA, plaintext only when asked for.

The CA and the server certificate (for 127.0.0.1 and localhost) are made by the test with
``cryptography``; the broker is a private Mosquitto with a TLS-only listener.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from support.broker import Mosquitto, mosquitto_binary
from support.pki import make_ca, make_server_cert
from support.waiting import async_wait_for

from drivers.tomlsource import TomlError
from gateway.config import MqttConfig, load_config
from gateway.core.timeutil import system_clock
from gateway.store.db import open_store
from gateway.sync.mqtt import MqttLink

# Run as root, Mosquitto drops to user "mosquitto", which cannot read the test's private tmp dir.


@pytest.fixture
def tls_broker(tmp_path: Path) -> tuple[Mosquitto, Path, Path]:
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed")
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_path, ca, ca_key = make_ca(pki, "test-ca")
    wrong_ca_path, _, _ = make_ca(pki, "other-ca")
    cert, key = make_server_cert(pki, ca, ca_key)
    broker = Mosquitto(
        tmp_path / "broker",
        listener_extra=f"cafile {ca_path}\ncertfile {cert}\nkeyfile {key}\n",
        extra="allow_anonymous true\n",
    )
    broker.start()
    yield broker, ca_path, wrong_ca_path
    broker.stop()


async def _connect(cfg: MqttConfig, tmp_path: Path, expect_connected: bool, error: str = "") -> MqttLink:
    store = open_store(tmp_path / f"gw-{expect_connected}.db")
    link = MqttLink(cfg, "gw-tls", store, system_clock)
    task = asyncio.create_task(link.run())
    try:
        if expect_connected:
            await async_wait_for(lambda: link.stats.connected, what="TLS connection")
        else:
            await async_wait_for(lambda: error in (link.stats.last_error or "\n"), what=f"error {error!r}")
            assert not link.stats.connected
    finally:
        await link.stop(0.5)
        await asyncio.gather(task, return_exceptions=True)
        store.close()
    return link


def test_tls_with_the_right_ca_connects(tls_broker: tuple[Mosquitto, Path, Path], tmp_path: Path) -> None:
    broker, ca, _ = tls_broker
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, ca_file=str(ca))
    link = asyncio.run(_connect(cfg, tmp_path, True))
    assert link.stats.connects == 1


def test_tls_with_a_wrong_ca_refuses_and_says_why(
    tls_broker: tuple[Mosquitto, Path, Path], tmp_path: Path
) -> None:
    broker, _, wrong = tls_broker
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, ca_file=str(wrong))
    link = asyncio.run(_connect(cfg, tmp_path, False, "certificate verify failed"))
    assert link.stats.connects == 0 and link.stats.connect_failures >= 1
    assert "certificate verify failed" in (link.stats.last_error or ""), link.stats.last_error


def test_plaintext_to_a_tls_listener_does_not_connect(
    tls_broker: tuple[Mosquitto, Path, Path], tmp_path: Path
) -> None:
    broker, _, _ = tls_broker
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, tls=False, allow_plaintext=True)
    link = asyncio.run(_connect(cfg, tmp_path, False))
    assert link.stats.connects == 0


def test_plaintext_must_be_explicit_in_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text('gateway_id = "g"\n[mqtt]\nhost = "h"\ntls = false\n')
    with pytest.raises(TomlError, match="allow_plaintext"):
        load_config(cfg)
    cfg.write_text('gateway_id = "g"\n[mqtt]\nhost = "h"\n')
    mqtt = load_config(cfg).mqtt
    assert mqtt is not None and mqtt.tls and mqtt.port == 8883


def test_username_and_password_are_used_and_a_wrong_password_is_reported(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "gw-0001", "s3cret"], check=True, timeout=10)
    broker = Mosquitto(
        tmp_path / "broker", extra=f"allow_anonymous false\npassword_file {passwd}\n"
    ).start()
    try:
        good = MqttConfig(
            host="127.0.0.1",
            port=broker.port,
            tls=False,
            allow_plaintext=True,
            username="gw-0001",
            password="s3cret",
        )
        assert asyncio.run(_connect(good, tmp_path, True)).stats.connects == 1
        bad = good.model_copy(update={"password": "guess"})
        link = asyncio.run(_connect(bad, tmp_path / "bad", False, "broker refused connection"))
        assert link.stats.connects == 0
        assert link.stats.last_error == "broker refused connection: Not authorized"
    finally:
        broker.stop()
