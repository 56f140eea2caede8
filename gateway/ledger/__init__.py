"""The exact, append-only prepaid ledger: accounts, payments, charges, verification."""
