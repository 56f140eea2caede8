"""Settings the database is created with and must keep: the currency and its minor digits.

Every amount in the ledger is an integer of minor units (docs/ledger.md).  Read with other
``minor_digits`` the same integers mean other money — 4976 fen shown as "4976 CNY" — and ``verify``
re-rounds every cumulative charge wrongly; read under another currency code they are another
money altogether.  So both are written to the ``meta`` table when the database is first opened by
the gateway, and a configuration that disagrees is refused at start with one line, before anything
is read or written under the wrong unit.
"""

from __future__ import annotations

from gateway.store.db import Store, StoreError

META_CURRENCY = "money.currency"
META_MINOR_DIGITS = "money.minor_digits"


class PinnedSettingMismatch(StoreError):
    """The configuration's currency or minor digits differ from the ones the database was made with."""


def check_money_pins(store: Store, currency: str, minor_digits: int, *, write: bool = True) -> None:
    """Refuse a configuration whose money unit differs from the database's; pin it on first use.

    ``write=False`` (a read-only store, ``run --check``) only compares what is already pinned.
    """
    pinned = {key: store.meta_get(key) for key in (META_CURRENCY, META_MINOR_DIGITS)}
    wanted = {META_CURRENCY: currency, META_MINOR_DIGITS: str(minor_digits)}
    for key, config_name in ((META_CURRENCY, "currency"), (META_MINOR_DIGITS, "minor_digits")):
        have = pinned[key]
        if have is not None and have != wanted[key]:
            raise PinnedSettingMismatch(
                f"configuration {config_name} = {wanted[key]!r} but the database was created with "
                f"{config_name} = {have!r}; amounts are stored in its minor units and cannot be re-read "
                "under another (restore the setting, or start a new database)"
            )
    missing = [key for key, value in pinned.items() if value is None]
    if write and missing:
        with store.tx():
            for key in missing:
                store.meta_set(key, wanted[key])
