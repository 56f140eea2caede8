"""The head office's PostgreSQL layout, versioned: each migration runs once, in order, in a transaction.

Several ingest workers may start at once against a new database: the migrations run under a
transaction-scoped advisory lock, so exactly one applies them and the others find them applied.
Append new migrations at the end; never edit one that has shipped.

Why the layout is what it is:

- ``received`` is the deduplication: one row per ``(gateway_id, epoch, seq)``, inserted with
  ``ON CONFLICT DO NOTHING`` in the batch's transaction; only the rows it admits are written to the
  other tables, so a redelivery (after a worker's death, a reconnect, a ``resend``) changes nothing.
  It also keeps the body of every sequenced message but usage (usage is stored typed, below).
- ``usage`` is partitioned by month of ``interval_end`` (native range partitioning): old months can be
  detached or dropped whole, and a month's queries touch one partition.  A partitioned table's unique
  keys must contain the partition key, which is why the exactly-once key lives in ``received``.
- ``ledger`` (a view) is the replicated per-account ledger: one row per charge (``usage``) and per
  payment (``payments``, from ``payment_applied`` events), each with the balance the gateway reported
  after it; ``balances`` is each account's latest.  Charges are not written twice: usage is the charge.
- ``gaps``/``lost`` are the missing sequence numbers per gateway and epoch; ``quarantine`` keeps what
  could not be accepted, with the reason.
"""

from __future__ import annotations

from typing import Any

LOCK_KEY = 0x504D4748  # "PMGH": the advisory lock that serialises migrations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "base: received, usage by month, ledger, status, gaps, quarantine",
        """
CREATE TABLE gateways (
    gateway_id   text PRIMARY KEY,
    epoch        text,
    status       jsonb,
    status_at    timestamptz,
    last_seen    timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE chain_heads (
    gateway_id   text NOT NULL,
    epoch        text NOT NULL DEFAULT '',
    chain_length bigint NOT NULL,
    chain_head   text NOT NULL,
    seen_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, epoch, chain_length, chain_head)
);
CREATE TABLE received (
    gateway_id   text NOT NULL,
    epoch        text NOT NULL,
    seq          bigint NOT NULL,
    topic        text NOT NULL,
    kind         text NOT NULL,
    counted      boolean NOT NULL,
    resent       boolean NOT NULL DEFAULT false,
    body         jsonb,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, epoch, seq)
);
CREATE TABLE usage (
    gateway_id     text NOT NULL,
    epoch          text NOT NULL,
    seq            bigint NOT NULL,
    meter_id       text NOT NULL,
    account_id     text NOT NULL,
    interval_start timestamptz,
    interval_end   timestamptz NOT NULL,
    register_wh    bigint NOT NULL,
    energy_wh      bigint NOT NULL,
    charge         numeric NOT NULL,
    balance        numeric NOT NULL
) PARTITION BY RANGE (interval_end);
CREATE TABLE usage_default PARTITION OF usage DEFAULT;
CREATE INDEX usage_account ON usage (gateway_id, account_id, interval_end);
CREATE TABLE payments (
    gateway_id   text NOT NULL,
    epoch        text NOT NULL,
    seq          bigint NOT NULL,
    account_id   text NOT NULL,
    payment_id   text NOT NULL,
    amount       numeric NOT NULL,
    balance      numeric NOT NULL,
    at           timestamptz NOT NULL,
    PRIMARY KEY (gateway_id, epoch, seq)
);
CREATE INDEX payments_account ON payments (gateway_id, account_id, at);
-- The replicated per-account ledger: charges (usage) and payments, each with the balance after it;
-- ``amount`` is the entry's effect on the balance (a charge is negative).
CREATE VIEW ledger AS
    SELECT gateway_id, epoch, seq, account_id, 'charge'::text AS kind, -charge AS amount, energy_wh,
           balance, interval_end AS at, meter_id AS ref
      FROM usage
    UNION ALL
    SELECT gateway_id, epoch, seq, account_id, 'payment', amount, 0, balance, at, payment_id
      FROM payments;
-- Each account's balance: the one reported with the latest entry (by seq within an epoch; across
-- epochs, a reinstall or a restore, by the gateway's time).
CREATE VIEW balances AS
    SELECT DISTINCT ON (gateway_id, account_id) gateway_id, account_id, balance, at, epoch, seq
      FROM ledger
  ORDER BY gateway_id, account_id, at DESC, seq DESC;
CREATE TABLE unsequenced (
    id           bigserial PRIMARY KEY,
    gateway_id   text NOT NULL,
    topic        text NOT NULL,
    kind         text NOT NULL,
    body         jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE resends (
    command_id   text PRIMARY KEY,
    gateway_id   text NOT NULL,
    epoch        text NOT NULL,
    from_seq     bigint NOT NULL,
    to_seq       bigint NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    ack          jsonb
);
CREATE TABLE epochs (
    gateway_id   text NOT NULL,
    epoch        text NOT NULL,
    floor_seq    bigint,
    first_seen   timestamptz,  -- by the first gap scan that saw the epoch (the scan's clock)
    PRIMARY KEY (gateway_id, epoch)
);
CREATE TABLE seq_skips (
    gateway_id   text NOT NULL,
    epoch        text NOT NULL,
    from_seq     bigint NOT NULL,
    to_seq       bigint NOT NULL,
    reason       text NOT NULL,
    PRIMARY KEY (gateway_id, epoch, from_seq, to_seq)
);
CREATE TABLE gaps (
    gateway_id   text NOT NULL,
    epoch        text NOT NULL,
    from_seq     bigint NOT NULL,
    to_seq       bigint NOT NULL,
    opened_at    timestamptz NOT NULL,
    resend_at    timestamptz,
    resends      integer NOT NULL DEFAULT 0,
    command_id   text,
    PRIMARY KEY (gateway_id, epoch, from_seq)
);
CREATE TABLE quarantine (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    gateway_id   text,
    reason       text NOT NULL,
    payload      bytea NOT NULL
);
""",
    ),
]


def current_version(conn: Any) -> int:
    row = conn.execute(
        "SELECT coalesce(max(version), 0) FROM hq_schema_migrations"
    ).fetchone()
    return int(row[0])


def migrate(conn: Any) -> list[int]:
    """Apply the migrations this database lacks; the versions applied (empty if up to date).

    ``conn`` is a psycopg connection (not in a transaction); each migration commits with its version row.
    """
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hq_schema_migrations (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        have = current_version(conn)
        for version, (name, sql) in enumerate(MIGRATIONS, start=1):
            if version <= have:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO hq_schema_migrations(version, name) VALUES (%s, %s)", (version, name))
            applied.append(version)
    return applied
