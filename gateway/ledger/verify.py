"""``pmg ledger verify``: the cached balances and meter positions must agree with the entries.

Checked: each account's balance and debt against the sums of its entries; each meter's posted
charges and energy against its charge entries and charged readings; the cumulative rounding rule
(posted = round_half_even(exact)) for meters and standing charges; each payment's entry, its split
(parts summing to the payment, the recovery entry matching it); the sign each entry kind must have;
that no debt is negative; each account's block-cycle counter against its charge lines; each meter's
billing position against its last charged reading (``gateway.ledger.position``); and the hash chain
over entries, payments, events and relay commands (``gateway.ledger.chain_check``), optionally against
a head the head office saw earlier.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from gateway.core.money import to_minor
from gateway.core.timeutil import parse_iso
from gateway.ledger.chain_check import ChainProblem, check_chain
from gateway.ledger.position import disagreement
from gateway.store.db import Store

# The sign each entry kind's balance movement must have (+1 credit, -1 debit, 0 none).
KIND_SIGNS: dict[str, tuple[int, ...]] = {
    "payment": (1,),
    "charge": (-1, 0),
    "standing_charge": (-1, 0),
    "debt_recovery": (-1,),
    "debt": (0,),
    "adjustment": (-1, 1),
    "emergency_credit": (0, 1),
    "emergency_repayment": (-1, 0),
}


@dataclass(frozen=True)
class Mismatch:
    what: str
    subject: str
    cached: int
    derived: int

    def __str__(self) -> str:
        return f"{self.what} {self.subject}: cached {self.cached}, derived from entries {self.derived}"


def verify(
    store: Store, minor_digits: int = 2, expect_head: tuple[str, int | None] | None = None
) -> list[Mismatch | ChainProblem]:
    """Every disagreement between caches and the append-only entries, and every break in the hash
    chain (empty list = consistent).  ``expect_head`` is a (hash, length or None) the head office holds
    (``chain_check.parse_head``)."""
    out: list[Mismatch | ChainProblem] = []
    for row in store.all(
        "SELECT a.id, a.balance_minor, COALESCE(SUM(e.amount_minor), 0) AS derived "
        "FROM accounts a LEFT JOIN entries e ON e.account_id = a.id GROUP BY a.id"
    ):
        if row["balance_minor"] != row["derived"]:
            out.append(Mismatch("balance of account", row["id"], row["balance_minor"], row["derived"]))
    for row in store.all(
        "SELECT m.id, m.charged_minor, COALESCE(-SUM(e.amount_minor), 0) AS derived "
        "FROM meters m LEFT JOIN entries e ON e.meter_id = m.id AND e.kind = 'charge' GROUP BY m.id"
    ):
        if row["charged_minor"] != row["derived"]:
            out.append(Mismatch("charges of meter", row["id"], row["charged_minor"], row["derived"]))
    for row in store.all(
        "SELECT m.id, COALESCE(SUM(r.delta_wh), 0) AS charged_wh, "
        "(SELECT COALESCE(SUM(e.energy_wh), 0) FROM entries e WHERE e.meter_id = m.id AND e.kind = 'charge') "
        "AS entry_wh FROM meters m LEFT JOIN readings r ON r.meter_id = m.id AND r.outcome = 'charged' "
        "GROUP BY m.id"
    ):
        if row["charged_wh"] != row["entry_wh"]:
            out.append(Mismatch("energy of meter", row["id"], row["charged_wh"], row["entry_wh"]))
    for row in store.all(
        "SELECT p.payment_id, p.amount_minor, COALESCE(SUM(e.amount_minor), 0) AS posted FROM payments p "
        "LEFT JOIN entries e ON e.kind = 'payment' AND e.external_id = p.payment_id GROUP BY p.payment_id"
    ):
        if row["amount_minor"] != row["posted"]:
            out.append(Mismatch("payment", row["payment_id"], row["amount_minor"], row["posted"]))
    out.extend(_credit_checks(store, minor_digits))
    out.extend(_position_checks(store))
    out.extend(check_chain(store, expect_head))
    return out


def _position_checks(store: Store) -> list[Mismatch]:
    """Each meter's billing position against the ledger's (what the next reading is charged from)."""
    out: list[Mismatch] = []
    for row in store.all("SELECT id, account_id, last_register_wh, last_reading_id FROM meters ORDER BY id"):
        ledger = disagreement(store.conn, row[0], row[1], row[2], row[3])
        if ledger is not None:
            out.append(Mismatch("billing position (register Wh) of meter", row[0], row[2], ledger.register_wh))
    return out


def _credit_checks(store: Store, minor_digits: int) -> list[Mismatch]:
    out: list[Mismatch] = []
    for row in store.all(
        "SELECT a.id, a.debt_minor, COALESCE(SUM(e.debt_minor), 0) AS derived, a.standing_exact, "
        "a.standing_minor, (SELECT COALESCE(-SUM(s.amount_minor), 0) FROM entries s WHERE s.account_id = a.id "
        "AND s.kind = 'standing_charge') AS standing FROM accounts a LEFT JOIN entries e ON e.account_id = a.id "
        "GROUP BY a.id"
    ):
        if row["debt_minor"] != row["derived"]:
            out.append(Mismatch("debt of account", row["id"], row["debt_minor"], row["derived"]))
        if row["derived"] < 0:
            out.append(Mismatch("negative debt of account", row["id"], row["debt_minor"], row["derived"]))
        if row["standing_minor"] != row["standing"]:
            out.append(
                Mismatch("standing charges of account", row["id"], row["standing_minor"], row["standing"])
            )
        rounded = to_minor(Decimal(row["standing_exact"]), minor_digits)
        if rounded != row["standing_minor"]:
            out.append(
                Mismatch("standing-charge rounding of account", row["id"], row["standing_minor"], rounded)
            )
    for row in store.all("SELECT id, cycle_start, cycle_used_wh FROM accounts WHERE cycle_start IS NOT NULL"):
        key = parse_iso(row["cycle_start"])
        derived = 0
        for (detail,) in store.all(
            "SELECT detail_json FROM entries WHERE account_id = ? AND kind = 'charge' AND period_end > ?",
            row["id"],
            row["cycle_start"],
        ):
            derived += sum(
                int(line["energy_wh"])
                for line in json.loads(detail).get("lines", [])
                if "start" in line and parse_iso(line["start"]) >= key
            )
        if derived != row["cycle_used_wh"]:
            out.append(Mismatch("block-cycle usage of account", row["id"], row["cycle_used_wh"], derived))
    for row in store.all("SELECT id, charged_exact, charged_minor FROM meters"):
        rounded = to_minor(Decimal(row["charged_exact"]), minor_digits)
        if rounded != row["charged_minor"]:
            out.append(Mismatch("charge rounding of meter", row["id"], row["charged_minor"], rounded))
    for row in store.all("SELECT id, kind, amount_minor, debt_minor FROM entries"):
        sign = (row["amount_minor"] > 0) - (row["amount_minor"] < 0)
        if sign not in KIND_SIGNS.get(row["kind"], ()):
            out.append(Mismatch(f"sign of {row['kind']} entry", str(row["id"]), row["amount_minor"], 0))
        if row["kind"] == "debt_recovery" and row["debt_minor"] != row["amount_minor"]:
            out.append(
                Mismatch("debt_recovery entry", str(row["id"]), row["debt_minor"], row["amount_minor"])
            )
        if row["kind"] not in ("debt", "debt_recovery") and row["debt_minor"] != 0:
            out.append(
                Mismatch(f"debt movement of {row['kind']} entry", str(row["id"]), row["debt_minor"], 0)
            )
    for row in store.all(
        "SELECT p.payment_id, p.amount_minor, p.result_json, "
        "(SELECT COALESCE(-SUM(e.amount_minor), 0) FROM entries e WHERE e.kind = 'debt_recovery' "
        "AND e.external_id = p.payment_id) AS recovered FROM payments p"
    ):
        result = json.loads(row["result_json"])
        parts = sum(
            int(result.get(k, 0))
            for k in (
                "emergency_repayment_minor",
                "arrears_repayment_minor",
                "debt_recovery_minor",
                "credit_minor",
            )
        )
        if "credit_minor" in result and parts != row["amount_minor"]:
            out.append(Mismatch("split of payment", row["payment_id"], parts, row["amount_minor"]))
        if int(result.get("debt_recovery_minor", 0)) != row["recovered"]:
            out.append(
                Mismatch(
                    "debt recovery of payment",
                    row["payment_id"],
                    int(result.get("debt_recovery_minor", 0)),
                    row["recovered"],
                )
            )
    return out
