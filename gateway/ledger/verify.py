"""``pmg ledger verify``: the cached balances and meter positions must agree with the entries."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.db import Store


@dataclass(frozen=True)
class Mismatch:
    what: str
    subject: str
    cached: int
    derived: int

    def __str__(self) -> str:
        return f"{self.what} {self.subject}: cached {self.cached}, derived from entries {self.derived}"


def verify(store: Store) -> list[Mismatch]:
    """Every disagreement between caches and the append-only entries (empty list = consistent)."""
    out: list[Mismatch] = []
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
    return out
