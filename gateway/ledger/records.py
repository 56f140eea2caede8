"""Building the per-reading path's records cheaply.

The records of the per-reading path are NamedTuples, not frozen dataclasses: as immutable, and a
frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, which made building the
half-dozen records of a reading about a tenth of its instructions (bench/instructions.py).  The hottest
are built with ``new_record(Cls, (fields...))``: ``tuple.__new__`` gives the same record without the
Python-level ``__new__`` a NamedTuple class runs for every instance (less than half the cost).  The
fields go in order and in full: nothing checks their number, so it is for the few records built on
every reading, each call naming all its fields.
"""

from __future__ import annotations

new_record = tuple.__new__
