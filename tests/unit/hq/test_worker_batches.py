"""A worker's batch loop without a broker: what the database refuses is quarantined, the rest stored."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from test_ingest_store import usage

from hq.ingest.worker import IngestConfig, IngestWorker, _Delivery

pytestmark = pytest.mark.postgres


def test_a_row_the_database_refuses_is_quarantined_and_the_batch_goes_on(pg_dsn: str) -> None:
    worker = IngestWorker(IngestConfig(dsn=pg_dsn, host="unused"))
    worker._open_database()
    try:
        nul = json.loads(usage("gw", 2))
        nul["account_id"] = "a\u0000b"  # passes the checks; PostgreSQL text cannot hold NUL
        batch = [
            _Delivery(1, 1, "pmg/gw/meters/m1/usage", usage("gw", 1), False),
            _Delivery(2, 1, "pmg/gw/meters/m1/usage", json.dumps(nul).encode(), False),
            _Delivery(3, 1, "pmg/gw/meters/m1/usage", usage("gw", 3), False),
            _Delivery(4, 1, "pmg/gw/meters/m1/usage", b"not json", False),
        ]
        worker.process(batch)
        worker.process(batch)  # delivered again: nothing doubles
    finally:
        worker.stop()
    with psycopg.connect(pg_dsn) as conn:
        seqs: Any = [r[0] for r in conn.execute("SELECT seq FROM usage ORDER BY seq")]
        reasons = [r[0] for r in conn.execute("SELECT reason FROM quarantine ORDER BY id")]
    assert seqs == [1, 3]
    assert reasons[0] == "not JSON" and reasons[1].startswith("database refused:"), reasons
    assert worker.stats.stored == 2 and worker.stats.received == 8
