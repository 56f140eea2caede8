"""The head office's PostgreSQL ingest (``pmg hq ingest``; docs/scaling.md).

Workers share an MQTT 5 subscription (``$share/<group>/…``), validate what gateways publish
(:mod:`hq.ingest.schema`), write it in one transaction per batch (:mod:`hq.ingest.store`) and only then
acknowledge it to the broker (:mod:`hq.ingest.worker`).  Gaps are tracked and repaired with signed
``resend`` commands (:mod:`hq.ingest.gaps`); the replicated ledger is checked against the gateways' own
figures (:mod:`hq.ingest.reconcile`).  The database layout is versioned (:mod:`hq.ingest.migrations`).
"""
