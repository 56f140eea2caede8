"""``pmg hq topup`` end to end: the CLI as a process, a running gateway in-process, a private Mosquitto.

Exit statuses: 0 applied (and a repeat: the same ack, nothing applied twice), 1 rejected, 2 bad input,
4 no answer within the deadline — after which the same command run again with the same id is safe.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.broker import Mosquitto
from support.signed_commands import HQ_KEY, OTHER_KEY, running_gateway, settled

from gateway.cli.main import cli
from gateway.sync.signing import write_private_key

PMG = str(Path(sys.executable).parent / "pmg")


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    good, other = tmp_path / "hq.pem", tmp_path / "other.pem"
    write_private_key(good, HQ_KEY)
    write_private_key(other, OTHER_KEY)
    return good, other


def _args(port: int, key: Path, journal: Path, *extra: str) -> list[str]:
    return [
        "hq",
        "topup",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--plaintext",
        "--gateway",
        "gw-test",
        "--signing-key",
        str(key),
        "--journal",
        str(journal),
        *extra,
    ]


async def _pmg(args: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        PMG, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=os.environ.copy()
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--account", "acc1", "--amount", "-5.00"], "must be positive"),
        (["--account", "acc1", "--amount", "0"], "must be positive"),
        (["--account", "acc1", "--amount", "50.001"], "more than 2 decimal places"),
        (["--account", "acc1", "--amount", "1e3"], "not a decimal amount"),
        (["--account", "acc1", "--amount", "50.5", "--minor-digits", "0"], "more than 0 decimal places"),
        (["--account", "acc1", "--amount", "5", "--id", ""], "is not a command id"),
        (["--account", "", "--amount", "5"], "--account '' is not an id"),
        (["--account", "acc/#", "--amount", "5"], "is not an id"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_sends_nothing(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    key, _ = _keys(tmp_path)
    journal = tmp_path / "journal.sqlite"
    run = CliRunner().invoke(cli, _args(1, key, journal, *extra))  # port 1: nothing may be tried
    assert run.exit_code == 2, run.output
    assert message in run.output and len(run.output.strip().splitlines()) == 1, run.output
    assert not journal.exists()


def test_topup_from_no_answer_to_power_and_a_safe_repeat(tmp_path: Path, mosquitto: Mosquitto) -> None:
    key, other_key = _keys(tmp_path)
    journal = tmp_path / "journal.sqlite"

    def args(*extra: str) -> list[str]:
        return _args(mosquitto.port, key, journal, *extra)

    async def main() -> None:
        # No gateway yet: nothing answers within the deadline.
        code, out, err = await _pmg(
            args("--account", "acc1", "--amount", "50", "--id", "t-1", "--deadline", "2")
        )
        assert code == 4, (code, out, err)
        assert "no ack from gw-test within 2 s; safe to repeat with --id t-1" in err
        assert len(err.strip().splitlines()) == 1
        async with running_gateway(tmp_path, mosquitto.port) as run:
            await settled(run)
            store = run.store
            assert store.scalar("SELECT relay FROM meters WHERE id = 'm1'") == "open"  # empty account: cut
            # The repeat: the journalled command again, applied now; supply restored, power confirmed.
            code, out, err = await _pmg(
                args("--account", "acc1", "--amount", "50", "--id", "t-1", "--wait-power", "--json")
            )
            assert code == 0, (code, out, err)
            first: dict[str, Any] = json.loads(out)
            ack = first["ack"]
            assert (ack["status"], ack["command_id"], ack.get("replay")) == ("applied", "t-1", False), ack
            assert ack["result"]["amount"] == "50.00" and ack["result"]["balance"] == "50.00"
            assert ack["result"]["supply"] == {
                "on": True,
                "reason": "restored",
                "shortfall": "0.00",
                "meter_id": "m1",
            }
            power = first["power"]
            assert power["kind"] == "relay_confirmed" and power["meter_id"] == "m1", power
            assert power["detail"].get("command_id") == "t-1" or power["detail"]["payment_id"] == "t-1"
            assert store.scalar("SELECT relay FROM meters WHERE id = 'm1'") == "closed"

            # Again: the same ack as a duplicate, nothing applied twice.
            code, out, err = await _pmg(
                args("--account", "acc1", "--amount", "50.00", "--id", "t-1", "--wait-power")
            )
            assert code == 0, (code, out, err)
            assert "top-up t-1: applied — 50.00 to acc1, balance 50.00 (a repeat" in out, out
            assert "supply: on — restored (meter m1)" in out
            assert store.scalar("SELECT balance_minor FROM accounts WHERE id = 'acc1'") == 5000
            assert store.scalar("SELECT COUNT(*) FROM payments WHERE payment_id = 't-1'") == 1

            # The same id for another amount is refused before anything is sent.
            code, out, err = await _pmg(args("--account", "acc1", "--amount", "60.00", "--id", "t-1"))
            assert code == 2 and "--id t-1 was used for a top-up of 50.00 to acc1 on gw-test" in err, err

            # Refused by the gateway: an unknown account; a key it does not know.
            code, out, err = await _pmg(args("--account", "nobody", "--amount", "5", "--id", "t-2"))
            assert code == 1 and "top-up t-2: rejected (invalid:" in out, (code, out, err)
            unknown = _args(
                mosquitto.port, other_key, journal, "--account", "acc2", "--amount", "5", "--id", "t-3"
            )
            code, out, err = await _pmg([*unknown, "--json"])
            assert code == 1, (code, out, err)
            assert json.loads(out)["ack"]["code"] == "unauthenticated"
            code, out, err = await _pmg(args("--account", "acc2", "--amount", "5", "--id", "t-3"))
            assert code == 2 and "--id t-3 was signed with key" in err, (code, out, err)
            assert store.scalar("SELECT COUNT(*) FROM payments") == 1

    asyncio.run(main())
