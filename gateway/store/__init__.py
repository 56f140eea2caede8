"""SQLite persistence: one file per gateway, WAL, ``synchronous=FULL`` because it holds money."""

from gateway.store.db import Store, open_store

__all__ = ["Store", "open_store"]
