"""Versioned schema migrations, applied in order inside one transaction each.

``PRAGMA user_version`` records the schema version.  A migration is never edited once released; a
change is a new entry at the end.  Money tables are append-only, enforced by triggers so that not
even a buggy future module can rewrite history.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.core.errors import OperationFailed

MIGRATIONS: tuple[str, ...] = (
    # 1: the walking skeleton's tables, shaped for the ledger, policy and sync that follow.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE accounts (
        id                    TEXT PRIMARY KEY,
        name                  TEXT,
        tariff_id             TEXT NOT NULL,
        currency              TEXT NOT NULL,
        protected             INTEGER NOT NULL DEFAULT 0,
        protected_category    TEXT,
        risk_grade            INTEGER NOT NULL DEFAULT 0,
        emergency_credit_minor INTEGER NOT NULL DEFAULT 0,
        balance_minor         INTEGER NOT NULL DEFAULT 0,   -- cache; `pmg ledger verify` checks it
        policy_state          TEXT NOT NULL DEFAULT 'normal',
        policy_state_since    TEXT,
        notice_served_at      TEXT,
        reminder_sent_at      TEXT,
        warnings_json         TEXT NOT NULL DEFAULT '{}',
        alerts_json           TEXT NOT NULL DEFAULT '{}',
        earliest_cut_at       TEXT,
        next_review_at        TEXT,
        created_at            TEXT NOT NULL,
        updated_at            TEXT NOT NULL
    );
    CREATE TABLE meters (
        id                  TEXT PRIMARY KEY,
        account_id          TEXT NOT NULL REFERENCES accounts(id),
        bus_id              TEXT NOT NULL,
        protocol            TEXT NOT NULL,
        address             TEXT NOT NULL,
        keep_power          INTEGER NOT NULL DEFAULT 0,
        keep_power_on_meter INTEGER,          -- as last read back (DL/T 645 status word 3 bit 12)
        last_register_wh    INTEGER,          -- last accepted import register
        last_tariffs_json   TEXT,             -- last accepted T1..Tn registers
        last_reading_at     TEXT,
        last_reading_id     INTEGER,
        charged_exact       TEXT NOT NULL DEFAULT '0',   -- cumulative exact charge (Decimal)
        charged_minor       INTEGER NOT NULL DEFAULT 0,  -- cumulative posted charge
        relay               TEXT,
        relay_at            TEXT,
        quarantined_reading_id INTEGER,       -- set while a suspicious reading awaits a technician
        comms_ok            INTEGER NOT NULL DEFAULT 0,
        comms_failed        INTEGER NOT NULL DEFAULT 0,
        last_comms_error    TEXT,
        created_at          TEXT NOT NULL,
        updated_at          TEXT NOT NULL
    );
    CREATE TABLE readings (
        id            INTEGER PRIMARY KEY,
        meter_id      TEXT NOT NULL REFERENCES meters(id),
        taken_at      TEXT NOT NULL,
        quality       TEXT NOT NULL,
        register_wh   INTEGER,
        export_wh     INTEGER,
        tariffs_json  TEXT,
        relay         TEXT,
        outcome       TEXT NOT NULL,          -- baseline | charged | quarantined | failed | ignored
        delta_wh      INTEGER,
        detail        TEXT
    );
    CREATE INDEX readings_meter_time ON readings(meter_id, taken_at);
    CREATE TABLE entries (
        id           INTEGER PRIMARY KEY,
        account_id   TEXT NOT NULL REFERENCES accounts(id),
        kind         TEXT NOT NULL CHECK (kind IN (
                       'payment', 'charge', 'standing_charge', 'adjustment',
                       'emergency_credit', 'emergency_repayment', 'debt', 'debt_recovery')),
        amount_minor INTEGER NOT NULL,         -- signed: + credits the account, - debits it
        energy_wh    INTEGER,
        meter_id     TEXT,
        reading_id   INTEGER,
        external_id  TEXT,                     -- payment id etc.: unique per kind
        period_start TEXT,
        period_end   TEXT,
        detail_json  TEXT NOT NULL DEFAULT '{}',
        created_at   TEXT NOT NULL
    );
    CREATE UNIQUE INDEX entries_external ON entries(kind, external_id) WHERE external_id IS NOT NULL;
    CREATE INDEX entries_account ON entries(account_id, created_at);
    CREATE TRIGGER entries_append_only_u BEFORE UPDATE ON entries
        BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
    CREATE TRIGGER entries_append_only_d BEFORE DELETE ON entries
        BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
    CREATE TABLE payments (
        payment_id   TEXT PRIMARY KEY,
        account_id   TEXT NOT NULL REFERENCES accounts(id),
        amount_minor INTEGER NOT NULL CHECK (amount_minor > 0),
        received_at  TEXT NOT NULL,
        source       TEXT NOT NULL,
        result_json  TEXT NOT NULL             -- the original result, returned on replay
    );
    CREATE TRIGGER payments_append_only_u BEFORE UPDATE ON payments
        BEGIN SELECT RAISE(ABORT, 'payments are append-only'); END;
    CREATE TRIGGER payments_append_only_d BEFORE DELETE ON payments
        BEGIN SELECT RAISE(ABORT, 'payments are append-only'); END;
    CREATE TABLE relay_commands (
        id           INTEGER PRIMARY KEY,
        meter_id     TEXT NOT NULL REFERENCES meters(id),
        action       TEXT NOT NULL,
        status       TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'confirmed', 'failed', 'cancelled')),
        reason       TEXT NOT NULL,
        actor        TEXT NOT NULL,
        trace_json   TEXT NOT NULL DEFAULT '[]',
        attempts     INTEGER NOT NULL DEFAULT 0,
        not_before   TEXT,
        payment_id   TEXT,                     -- a reconnect caused by this payment (for timing)
        outcome      TEXT,
        created_at   TEXT NOT NULL,
        updated_at   TEXT NOT NULL
    );
    CREATE INDEX relay_commands_open ON relay_commands(status, meter_id);
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        at          TEXT NOT NULL,
        kind        TEXT NOT NULL,
        severity    TEXT NOT NULL DEFAULT 'info',
        account_id  TEXT,
        meter_id    TEXT,
        actor       TEXT,
        detail_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_at ON events(at);
    CREATE TRIGGER events_append_only_u BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER events_append_only_d BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TABLE outbox (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,   -- the per-gateway sequence number
        topic        TEXT NOT NULL,
        payload      TEXT NOT NULL,
        qos          INTEGER NOT NULL DEFAULT 1,
        retain       INTEGER NOT NULL DEFAULT 0,
        billing      INTEGER NOT NULL DEFAULT 1,
        created_at   TEXT NOT NULL,
        delivered_at TEXT
    );
    CREATE INDEX outbox_pending ON outbox(delivered_at, seq);
    CREATE TABLE commands (
        id           TEXT PRIMARY KEY,         -- head-office command id (idempotence)
        type         TEXT NOT NULL,
        digest       TEXT NOT NULL,            -- sha256 of the canonical form
        received_at  TEXT NOT NULL,
        ack_json     TEXT NOT NULL
    );
    CREATE TABLE holds (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL,
        reason      TEXT NOT NULL,
        actor       TEXT NOT NULL,
        starts_at   TEXT NOT NULL,
        expires_at  TEXT NOT NULL,
        cleared_at  TEXT
    );
    CREATE TABLE overrides (
        id              INTEGER PRIMARY KEY,
        target          TEXT NOT NULL,
        action          TEXT NOT NULL,
        reason          TEXT NOT NULL,
        actor           TEXT NOT NULL,
        allow_protected INTEGER NOT NULL DEFAULT 0,
        created_at      TEXT NOT NULL,
        expires_at      TEXT NOT NULL,
        cleared_at      TEXT
    );
    CREATE TABLE tariffs (
        id            TEXT NOT NULL,
        version       INTEGER NOT NULL,
        effective_from TEXT NOT NULL,
        body_json     TEXT NOT NULL,
        source        TEXT NOT NULL,
        added_at      TEXT NOT NULL,
        PRIMARY KEY (id, version)
    );
    """,
    # ledger credit features (docs/ledger.md): a debt pocket beside the balance, cumulative standing-charge
    # rounding per account, and unique constraints that make "once per account and day" and "once per
    # reading" properties of the schema rather than of the code.
    """
    ALTER TABLE accounts ADD COLUMN debt_minor INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE accounts ADD COLUMN debt_recovery_share TEXT NOT NULL DEFAULT '0';
    ALTER TABLE accounts ADD COLUMN standing_exact TEXT NOT NULL DEFAULT '0';
    ALTER TABLE accounts ADD COLUMN standing_minor INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE entries ADD COLUMN debt_minor INTEGER NOT NULL DEFAULT 0;
    CREATE UNIQUE INDEX entries_standing_day ON entries(account_id, period_start)
        WHERE kind = 'standing_charge';
    CREATE UNIQUE INDEX entries_reading_charge ON entries(reading_id)
        WHERE kind = 'charge' AND reading_id IS NOT NULL;
    CREATE INDEX entries_kind_time ON entries(kind, created_at);
    """,
    # the block position of each account kept as a running counter (energy charged in its current
    # block cycle), so pricing a reading no longer sums every entry of the cycle (O(n) per reading).
    """
    ALTER TABLE accounts ADD COLUMN cycle_start TEXT;
    ALTER TABLE accounts ADD COLUMN cycle_used_wh INTEGER NOT NULL DEFAULT 0;
    """,
    # write amplification: every charged reading wrote a page of an index no query needed (reports go
    # by account, the standing-charge lookups by their partial unique index).  On the gateway's eMMC
    # one index page fewer per reading is ~5 % of the commit and of the flash wear.
    """
    DROP INDEX IF EXISTS entries_kind_time;
    """,
    # history-independent consumption queries (``gateway.ledger.consumption``): the forecast and the
    # risk grade sum an account's charged energy over a week or a month, once an hour per account.
    # Through ``entries(account_id, created_at)`` that read every entry's row (28 ms per account at a
    # week of one-minute readings); covering kind and energy, the sum reads the index alone.  The
    # account's meters are found by index to seek each one's first reading.  Rebuilding the index
    # takes a while on a large database, once, at the first start of this version.  Downsampling
    # keeps every reading an entry cites by asking the partial unique index of charge entries, so
    # only a charge entry may cite a reading; the block recount bounds its search by created_at, so a
    # charge entry is posted at its period's end (the code never did otherwise; now the schema says so).
    """
    DROP INDEX IF EXISTS entries_account;
    CREATE INDEX entries_account ON entries(account_id, created_at, kind, energy_wh);
    CREATE INDEX meters_account ON meters(account_id);
    CREATE TRIGGER entries_reading_only_charges BEFORE INSERT ON entries
        WHEN NEW.reading_id IS NOT NULL AND NEW.kind <> 'charge'
        BEGIN SELECT RAISE(ABORT, 'only a charge entry may cite a reading'); END;
    CREATE TRIGGER entries_charge_at_period_end BEFORE INSERT ON entries
        WHEN NEW.kind = 'charge' AND NEW.created_at IS NOT NEW.period_end
        BEGIN SELECT RAISE(ABORT, 'a charge entry is posted at its period end'); END;
    """,
    # calendar freshness: official years (public holidays / days off and adjusted working days) from
    # the head office's signed ``calendar`` command, for years the ``holidays`` package does not know
    # yet (docs/enforcement.md, "Calendar freshness").  One row per country and year; a later
    # command for the same year replaces it (the ``events`` table keeps the history).
    """
    CREATE TABLE calendar_years (
        country       TEXT NOT NULL,
        year          INTEGER NOT NULL,
        days_off_json TEXT NOT NULL,   -- sorted ISO dates
        workdays_json TEXT NOT NULL,   -- sorted ISO dates
        source        TEXT NOT NULL,   -- the notice it transcribes
        command_id    TEXT NOT NULL,
        actor         TEXT NOT NULL,
        received_at   TEXT NOT NULL,
        PRIMARY KEY (country, year)
    );
    """,
    # notice delivery: a notice counts from the moment it reached the customer, confirmed by the head
    # office (``notice`` command: channel and time) or, where the rules say so, the meter display;
    # ``notice_served_at`` stays the instant the gateway issued it (docs/enforcement.md).
    """
    ALTER TABLE accounts ADD COLUMN notice_delivered_at TEXT;
    ALTER TABLE accounts ADD COLUMN notice_channel TEXT;
    """,
    # payment to power: accounts whose available credit rose, waiting for the running daemon to re-decide
    # them (``gateway.runtime.payment_watch``; docs/enforcement.md, "Payment to power").  A payment written by
    # another process (``pmg payment add``) or while the daemon is down marks its account in its own
    # transaction; the trigger marks every other raise of balance or emergency credit, by any writer, so
    # no path can forget to.  The daemon clears a mark in the transaction that re-decides the account.
    """
    CREATE TABLE IF NOT EXISTS policy_inbox (
        account_id TEXT PRIMARY KEY REFERENCES accounts(id),
        payment_id TEXT,                      -- the payment that raised the credit, if one did
        marked_at  TEXT NOT NULL
    );
    CREATE TRIGGER IF NOT EXISTS policy_inbox_credit_raised AFTER UPDATE OF balance_minor, emergency_credit_minor
        ON accounts
        WHEN NEW.balance_minor + NEW.emergency_credit_minor > OLD.balance_minor + OLD.emergency_credit_minor
        BEGIN
            INSERT OR IGNORE INTO policy_inbox(account_id, marked_at) VALUES (NEW.id, NEW.updated_at);
        END;
    """,
    # tamper evidence (docs/ledger.md "Tamper evidence"): one SHA-256 hash chain, in insertion order,
    # over ledger entries, payments, audit events and relay commands (each insert, and each change of
    # a relay command).  A link's hash covers the previous link's hash, the table and the row's
    # canonical JSON (SQLite's json_object over its columns in name order); the triggers call
    # pmg_chain_link, which ``gateway.store.chain.register`` gives every connection pmg opens (a
    # connection without it cannot write these tables: a forger must first drop the triggers, and
    # ``pmg ledger verify`` then finds the row outside the chain).  Rows older than this migration are
    # covered by one "genesis" link: per table, the row count, the last rowid and a digest of the rows'
    # canonical JSON in rowid order (relay commands by the columns that never change).
    """
    CREATE TABLE chain (
        seq      INTEGER PRIMARY KEY,      -- 1..length, the order rows were written (commit order)
        tbl      TEXT NOT NULL,            -- genesis | entries | payments | events | relay_commands
        row_id   INTEGER,                  -- the row's rowid in tbl (NULL for genesis)
        content  TEXT,                     -- kept for genesis and relay commands (which change); else NULL
        hash     TEXT NOT NULL             -- sha256(previous hash, tbl, canonical row JSON), hex
    );
    CREATE TRIGGER chain_append_only_u BEFORE UPDATE ON chain
        BEGIN SELECT RAISE(ABORT, 'the hash chain is append-only'); END;
    CREATE TRIGGER chain_append_only_d BEFORE DELETE ON chain
        BEGIN SELECT RAISE(ABORT, 'the hash chain is append-only'); END;
    INSERT INTO chain(tbl, row_id, content, hash)
        SELECT 'genesis', NULL, c, pmg_chain_link(NULL, 'genesis', c) FROM (SELECT json_object(
            'entries', (SELECT json_object('rows', COUNT(*), 'last_rowid', MAX(rowid), 'sha256', pmg_digest(rowid,
                json_object('account_id', account_id, 'amount_minor', amount_minor, 'created_at', created_at,
                'debt_minor', debt_minor, 'detail_json', detail_json, 'energy_wh', energy_wh,
                'external_id', external_id, 'id', id, 'kind', kind, 'meter_id', meter_id,
                'period_end', period_end, 'period_start', period_start, 'reading_id', reading_id))) FROM entries),
            'events', (SELECT json_object('rows', COUNT(*), 'last_rowid', MAX(rowid), 'sha256', pmg_digest(rowid,
                json_object('account_id', account_id, 'actor', actor, 'at', at, 'detail_json', detail_json,
                'id', id, 'kind', kind, 'meter_id', meter_id, 'severity', severity))) FROM events),
            'payments', (SELECT json_object('rows', COUNT(*), 'last_rowid', MAX(rowid), 'sha256', pmg_digest(rowid,
                json_object('account_id', account_id, 'amount_minor', amount_minor, 'payment_id', payment_id,
                'received_at', received_at, 'result_json', result_json, 'source', source))) FROM payments),
            'relay_commands', (SELECT json_object('rows', COUNT(*), 'last_rowid', MAX(rowid), 'sha256', pmg_digest(rowid,
                json_object('action', action, 'actor', actor, 'created_at', created_at, 'id', id, 'meter_id', meter_id,
                'payment_id', payment_id, 'reason', reason))) FROM relay_commands)
        ) AS c);
    CREATE TRIGGER chain_entries AFTER INSERT ON entries BEGIN
        INSERT INTO chain(tbl, row_id, hash) VALUES ('entries', NEW.rowid, pmg_chain_link(
            (SELECT hash FROM chain ORDER BY seq DESC LIMIT 1), 'entries', json_object(
                'account_id', NEW.account_id, 'amount_minor', NEW.amount_minor, 'created_at', NEW.created_at,
                'debt_minor', NEW.debt_minor, 'detail_json', NEW.detail_json, 'energy_wh', NEW.energy_wh,
                'external_id', NEW.external_id, 'id', NEW.id, 'kind', NEW.kind, 'meter_id', NEW.meter_id,
                'period_end', NEW.period_end, 'period_start', NEW.period_start, 'reading_id', NEW.reading_id)));
    END;
    CREATE TRIGGER chain_payments AFTER INSERT ON payments BEGIN
        INSERT INTO chain(tbl, row_id, hash) VALUES ('payments', NEW.rowid, pmg_chain_link(
            (SELECT hash FROM chain ORDER BY seq DESC LIMIT 1), 'payments', json_object(
                'account_id', NEW.account_id, 'amount_minor', NEW.amount_minor, 'payment_id', NEW.payment_id,
                'received_at', NEW.received_at, 'result_json', NEW.result_json, 'source', NEW.source)));
    END;
    CREATE TRIGGER chain_events AFTER INSERT ON events BEGIN
        INSERT INTO chain(tbl, row_id, hash) VALUES ('events', NEW.rowid, pmg_chain_link(
            (SELECT hash FROM chain ORDER BY seq DESC LIMIT 1), 'events', json_object(
                'account_id', NEW.account_id, 'actor', NEW.actor, 'at', NEW.at, 'detail_json', NEW.detail_json,
                'id', NEW.id, 'kind', NEW.kind, 'meter_id', NEW.meter_id, 'severity', NEW.severity)));
    END;
    CREATE TRIGGER chain_relay_commands_i AFTER INSERT ON relay_commands BEGIN
        INSERT INTO chain(tbl, row_id, content, hash)
            SELECT 'relay_commands', NEW.rowid, c, pmg_chain_link((SELECT hash FROM chain ORDER BY seq DESC LIMIT 1), 'relay_commands', c)
            FROM (SELECT json_object(
                'action', NEW.action, 'actor', NEW.actor, 'attempts', NEW.attempts, 'created_at', NEW.created_at,
                'id', NEW.id, 'meter_id', NEW.meter_id, 'not_before', NEW.not_before, 'outcome', NEW.outcome,
                'payment_id', NEW.payment_id, 'reason', NEW.reason, 'status', NEW.status,
                'trace_json', NEW.trace_json, 'updated_at', NEW.updated_at) AS c);
    END;
    CREATE TRIGGER chain_relay_commands_u AFTER UPDATE ON relay_commands BEGIN
        INSERT INTO chain(tbl, row_id, content, hash)
            SELECT 'relay_commands', NEW.rowid, c, pmg_chain_link((SELECT hash FROM chain ORDER BY seq DESC LIMIT 1), 'relay_commands', c)
            FROM (SELECT json_object(
                'action', NEW.action, 'actor', NEW.actor, 'attempts', NEW.attempts, 'created_at', NEW.created_at,
                'id', NEW.id, 'meter_id', NEW.meter_id, 'not_before', NEW.not_before, 'outcome', NEW.outcome,
                'payment_id', NEW.payment_id, 'reason', NEW.reason, 'status', NEW.status,
                'trace_json', NEW.trace_json, 'updated_at', NEW.updated_at) AS c);
    END;
    """,
    # head-office contract (docs/mqtt.md, "Epochs"): every published message carries its epoch beside its
    # seq.  An epoch is a random id (uuid4 hex) that starts with the database; a restored backup starts a
    # new one (gateway.store.epochs).  A row's epoch is the one whose first_seq is the greatest not above
    # the row's seq, so the outbox needs no column (and no rewrite).  The first epoch covers every row
    # already there.  reports_published: which period reports were queued (exactly once each);
    # relay_command_origins: the signed command whose decision queued a relay command.
    """
    CREATE TABLE outbox_epochs (
        first_seq  INTEGER PRIMARY KEY,       -- the first outbox seq of this epoch
        epoch      TEXT NOT NULL UNIQUE,      -- 32 lowercase hex digits
        started_at TEXT NOT NULL,
        reason     TEXT NOT NULL              -- new_database | restored | other_database | ...
    );
    INSERT INTO outbox_epochs(first_seq, epoch, started_at, reason)
        SELECT 1, substr(h, 1, 12) || '4' || substr(h, 14, 3)
               || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(h, 18, 15),
               strftime('%Y-%m-%dT%H:%M:%SZ', 'now'), 'new_database'
        FROM (SELECT lower(hex(randomblob(16))) AS h);
    CREATE TABLE reports_published (
        period       TEXT NOT NULL,           -- day | week | dekad | month
        period_start TEXT NOT NULL,           -- local date, YYYY-MM-DD
        seq          INTEGER NOT NULL,        -- the outbox message that carries it
        queued_at    TEXT NOT NULL,
        PRIMARY KEY (period, period_start)
    );
    CREATE TABLE relay_command_origins (
        relay_command_id INTEGER PRIMARY KEY REFERENCES relay_commands(id),
        command_id       TEXT NOT NULL         -- the signed head-office command (e.g. a top-up)
    );
    """,
    # read_requests: "read this meter now" from another process (pmg meter read-now, the web console);
    # the running daemon, which owns the lines, serves them (gateway.store.read_requests).
    """
    CREATE TABLE read_requests (
        id           INTEGER PRIMARY KEY,
        meter_id     TEXT NOT NULL,            -- not a foreign key: an unknown meter is failed, not refused
        requested_at TEXT NOT NULL,
        requested_by TEXT NOT NULL,            -- cli:NAME, web:NAME (audited)
        status       TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'done', 'failed', 'expired')),
        finished_at  TEXT,
        reading_id   INTEGER,                  -- the reading taken (done; failed when the meter did not answer)
        result       TEXT                      -- the reading's outcome, or why not
    );
    CREATE INDEX read_requests_pending ON read_requests(id) WHERE status = 'pending';
    """,
)


class SchemaTooNew(OperationFailed, RuntimeError):
    """The database was written by a newer pmg; refusing to touch it."""


def migrate(conn: sqlite3.Connection, on_step: Callable[[int, int], None] | None = None) -> int:
    """Bring the schema to the latest version; return it.  Each step is one transaction.

    ``on_step(from, to)`` is called before each step: a step that rebuilds an index over months of
    entries takes minutes, and the daemon must say so (to the log, and to systemd, whose start
    timeout would otherwise kill it half-way — rolled back, and again on every restart)."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > len(MIGRATIONS):
        raise SchemaTooNew(
            f"database schema version {current} is newer than this pmg understands ({len(MIGRATIONS)})"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        if on_step is not None and current > 0:  # a new database has nothing to rebuild
            on_step(version - 1, version)
        script = MIGRATIONS[version - 1]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _split(script: str) -> list[str]:
    """Split a script into statements, keeping trigger bodies (which contain ';') whole."""
    statements: list[str] = []
    buf = ""
    for line in script.splitlines():
        if line.strip().startswith("--") and not buf:
            continue
        buf += line + "\n"
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip():
        statements.append(buf.strip())
    return statements
