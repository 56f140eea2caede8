"""``pmg notice deliver``: a technician records a notice handed over in person.

Under ``cn`` a notice counts as served only once delivered (docs/enforcement.md, "Notice delivery").
The policy issues it; this command records the delivery with the same checks as the head office's
signed ``notice`` command, and marks the account so that the running daemon re-decides it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from support.gateway_harness import base_config, write_config

from gateway.cli.main import cli
from gateway.config import load_config
from gateway.core.timeutil import parse_iso
from gateway.ledger.accounts import seed_from_config
from gateway.policy.notices import notice_id
from gateway.runtime.components import build_components
from gateway.store.db import open_store

ISSUED = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Shanghai
METERS = (
    '\n[[buses]]\nid = "b1"\nprotocol = "dlt645"\nurl = "/dev/null"\n'
    '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000001"\naccount = "acc1"\ntariff = "flat-cn"\n'
)


def _site(tmp_path: Path) -> Path:
    """A cn gateway whose account acc1 has no credit and has just been issued a notice by the policy."""
    cfg_path = write_config(
        tmp_path / "gw.toml",
        base_config(tmp_path / "pmg.db", timezone="Asia/Shanghai", policy='[policy]\npreset = "cn"\n') + METERS,
    )
    cfg = load_config(cfg_path)
    store = open_store(tmp_path / "pmg.db")
    seed_from_config(store, cfg, ISSUED - timedelta(days=1))
    parts = build_components(cfg, cfg_path, store)
    with store.tx() as conn:
        conn.execute("UPDATE meters SET relay = 'closed' WHERE id = 'm1'")
        parts.policy.evaluate_account(conn, "acc1", ISSUED)
    assert store.scalar("SELECT notice_served_at FROM accounts WHERE id = 'acc1'") is not None
    assert store.scalar("SELECT notice_delivered_at FROM accounts WHERE id = 'acc1'") is None
    store.close()
    return cfg_path


def _pmg(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def _row(db: Path) -> tuple[object, ...]:
    store = open_store(db)
    try:
        row = store.conn.execute(
            "SELECT notice_served_at, notice_delivered_at, notice_channel FROM accounts WHERE id = 'acc1'"
        ).fetchone()
        events = store.scalar("SELECT COUNT(*) FROM events WHERE kind = 'notice_delivered'")
        marked = store.scalar("SELECT COUNT(*) FROM policy_inbox WHERE account_id = 'acc1'")
        return (*tuple(row), events, marked)
    finally:
        store.close()


def test_a_hand_delivery_starts_the_notice_period_and_marks_the_account(tmp_path: Path) -> None:
    cfg_path = _site(tmp_path)
    db = tmp_path / "pmg.db"
    code, out, err = _pmg(
        "notice", "deliver", "acc1", "--at", "2026-03-02T15:30", "--actor", "wang", "-c", str(cfg_path), "--json"
    )
    assert code == 0, err
    served, delivered, channel, events, marked = _row(db)
    assert parse_iso(str(delivered)) == datetime(2026, 3, 2, 7, 30, tzinfo=UTC)  # 15:30 local
    assert channel == "in_person" and events == 1 and marked == 1
    assert f'"notice_id": "{notice_id("acc1", parse_iso(str(served)))}"' in out


def test_a_delivery_that_does_not_fit_is_one_line_and_changes_nothing(tmp_path: Path) -> None:
    cfg_path = _site(tmp_path)
    db = tmp_path / "pmg.db"
    before = _row(db)
    bad = [
        ("notice", "deliver", "nope", "--actor", "wang"),  # unknown account
        ("notice", "deliver", "acc1", "--actor", "wang", "--at", "2026-03-01T09:00"),  # before it was issued
        ("notice", "deliver", "acc1", "--actor", "wang", "--at", "2099-01-01T00:00"),  # in the future
        ("notice", "deliver", "acc1", "--actor", "wang", "--notice", "acc1:20200101T000000Z"),  # not this notice
        ("notice", "deliver", "acc1", "--actor", "wang", "--channel", "pigeon"),
        ("notice", "deliver", "acc1", "--actor", "  "),
        ("notice", "deliver", "acc1", "--actor", "wang", "--at", "not-a-time"),
    ]
    for args in bad:
        code, out, err = _pmg(*args, "-c", str(cfg_path))
        assert code == 2, (args, code, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (args, err)
        assert _row(db) == before, args
    # Delivered once; a second confirmation is refused and changes nothing.
    assert _pmg("notice", "deliver", "acc1", "--actor", "wang", "-c", str(cfg_path))[0] == 0
    after = _row(db)
    code, _, err = _pmg("notice", "deliver", "acc1", "--actor", "li", "-c", str(cfg_path))
    assert code == 2 and "already delivered" in err
    assert _row(db) == after
