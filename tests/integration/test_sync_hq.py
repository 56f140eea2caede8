"""The head-office side: sequence tracking, the key and signing CLI, signatures across rotation."""

from __future__ import annotations

import json
import sqlite3
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
    assert one.store is not None and one.store.seqs() == {("gw", ""): [1, 2]}


def test_tracker_keeps_each_epoch_apart_and_queries_default_to_the_current_one() -> None:
    """A reinstalled gateway (new epoch) starts again at seq 1: not a duplicate of the old seq 1."""
    t = SeqTracker()
    t.start_at("gw", 1)  # without an epoch: every epoch of gw not seen yet starts at 1
    assert [t.accept("gw", s, "e1") for s in (1, 2, 3)] == [True, True, True]
    assert [t.accept("gw", s, "e2") for s in (1, 2, 4)] == [True, True, True]
    assert t.accept("gw", 2, "e1") is False and t.duplicates_by_key == {("gw", "e1"): 1}
    assert t.current_epoch("gw") == "e2" and t.highest("gw") == 4 and t.gaps("gw") == [(3, 3)]
    assert t.highest("gw", "e1") == 3 and t.gaps("gw", "e1") == []
    assert t.streams() == [("gw", "e1"), ("gw", "e2")] and t.gateways() == ["gw"]


def test_snapshots_fill_their_place_but_never_open_a_gap_or_start_the_count() -> None:
    t = SeqTracker()
    assert t.note("gw", 40)  # a retained state snapshot from long ago
    assert t.note("gw", 40) is False  # delivered again on the next subscription: a duplicate
    assert t.gaps("gw") == [] and t.highest("gw") == 0
    assert [t.accept("gw", s) for s in (100, 101)] == [True, True]  # the count starts here, not at 41
    assert t.gaps("gw") == [] and t.highest("gw") == 101
    assert t.note("gw", 102)  # a live snapshot in the stream
    assert t.note("gw", 105)  # another, beyond the highest counted seq: no gap opens for 103-104
    assert t.gaps("gw") == [] and t.highest("gw") == 101
    assert t.accept("gw", 106) and t.gaps("gw") == [(103, 104)]
    assert t.accept("gw", 103) and t.accept("gw", 104) and t.gaps("gw") == []
    t.skip("gw", [[107, 108]])  # coalesced snapshots: accounted for, not counted
    assert t.accept("gw", 109) and t.gaps("gw") == [] and t.highest("gw") == 109


def test_consumer_counts_neither_snapshots_nor_retained_deliveries(tmp_path: Path) -> None:
    hq = HqConsumer("127.0.0.1", 1, store=MessageStore(tmp_path / "hq.sqlite"))
    old_state = {"schema": "pmg.state/1", "seq": 7, "epoch": "e" * 32, "snapshot": True}
    assert not hq.handle("gw", "meters/m1/state", 7, old_state, retained=True).counted
    legacy_state = {"schema": "pmg.state/1", "seq": 9}  # no snapshot mark: the retain flag says it
    assert not hq.handle("gw", "meters/m2/state", 9, legacy_state, retained=True).counted
    usage = hq.handle("gw", "meters/m1/usage", 500, {"seq": 500, "epoch": "e" * 32})
    assert usage.counted and usage.epoch == "e" * 32 and not usage.duplicate
    assert hq.tracker.gaps("gw") == [] and hq.tracker.highest("gw") == 500
    assert hq.store is not None
    assert hq.store.seqs() == {("gw", ""): [9], ("gw", "e" * 32): [7, 500]}
    # Restarted from its store, it knows the same: still no gap, and 500 is a duplicate.
    again = HqConsumer("127.0.0.1", 1, store=MessageStore(tmp_path / "hq.sqlite"))
    assert again.store is not None
    again.store.load_into(again.tracker)
    assert again.tracker.gaps("gw") == [] and again.tracker.highest("gw") == 500
    assert again.handle("gw", "meters/m1/usage", 500, {"seq": 500, "epoch": "e" * 32}).duplicate


def test_a_store_from_before_epochs_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE messages (gateway_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL, "
        "payload TEXT NOT NULL, received_at TEXT NOT NULL DEFAULT 'x', PRIMARY KEY (gateway_id, seq))"
    )
    conn.executemany(
        "INSERT INTO messages(gateway_id, seq, topic, payload) VALUES ('gw', ?, 'events', '{}')", [(1,), (2,)]
    )
    conn.commit()
    conn.close()
    store = MessageStore(path)
    try:
        assert store.seqs() == {("gw", ""): [1, 2]}
        assert store.add("gw", "events", 2, "{}") is False and store.add("gw", "events", 3, "{}")
        assert store.add("gw", "events", 1, "{}", epoch="e2")  # a new epoch's seq 1 is new
    finally:
        store.close()


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
    summary = json.loads(second.stderr.decode().strip().splitlines()[-1])["summary"]
    assert summary == [{"gateway_id": "g1", "epoch": "", "highest_seq": 5, "gaps": [[4, 4]], "duplicates": 1}]


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
        assert consumers[0].store is not None
        assert consumers[0].store.seqs()[("g1", "")] == list(range(1, 101))
    finally:
        client.disconnect()
        client.loop_stop()
        for c in consumers:
            c.stop()
            if c.store is not None:
                c.store.close()


def test_a_first_tail_run_reports_no_false_gap_from_retained_snapshots(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Retained `state` snapshots carry old seqs; a new consumer gets them first, then the live stream."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-retained", protocol=paho.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()

    def publish(topic: str, body: dict[str, object], retain: bool = False) -> None:
        client.publish(f"pmg/g1/{topic}", json.dumps(body), qos=1, retain=retain).wait_for_publish(5)

    args = [PMG, "hq", "tail", "--host", "127.0.0.1", "--port", str(mosquitto.port), "--plaintext"]
    args += ["--client-id", "hq-first", "--count", "4", "--connect-deadline", "5"]  # 2 retained, 2 live
    try:
        publish("meters/m1/state", {"schema": "pmg.state/1", "seq": 3, "snapshot": True}, retain=True)
        publish("meters/m2/state", {"schema": "pmg.state/1", "seq": 11}, retain=True)  # before the mark
        tail = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert tail.stdout is not None
            first = json.loads(tail.stdout.readline())  # the retained ones come at subscription
            assert first["counted"] is False
            for seq in (40, 41):
                publish("events", {"schema": "pmg.event/1", "seq": seq})
            _, err = tail.communicate(timeout=30)
        finally:
            if tail.poll() is None:
                tail.kill()
                tail.wait()
    finally:
        client.disconnect()
        client.loop_stop()
    assert tail.returncode == 0, err
    summary = json.loads(err.strip().splitlines()[-1])["summary"]
    assert summary == [{"gateway_id": "g1", "epoch": "", "highest_seq": 41, "gaps": [], "duplicates": 0}]
