"""The gateway's vocabulary: errors, money, time, the calendar and safe text — no I/O, no imports
from the rest of ``gateway`` (the bottom layer; see docs/architecture.md)."""
