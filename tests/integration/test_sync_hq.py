"""The head-office side: sequence tracking, the key and signing CLI, signatures across rotation."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from support.broker import Mosquitto
from support.waiting import wait_for

from gateway.cli.main import cli
from gateway.sync.signing import (
    SigningError,
    Verifier,
    canonical,
    generate_key,
    key_id_for,
    public_key_b64,
    sign_command,
)
from hq.consumer import HqConsumer, MessageStore, SeqTracker

PMG = str(Path(sys.executable).parent / "pmg")


def test_tracker_accepts_in_order_flags_duplicates_and_reports_gaps() -> None:
    t = SeqTracker()
    assert [t.accept("a", s) for s in (5, 6, 6, 9, 7, 5)] == [True, True, False, True, True, False]
    assert t.gaps("a") == [(8, 8)]
    assert t.duplicates["a"] == 2 and t.highest("a") == 9
    assert t.accept("a", 8) and t.gaps("a") == [] and t.highest("a") == 9
    t.start_at("b", 1)
    t.accept("b", 3)
    assert t.gaps("b") == [(1, 2)]


def test_message_store_deduplicates_across_consumers_sharing_it(tmp_path: Path) -> None:
    path = tmp_path / "hq.sqlite"
    seen: list[bool] = []
    one = HqConsumer("127.0.0.1", 1, store=MessageStore(path), on_received=lambda r: seen.append(r.duplicate))
    two = HqConsumer("127.0.0.1", 1, store=MessageStore(path), on_received=lambda r: seen.append(r.duplicate))
    one.handle("gw", "events", 1, {"seq": 1})
    two.handle("gw", "events", 1, {"seq": 1})  # the other consumer got the redelivery: still a duplicate
    two.handle("gw", "events", 2, {"seq": 2})
    assert seen == [False, True, False]
    assert one.store is not None and one.store.seqs() == {"gw": [1, 2]}


def test_canonical_form_is_sorted_compact_utf8_without_sig() -> None:
    cmd = {"b": "é", "a": 1, "sig": "x", "c": {"z": None, "y": [True]}}
    assert canonical(cmd) == '{"a":1,"b":"é","c":{"y":[true],"z":null}}'.encode()
    with pytest.raises(SigningError, match="fraction"):
        canonical({"amount": 1.5})


def test_rotation_old_and_new_keys_both_verify_until_removed() -> None:
    old, new = generate_key(), generate_key()
    ids = {key_id_for(k.public_key()): public_key_b64(k.public_key()) for k in (old, new)}
    verifier = Verifier(ids)
    for k in (old, new):
        verifier.verify(sign_command({"id": "1"}, k, key_id_for(k.public_key())))
    only_new = Verifier({key_id_for(new.public_key()): ids[key_id_for(new.public_key())]})
    with pytest.raises(SigningError, match="unknown key_id"):
        only_new.verify(sign_command({"id": "1"}, old, key_id_for(old.public_key())))
    with pytest.raises(SigningError, match="32"):
        Verifier({"short": "AAAA"})


def test_keys_generate_and_command_sign_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    key_file = tmp_path / "hq.pem"
    out = runner.invoke(cli, ["keys", "generate", "-o", str(key_file)])
    assert out.exit_code == 0, out.output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    lines = dict(line.split(" = ", 1) for line in out.output.splitlines()[:2])
    again = runner.invoke(cli, ["keys", "generate", "-o", str(key_file)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    cmd = {
        "id": "c1",
        "type": "ping",
        "gateway_id": "gw",
        "issued_at": "2026-01-01T00:00:00Z",
        "expires_at": "2026-01-01T01:00:00Z",
    }
    signed = runner.invoke(cli, ["command", "sign", "-k", str(key_file)], input=json.dumps(cmd))
    assert signed.exit_code == 0, signed.output
    body = json.loads(signed.output)
    assert body["key_id"] == lines["key_id"]
    Verifier({lines["key_id"]: lines["public_key"]}).verify(body)
    bad = runner.invoke(cli, ["command", "sign", "-k", str(key_file)], input="{not json")
    assert bad.exit_code == 2 and "not JSON" in bad.output


def test_hq_tail_cli_keeps_its_session_deduplicates_and_reports_gaps(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """`pmg hq tail` as a process: messages queued for its session while it was away arrive."""
    args = [
        PMG,
        "hq",
        "tail",
        "--host",
        "127.0.0.1",
        "--port",
        str(mosquitto.port),
        "--plaintext",
        "--client-id",
        "hq-cli",
        "--store",
        str(tmp_path / "hq.sqlite"),
        "--idle-exit",
        "1",
    ]
    first = subprocess.run(args, capture_output=True, timeout=30)  # creates the persistent session
    assert first.returncode == 0, first.stderr
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pub", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        for seq in (1, 2, 2, 3, 5):
            body = {"schema": "pmg.event/1", "gateway_id": "g1", "seq": seq}
            client.publish("pmg/g1/events", json.dumps(body), qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    second = subprocess.run(args, capture_output=True, timeout=30)
    assert second.returncode == 1, "a gap (seq 4) must fail the run"
    lines = [json.loads(line) for line in second.stdout.splitlines()]
    assert [(r["seq"], r["duplicate"]) for r in lines] == [
        (1, False),
        (2, False),
        (2, True),
        (3, False),
        (5, False),
    ]
    summary = json.loads(second.stderr.decode().strip().splitlines()[-1])["summary"]["g1"]
    assert summary == {"highest_seq": 5, "gaps": [[4, 4]], "duplicates": 1}


def test_two_consumers_in_a_shared_group_split_the_stream_and_together_have_it_all(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    store_path = tmp_path / "hq.sqlite"
    got: dict[str, list[int]] = {"a": [], "b": []}
    consumers = [
        HqConsumer(
            "127.0.0.1",
            mosquitto.port,
            tls=None,
            shared_group="hq",
            client_id=f"hq-{name}",
            store=MessageStore(store_path),
            on_received=lambda r, name=name: got[name].append(r.seq or 0),
        )
        for name in ("a", "b")
    ]
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="pub-shared", protocol=paho.MQTTv5)
    try:
        for c in consumers:
            c.start()
            assert c.subscribed.wait(10)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        for seq in range(1, 101):
            body = {"schema": "pmg.event/1", "gateway_id": "g1", "seq": seq}
            client.publish("pmg/g1/events", json.dumps(body), qos=1).wait_for_publish(5)
        wait_for(lambda: len(got["a"]) + len(got["b"]) >= 100, what="all 100 messages")
        assert got["a"] and got["b"], "a shared subscription should spread the load"
        assert sorted(got["a"] + got["b"]) == list(range(1, 101))
        assert consumers[0].store is not None and consumers[0].store.seqs()["g1"] == list(range(1, 101))
    finally:
        client.disconnect()
        client.loop_stop()
        for c in consumers:
            c.stop()
            if c.store is not None:
                c.store.close()
