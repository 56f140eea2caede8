"""A corpus of bad input to every ``pmg`` command and configuration key: one line, exit 2, nothing changed.

README "The `pmg` command": exit status 2 is bad input (1 an operation that failed, 3 a running
instance), errors are one line and never a traceback.  The cases are generated from lists of bad
values per argument, option and configuration key (so a new option gets the same treatment by adding
one row), run in-process with click's ``CliRunner`` against a real seeded SQLite ledger whose whole
content is hashed before and after each case.  A handful run as real subprocesses, the way an
operator meets them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.gateway_harness import base_config, write_config

from gateway.cli.main import cli
from gateway.config import load_config
from gateway.ledger.accounts import seed_from_config
from gateway.store.db import open_store
from gateway.store.pins import check_money_pins
from gateway.sync.signing import generate_key, write_private_key

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC)

# -- bad values, per kind of argument -----------------------------------------------------------------
BAD_IDS = ["no-such", "", " ", "a\nb", "\x1b[31mred", "X" * 5000, "'; DROP TABLE accounts;--", "\u202e\u2028"]
BAD_MONEY = [
    "",
    "abc",
    "1e5",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1.2.3",
    "1,00",
    "0x10",
    "9" * 16,
    "1.001",
    "12.3456789",
    " ",
    "+5",
    "٣",
    "1_000",
    "0.5e1",
    "99999999999999",
    "--",
]
BAD_NEGATIVE_MONEY = ["-5.00", "-0.01"]  # not a payment or a debt
BAD_FLOATS = ["nan", "NaN", "inf", "-inf", "+inf", "1e309", "-1", "abc", "", "0x1p3"]
BAD_INTS = ["-1", "abc", "1.5", "nan", "", "9223372036854775808", "1e3", "99999999999999999999999"]
BAD_DATES = [
    "0001-01-01",
    "9999-12-31",
    "2024-02-30",
    "2024-13-01",
    "yesterday",
    "",
    "1969-12-31",
    "2024-1-1x",
]
BAD_INSTANTS = [
    "9999-12-31T23:59:59",
    "0001-01-01",
    "0001-01-01T00:00:00+14:00",
    "2024-13-01",
    "nope",
    "",
    "2024-01-01T25:00",
    "2024-01-01T00:00+25:00",
    "9999-12-31T23:59:59-12:00",
]
BAD_PORTS = ["0", "-1", "65536", "99999", "x", "nan", "1e3"]


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    stdin: str | bytes = ""


@dataclass(frozen=True)
class Spec:
    """A command line template: ``{slot}`` placeholders, their valid values and their bad values."""

    command: str
    template: tuple[str, ...]
    valid: dict[str, str]
    bad: dict[str, list[str]]
    needs_config: bool = True


def _ids(**slots: list[str]) -> dict[str, list[str]]:
    return slots


SPECS: list[Spec] = [
    Spec(
        "payment add",
        ("payment", "add", "{account}", "{amount}", "--actor", "{actor}", "--id", "{id}"),
        {"account": "A1", "amount": "5.00", "actor": "cashier", "id": "p-corpus"},
        _ids(
            account=BAD_IDS,
            amount=BAD_MONEY + BAD_NEGATIVE_MONEY + ["0", "0.00"],
            actor=[""],
            id=["", "x" * 300],
        ),
    ),
    Spec(
        "ledger debt",
        ("ledger", "debt", "{account}", "{amount}", "--share", "{share}", "--reason", "r", "--actor", "a"),
        {"account": "A1", "amount": "5.00", "share": "0.25"},
        _ids(
            account=BAD_IDS,
            amount=BAD_MONEY + BAD_NEGATIVE_MONEY,
            share=["nan", "inf", "-0.1", "1.5", "abc", "", "1e999", "0.25.1"],
        ),
    ),
    Spec(
        "ledger adjust",
        ("ledger", "adjust", "{account}", "{amount}", "--reason", "{reason}", "--actor", "a"),
        {"account": "A1", "amount": "-3.50", "reason": "typo"},
        _ids(account=BAD_IDS, amount=BAD_MONEY, reason=["", " "]),
    ),
    Spec(
        "meter replace",
        (
            "meter",
            "replace",
            "{meter}",
            "--final-register",
            "{wh}",
            "--new-address",
            "{addr}",
            "--reason",
            "r",
            "--actor",
            "a",
        ),
        {"meter": "m1", "wh": "2000", "addr": "000000000009"},
        _ids(meter=BAD_IDS, wh=[*BAD_INTS, "1000000000", "2000000000"], addr=["", " "]),
    ),
    Spec(
        "meter accept-reading",
        ("meter", "accept-reading", "{meter}", "{mode}", "--reason", "{reason}", "--actor", "a"),
        {"meter": "m2", "mode": "--charge", "reason": "found"},
        _ids(meter=BAD_IDS, mode=["--both", "charge", ""], reason=[""]),
    ),
    Spec(
        "relay",
        ("relay", "{meter}", "{op}", "--hours", "{hours}", "--reason", "{reason}", "--actor", "{actor}"),
        {"meter": "m1", "op": "open", "hours": "1", "reason": "test", "actor": "tech"},
        _ids(
            meter=BAD_IDS,
            op=["trip", "", "OPEN"],
            hours=[*BAD_FLOATS, "0", "0.01", "99999"],
            reason=["", " "],
            actor=["", " "],
        ),
    ),
    Spec(
        "explain",
        ("explain", "{account}", "--at", "{at}"),
        {"account": "A1", "at": "2026-06-01T12:00"},
        _ids(account=BAD_IDS, at=BAD_INSTANTS),
    ),
    Spec(
        "audit export",
        ("audit", "export", "--from", "{frm}", "--to", "{to}", "--format", "{fmt}"),
        {"frm": "2026-01-01", "to": "2026-02-01", "fmt": "csv"},
        _ids(frm=BAD_INSTANTS, to=[*BAD_INSTANTS, "2025-01-01"], fmt=["xml", "", "CSV"]),
    ),
    Spec(
        "report",
        (
            "report",
            "--period",
            "{period}",
            "--from",
            "{frm}",
            "--to",
            "{to}",
            "--account",
            "{account}",
            "--format",
            "{fmt}",
        ),
        {"period": "day", "frm": "2026-01-01", "to": "2026-01-31", "account": "A1", "fmt": "csv"},
        _ids(
            period=["year", "", "DAY"],
            frm=[*BAD_DATES, "2026-02-01", "1980-01-01"],
            to=BAD_DATES,
            account=BAD_IDS,
            fmt=["xml", ""],
        ),
    ),
    Spec(
        "report collection",
        ("report", "collection", "--from", "{frm}", "--to", "{to}"),
        {"frm": "2026-01-01", "to": "2026-01-31"},
        _ids(frm=BAD_DATES, to=BAD_DATES),
    ),
    Spec("balance", ("balance", "{account}"), {"account": "A1"}, _ids(account=BAD_IDS)),
    Spec(
        "meter show",
        ("meter", "show", "{meter}", "--readings", "{n}"),
        {"meter": "m1", "n": "5"},
        _ids(meter=BAD_IDS, n=[*BAD_INTS, "1001"]),
    ),
    Spec(
        "events",
        ("events", "--limit", "{n}", "--meter", "{meter}"),
        {"n": "5", "meter": "m1"},
        _ids(n=[*BAD_INTS, "0", "100001"], meter=BAD_IDS[1:]),
    ),
    Spec(
        "read",
        (
            "read",
            "--protocol",
            "{proto}",
            "--port",
            "/dev/null-x",
            "--address",
            "{addr}",
            "--timeout",
            "{timeout}",
            "--baud",
            "{baud}",
        ),
        {"proto": "dlt645", "addr": "000000000001", "timeout": "1", "baud": "2400"},
        _ids(
            proto=["", "iec62056"], addr=[""], timeout=[*BAD_FLOATS, "0", "31"], baud=[*BAD_INTS, "0", "1e9"]
        ),
        needs_config=False,
    ),
    Spec(
        "read modbus",
        (
            "read",
            "--protocol",
            "modbus",
            "--port",
            "/dev/null-x",
            "--unit",
            "{unit}",
            "--profile",
            "{profile}",
        ),
        {"unit": "1", "profile": "sdm120"},
        _ids(unit=[*BAD_INTS, "0", "248"], profile=[""]),
        needs_config=False,
    ),
    Spec(
        "scan",
        (
            "scan",
            "--protocol",
            "{proto}",
            "--port",
            "/dev/null-x",
            "--units",
            "{units}",
            "--timeout",
            "{timeout}",
        ),
        {"proto": "modbus", "units": "1-3", "timeout": "0.1"},
        _ids(proto=["x"], units=["0", "248", "-1", "a-b", "5-1", "", "1-1000000000000"], timeout=BAD_FLOATS),
        needs_config=False,
    ),
    Spec(
        "scan dlt645",
        ("scan", "--protocol", "dlt645", "--port", "/dev/null-x", "--addresses", "{addrs}"),
        {"addrs": "1"},
        _ids(addrs=["x", "1-99999999", "5-1", "1-1000000000000", "-", ""]),
        needs_config=False,
    ),
    Spec(
        "demo",
        ("demo", "--speed", "{speed}", "--minutes", "{minutes}", "--no-broker", "--plain"),
        {"speed": "1", "minutes": "0.0001"},
        _ids(speed=[*BAD_FLOATS, "0", "1e7"], minutes=[*BAD_FLOATS, "1e7"]),
        needs_config=False,
    ),
    Spec(
        "hq tail",
        (
            "hq",
            "tail",
            "--host",
            "127.0.0.1",
            "--plaintext",
            "--port",
            "{port}",
            "--count",
            "{count}",
            "--idle-exit",
            "{idle}",
        ),
        {"port": "1", "count": "1", "idle": "0"},
        _ids(port=BAD_PORTS, count=[*BAD_INTS, "0"], idle=BAD_FLOATS),
        needs_config=False,
    ),
    Spec(
        "hq topup",
        (
            "hq",
            "topup",
            "--host",
            "{host}",
            "--port",
            "1",
            "--plaintext",
            "--gateway",
            "{gw}",
            "--account",
            "{account}",
            "--amount",
            "{amount}",
            "--id",
            "{id}",
            "--prefix",
            "{prefix}",
            "--deadline",
            "{deadline}",
            "--signing-key",
            "{key}",
            "--journal",
            "{tmp}/journal.sqlite",
        ),
        {
            "host": "127.0.0.1",
            "gw": "gw-corpus",
            "account": "A1",
            "amount": "5.00",
            "id": "t-corpus",
            "prefix": "pmg",
            "deadline": "1",
        },
        _ids(
            host=["", " ", "a\nb"],
            gw=BAD_IDS[1:],
            account=BAD_IDS[1:],
            amount=BAD_MONEY + BAD_NEGATIVE_MONEY + ["0", "0.00"],
            id=["", "x" * 300, "a b"],
            prefix=["", "a/#", "+", "a b", "pmg\n"],
            deadline=[*BAD_FLOATS, "0"],
        ),
        needs_config=False,
    ),
    Spec(
        "hq ingest",
        (
            "hq",
            "ingest",
            "--dsn",
            "{dsn}",
            "--host",
            "{host}",
            "--port",
            "1",
            "--plaintext",
            "--prefix",
            "{prefix}",
            "--group",
            "{group}",
            "--workers",
            "{workers}",
            "--batch-size",
            "{batch}",
            "--linger",
            "{linger}",
            "--run-for",
            "0",
        ),
        {
            "dsn": "postgresql://corpus@127.0.0.1:1/hq",
            "host": "127.0.0.1",
            "prefix": "pmg",
            "group": "pmg-ingest",
            "workers": "1",
            "batch": "10",
            "linger": "0",
        },
        _ids(
            dsn=["", " ", "\n"],
            host=["", " "],
            prefix=["", "a/#", "+", "a b"],
            group=["", "a/b", "+", "#", "g" * 65, "grp\n"],
            workers=[*BAD_INTS, "0", "65"],
            batch=[*BAD_INTS, "0", "10001"],
            linger=[*BAD_FLOATS, "11"],
        ),
        needs_config=False,
    ),
    Spec("hq gaps", ("hq", "gaps", "--dsn", "{dsn}"), {"dsn": "x"}, _ids(dsn=["", " ", "\t"]), needs_config=False),
    Spec(
        "hq reconcile", ("hq", "reconcile", "--dsn", "{dsn}"), {"dsn": "x"}, _ids(dsn=["", " "]), needs_config=False
    ),
    Spec(
        "hq quarantine",
        ("hq", "quarantine", "--dsn", "{dsn}", "--limit", "{limit}"),
        {"dsn": "postgresql://corpus@127.0.0.1:1/hq", "limit": "5"},
        _ids(dsn=["", " "], limit=[*BAD_INTS, "0"]),
        needs_config=False,
    ),
    Spec(
        "meter read-now",
        ("meter", "read-now", "{meter}", "--wait", "{wait}", "--actor", "{actor}"),
        {"meter": "m1", "wait": "1", "actor": "tech"},
        _ids(meter=BAD_IDS, wait=[*BAD_FLOATS, "0", "301"], actor=["", " ", "a\nb"]),
    ),
    Spec(
        "install-config",
        ("install-config", "--root", "{root}", "--group", "{group}"),
        {"root": "{tmp}", "group": "root"},
        _ids(root=["", " ", "/nonexistent-root", "{config}"], group=["", "no-such-group-x", "a\nb"]),
        needs_config=False,
    ),
    Spec(
        "sim dlt645",
        (
            "sim",
            "dlt645",
            "--tcp",
            "{port}",
            "--meters",
            "{meters}",
            "--speed",
            "{speed}",
            "--baud",
            "{baud}",
            "--response-delay-ms",
            "{delay}",
        ),
        {"port": "0", "meters": "1", "speed": "1", "baud": "2400", "delay": "1"},
        _ids(
            port=BAD_PORTS[1:],
            meters=[*BAD_INTS, "0", "1000"],
            speed=[*BAD_FLOATS, "0"],
            baud=[*BAD_INTS, "0"],
            delay=BAD_FLOATS,
        ),
        needs_config=False,
    ),
    Spec(
        "sim modbus",
        (
            "sim",
            "modbus",
            "--profile",
            "sdm120",
            "--tcp",
            "{port}",
            "--meters",
            "{meters}",
            "--power-w",
            "{power}",
            "--speed",
            "{speed}",
        ),
        {"port": "0", "meters": "1", "power": "500", "speed": "1"},
        _ids(port=BAD_PORTS[1:], meters=[*BAD_INTS, "0", "248"], power=BAD_INTS, speed=BAD_FLOATS),
        needs_config=False,
    ),
    Spec(
        "sim fleet",
        ("sim", "fleet", "--config", "{cfg}", "--mqtt-port", "{port}"),
        {"cfg": str(REPO / "config" / "fleet.example.toml"), "port": "1883"},
        _ids(cfg=["", "/nonexistent/fleet.toml"], port=BAD_PORTS),
        needs_config=False,
    ),
]

# Commands (with their config) that must refuse an unknown option, a missing argument, an extra one.
ALL_COMMANDS: list[tuple[str, ...]] = [
    ("run", "--check"),
    ("payment", "add", "A1", "5.00", "--actor", "x"),
    ("ledger", "verify"),
    ("ledger", "debt", "A1", "1.00", "--reason", "r", "--actor", "a"),
    ("ledger", "adjust", "A1", "1.00", "--reason", "r", "--actor", "a"),
    ("balance", "A1"),
    ("meters",),
    ("meter", "show", "m1"),
    ("events",),
    ("status",),
    ("explain", "A1"),
    ("audit", "export"),
    ("report",),
    ("report", "collection"),
    ("relay", "m1", "open", "--reason", "r", "--actor", "a"),
    (
        "meter",
        "replace",
        "m1",
        "--final-register",
        "1",
        "--new-address",
        "1",
        "--reason",
        "r",
        "--actor",
        "a",
    ),
    ("meter", "accept-reading", "m2", "--charge", "--reason", "r", "--actor", "a"),
]
NO_CONFIG_COMMANDS: list[tuple[str, ...]] = [
    ("keys", "generate"),
    ("command", "sign"),
    ("hq", "tail"),
    ("read",),
    ("scan",),
    ("demo", "--speed", "nan"),
    ("hq", "ingest"),
    ("hq", "gaps"),
    ("hq", "topup"),
    ("install-config",),
]

# Configuration keys and the bad values each must refuse (``pmg run --check`` and ``pmg ledger verify``).
BAD_CONFIG: dict[str, list[str]] = {
    "gateway_id": ['""', '"bad id!"', "1", '"' + "g" * 65 + '"', "[]"],
    "timezone": ['"Mars/Base"', '""', '"../../etc/passwd"', "8"],
    "currency": ['"cny"', '"CNYY"', "1"],
    "minor_digits": ["5", "-1", "2.5", "nan", "inf", "99999999999999999999999"],
    "database": ["1", "[]"],
    "buses.timeout_s": ["nan", "inf", "-inf", "0", "-1", "31", '"one"'],
    "buses.baud": ["0", "1000000000", "-2400", "nan", "2400.5", "99999999999999999999999"],
    "buses.parity": ['"X"', '""', "1"],
    "buses.protocol": ['"iec"', '""'],
    "buses.retries": ["-1", "11", "nan"],
    "buses.inter_frame_gap_s": ["nan", "inf", "-0.1", "6"],
    "buses.poll_interval_s": ["nan", "inf", "0", "-5", "86401"],
    "buses.url": ['""', "1"],
    "buses.id": ['"b 1"', '""'],
    "meters.address": ['"1"', '"0000000000001"', '"abcdefghijkl"', "1"],
    "meters.bus": ['"nope"'],
    "meters.tariff": ['"no such"', '""'],
    "meters.poll_interval_s": ["nan", "inf", "0"],
    "meters.max_power_w": ["0", "-1", "99999999999", "nan"],
    "meters.register_modulus_wh": ["0", "-1", "nan"],
    "mqtt.port": ["0", "65536", "-1", '"port"'],
    "mqtt.keepalive_s": ["0", "4", "3601", "nan"],
    "mqtt.tls": ['"maybe"', "false"],
    "mqtt.topic_prefix": ['"a b"', '"#"', '"+"', '""'],
    "mqtt.max_backlog_messages": ["0", "-1", "999"],
    "mqtt.max_packet_bytes": ["0", "-1", "100", "999999999999", "nan", '"256k"'],
    "mqtt.rejected_commands_per_minute": ["0", "-1", "nan", "100001"],
    "housekeeping.backup_every_hours": ["nan", "inf", "0", "8761"],
    "housekeeping.backups_kept": ["0", "1001"],
    "metrics.status_interval_s": ["nan", "inf", "0.5", "3601"],
    "metrics.listen": ['"nope"', '"127.0.0.1:99999999"', '"a b:1"'],
    "policy.preset": ['"no-such-preset"', '"../../etc/passwd"'],
    "unknown_key": ["1"],
}
WHOLE_FILES: dict[str, str | bytes] = {
    "not toml": "this is = = not toml\n",
    "binary": b"\x00\xff\xfe\x80garbage\x00",
    "deep array": "x = " + "[" * 5000 + "]" * 5000 + "\n",
    "deep inline table": "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n",
    "empty": "",
    "duplicate key": 'gateway_id = "a"\ngateway_id = "b"\n',
    "latin-1": 'gateway_id = "caf\xe9"\n'.encode("latin-1"),
}


def _config_body(db: Path, tmp: Path, *, key: str | None = None, value: str | None = None) -> str:
    """The corpus gateway: a DL/T 645 bus, two meters, a plaintext broker section; ``key`` set to ``value``."""
    top = {
        "gateway_id": '"gw-corpus"',
        "timezone": '"Asia/Shanghai"',
        "database": f'"{db}"',
        "currency": '"CNY"',
        "minor_digits": "2",
    }
    tables: dict[str, dict[str, str]] = {
        "mqtt": {"host": '"127.0.0.1"', "port": "1", "tls": "false", "allow_plaintext": "true"},
        "housekeeping": {},
        "metrics": {},
        "policy": {},
        "buses": {"id": '"b1"', "protocol": '"dlt645"', "url": f'"{tmp / "no-such-tty"}"'},
    }
    meters = [
        {
            "id": f'"m{i}"',
            "bus": '"b1"',
            "address": f'"00000000000{i}"',
            "account": f'"A{i}"',
            "tariff": '"flat-cn"',
        }
        for i in (1, 2)
    ]
    if key is not None and value is not None:
        section, _, name = key.rpartition(".")
        if not section:
            top[key] = value
        elif section == "meters":
            meters[0][name] = value
        else:
            tables[section][name] = value
        if key == "mqtt.tls" and value == "false":
            del tables["mqtt"]["allow_plaintext"]
    base = base_config(db, gateway_id="gw-corpus").split("\n[policy]", 1)
    policy_tail = "[policy]" + base[1] if len(base) == 2 else ""
    lines = [f"{k} = {v}" for k, v in top.items()]
    lines.append(f'tariff_dir = "{REPO / "gateway" / "tariffs" / "examples"}"')
    for section in ("mqtt", "housekeeping", "metrics"):
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {v}" for k, v in tables[section].items()]
    if tables["policy"]:
        lines.append("\n[policy]")
        lines += [f"{k} = {v}" for k, v in tables["policy"].items()]
    elif policy_tail:
        lines.append("\n" + policy_tail)
    lines.append("\n[[buses]]")
    lines += [f"{k} = {v}" for k, v in tables["buses"].items()]
    for m in meters:
        lines.append("\n[[meters]]")
        lines += [f"{k} = {v}" for k, v in m.items()]
    return "\n".join(lines) + "\n"


@dataclass
class World:
    tmp: Path
    config: Path
    db: Path
    key: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("corpus")
    db = tmp / "pmg.db"
    config = write_config(tmp / "gw.toml", _config_body(db, tmp))
    store = open_store(db)
    try:
        cfg = load_config(config)
        seed_from_config(store, cfg, NOW)
        check_money_pins(store, cfg.currency, cfg.minor_digits)  # as the daemon's first start does
        with store.tx() as conn:  # m1 has a reading (so meter replace would charge), m2 a quarantined one
            conn.execute(
                "UPDATE meters SET last_register_wh = 1000, last_reading_at = '2026-01-01T00:00:00Z' WHERE id = 'm1'"
            )
    finally:
        store.close()
    key = tmp / "hq.key"
    write_private_key(key, generate_key())
    yield World(tmp, config, db, key)


def ledger_hash(db: Path) -> str:
    """Every row of every table (the whole ledger, audit log included), in a stable order."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


def _cli_cases(world: World) -> list[Case]:
    cases: list[Case] = []
    for spec in SPECS:
        for slot, values in spec.bad.items():
            for value in values:
                fill = {**spec.valid, slot: value}
                paths = {"key": world.key, "tmp": world.tmp, "config": world.config}
                fill = {k: str(paths[v[1:-1]]) if v[1:-1] in paths and v[0] == "{" else v for k, v in fill.items()}
                argv = [a.format(**fill, **paths) for a in spec.template]
                if value == "" and slot == "mode":
                    argv = [a for a in argv if a]
                if spec.needs_config:
                    argv += ["-c", str(world.config)]
                cases.append(Case(f"{spec.command} {slot}={value[:20]!r}", tuple(argv)))
    for base in ALL_COMMANDS:
        cfg = ("-c", str(world.config))
        cases.append(Case(f"{' '.join(base[:2])} unknown option", (*base, "--no-such-option", *cfg)))
        cases.append(
            Case(f"{' '.join(base[:2])} missing config", (*base, "-c", str(world.tmp / "missing.toml")))
        )
        cases.append(Case(f"{' '.join(base[:2])} config is a directory", (*base, "-c", str(world.tmp))))
        cases.append(Case(f"{' '.join(base[:2])} extra argument", (*base, "extra", "args", *cfg)))
    for base in NO_CONFIG_COMMANDS:
        cases.append(Case(f"{' '.join(base[:2])} unknown option", (*base, "--no-such-option")))
    cases += [
        Case("pmg unknown option", ("--no-such-option", "meters")),
        Case("pmg unknown command", ("no-such-command",)),
        Case("pmg -v with a value", ("-v=3", "meters")),
        Case("keys generate existing", ("keys", "generate", "-o", str(world.key))),
        Case("keys generate into a directory", ("keys", "generate", "-o", str(world.tmp))),
        Case("command sign missing key", ("command", "sign", "-k", str(world.tmp / "nokey"))),
        Case("command sign key is not a key", ("command", "sign", "-k", str(world.config)), "{}"),
        Case(
            "command sign missing source",
            ("command", "sign", "-k", str(world.key), str(world.tmp / "none.json")),
        ),
        Case(
            "command sign bad key id", ("command", "sign", "-k", str(world.key), "--key-id", "\n"), '{"a": 1}'
        ),
    ]
    for label, body in {
        "not JSON": "not json",
        "empty": "",
        "array": "[1]",
        "string": '"x"',
        "deep": "[" * 100_000 + "]" * 100_000,
        "deep object": '{"a":' * 50_000 + "1" + "}" * 50_000,
        "NaN": '{"amount": NaN}',
        "Infinity": '{"x": Infinity}',
        "huge exponent": '{"x": 1e400}',
        "binary": b"\xff\xfe\x00\x80",
        "BOM only": "\ufeff",
        "trailing": '{"a": 1} x',
    }.items():
        cases.append(Case(f"command sign {label}", ("command", "sign", "-k", str(world.key)), body))
    return cases


def _config_cases(world: World) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    n = 0
    for key, values in BAD_CONFIG.items():
        for value in values:
            n += 1
            body = _config_body(world.db, world.tmp, key=key, value=value)
            out.append((f"config {key}={value[:20]}", write_config(world.tmp / f"bad{n}.toml", body)))
    good = _config_body(world.db, world.tmp)
    dup = (
        good
        + '\n[[meters]]\nid = "m1"\nbus = "b1"\naddress = "000000000003"\naccount = "A3"\ntariff = "flat-cn"\n'
    )
    for label, content in {
        **WHOLE_FILES,
        "duplicate meter": dup,
        "deep value": good + "z = " + "[" * 5000,
    }.items():
        n += 1
        path = world.tmp / f"bad{n}.toml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        out.append((f"config file {label}", path))
    return out


def _assert_bad_input(stdout: str, stderr: str, status: int | None, before: str, after: str) -> None:
    assert status == 2, f"exit {status}; stderr={stderr[-300:]!r} stdout={stdout[-200:]!r}"
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmg: error: "), f"stderr={stderr[-500:]!r}"
    assert "Traceback" not in stdout + stderr
    assert before == after, "the ledger changed"


def test_the_corpus_is_large(world: World) -> None:
    assert len(_cli_cases(world)) + 2 * len(_config_cases(world)) >= 300


def test_every_bad_cli_input_is_one_line_exit_2_and_changes_nothing(world: World) -> None:
    failures: list[str] = []
    runner = CliRunner()
    for case in _cli_cases(world):
        before = ledger_hash(world.db)
        result = runner.invoke(cli, list(case.argv), prog_name="pmg", input=case.stdin, catch_exceptions=True)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            failures.append(f"{case.name}: {type(result.exception).__name__}: {result.exception}"[:300])
            continue
        try:
            _assert_bad_input(result.stdout, result.stderr, result.exit_code, before, ledger_hash(world.db))
        except AssertionError as exc:
            failures.append(f"{case.name}: {exc}"[:400])
    assert not failures, f"{len(failures)} bad inputs mishandled:\n" + "\n".join(failures)


@pytest.mark.parametrize("command", [("run", "--check"), ("ledger", "verify")])
def test_every_bad_config_is_one_line_exit_2_and_changes_nothing(
    world: World, command: tuple[str, ...]
) -> None:
    failures: list[str] = []
    runner = CliRunner()
    for name, path in _config_cases(world):
        if command != ("run", "--check") and name.startswith("config policy."):
            continue  # only the daemon and its check load the policy preset
        before = ledger_hash(world.db)
        result = runner.invoke(cli, [*command, "-c", str(path)], prog_name="pmg")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            failures.append(f"{name}: {type(result.exception).__name__}: {result.exception}"[:300])
            continue
        try:
            _assert_bad_input(result.stdout, result.stderr, result.exit_code, before, ledger_hash(world.db))
        except AssertionError as exc:
            failures.append(f"{name}: {exc}"[:400])
    assert not failures, f"{len(failures)} bad configurations mishandled:\n" + "\n".join(failures)


def test_the_corpus_gateway_itself_is_valid(world: World) -> None:
    result = CliRunner().invoke(cli, ["run", "--check", "-c", str(world.config)], prog_name="pmg")
    assert result.exit_code == 0, result.stderr


def _pmg(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    "argv,stdin",
    [
        (("explain", "A1", "--at", "9999-12-31T23:59:59"), ""),
        (("report", "--from", "0001-01-01", "--to", "9999-12-31"), ""),
        (
            (
                "meter",
                "replace",
                "m1",
                "--final-register",
                "9223372036854775808",
                "--new-address",
                "000000000009",
                "--reason",
                "r",
                "--actor",
                "a",
            ),
            "",
        ),
        (("command", "sign", "-k", "{key}"), "[" * 100_000 + "]" * 100_000),
        (("sim", "dlt645", "--tcp", "99999"), ""),
        (("run", "--check", "-c", "{deep}"), ""),
        (
            (
                "read",
                "--protocol",
                "dlt645",
                "--port",
                "/dev/null-x",
                "--address",
                "000000000001",
                "--timeout",
                "nan",
            ),
            "",
        ),
    ],
    ids=[
        "explain-9999",
        "report-0001",
        "replace-2**63",
        "sign-deep-json",
        "sim-port",
        "deep-toml",
        "nan-timeout",
    ],
)
def test_reported_inputs_in_a_real_process(world: World, argv: tuple[str, ...], stdin: str) -> None:
    deep = world.tmp / "deep-subprocess.toml"
    deep.write_text(_config_body(world.db, world.tmp) + "x = " + "[" * 5000 + "]" * 5000 + "\n")
    args = [a.format(key=world.key, deep=deep) for a in argv]
    if "-c" not in args and argv[0] in ("explain", "report", "meter"):
        args += ["-c", str(world.config)]
    before = ledger_hash(world.db)
    proc = _pmg(*args, stdin=stdin)
    _assert_bad_input(proc.stdout, proc.stderr, proc.returncode, before, ledger_hash(world.db))


def test_a_negative_adjustment_works_as_documented(world: World) -> None:
    """README/docs: ``pmg ledger adjust A1 -3.50`` corrects a balance down (click took ``-3.50`` for an option)."""
    proc = _pmg(
        "ledger",
        "adjust",
        "A2",
        "-3.50",
        "--reason",
        "meter misread",
        "--actor",
        "ops",
        "-c",
        str(world.config),
        "--id",
        "adj-negative",
    )
    assert proc.returncode == 0, proc.stderr
    assert "-3.50 to A2" in proc.stdout
    result = CliRunner().invoke(cli, ["balance", "A2", "--json", "-c", str(world.config)], prog_name="pmg")
    assert json.loads(result.stdout)["balance"].startswith("-3.50") or "-3.50" in result.stdout


def test_web_accounts_refuse_bad_names_roles_and_passwords(world: World) -> None:
    """``pmg web passwd`` / ``token``: a bad name, role or password is one line, exit 2, and the users
    file (and the ledger) stay as they were (docs/web.md, "Accounts")."""
    users = world.tmp / "web-users.txt"
    config = write_config(
        world.tmp / "gw-web.toml",
        _config_body(world.db, world.tmp) + f'\n[web]\nusers_file = "{users}"\n',
    )
    runner = CliRunner()
    made = runner.invoke(cli, ["web", "passwd", "ops", "--role", "operator", "--password-stdin", "-c", str(config)],
                         prog_name="pmg", input="a long enough passphrase\n")
    assert made.exit_code == 0, made.stderr
    cases: list[tuple[list[str], str]] = [
        *[(["web", "passwd", name, "--password-stdin"], "a long enough passphrase\n") for name in BAD_IDS[1:]],
        *[(["web", "token", name], "") for name in BAD_IDS[1:]],
        (["web", "passwd", "ops", "--role", "admin", "--password-stdin"], "a long enough passphrase\n"),
        (["web", "passwd", "ops", "--role", "", "--password-stdin"], "a long enough passphrase\n"),
        (["web", "passwd", "ops", "--password-stdin"], ""),
        (["web", "passwd", "ops", "--password-stdin"], "short\n"),
        (["web", "passwd", "ops", "--password-stdin"], "\n"),
    ]
    failures: list[str] = []
    for argv, stdin in cases:
        before = (ledger_hash(world.db), users.read_bytes())
        result = runner.invoke(cli, [*argv, "-c", str(config)], prog_name="pmg", input=stdin)
        after = (ledger_hash(world.db), users.read_bytes())
        try:
            assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
            _assert_bad_input(result.stdout, result.stderr, result.exit_code, before[0], after[0])
            assert before[1] == after[1], "the users file changed"
        except AssertionError as exc:
            failures.append(f"{argv[:3]} {stdin[:10]!r}: {exc}"[:300])
    assert not failures, "\n".join(failures)
