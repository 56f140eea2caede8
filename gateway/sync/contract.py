"""The published JSON Schemas (``gateway/contract/*.json``) and which topic each one governs.

The head office can validate what arrives with the same files the gateway's tests validate against;
``docs/asyncapi.yaml`` refers to them.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

CONTRACT_DIR = Path(__file__).resolve().parent.parent / "contract"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """One schema by name (``usage``, ``state``, ``event``, ``ack``, ``status``, ``report``, ``command``)."""
    data: dict[str, Any] = json.loads((CONTRACT_DIR / f"{name}.json").read_text())
    return data


def schema_name_for(topic: str) -> str | None:
    """The schema of a topic relative to ``<prefix>/<gateway_id>/`` (None for an unknown topic)."""
    parts = topic.split("/")
    if parts[0] == "meters" and len(parts) == 3 and parts[2] in ("usage", "state"):
        return parts[2]
    if parts[0] == "commands" and len(parts) == 2:
        return "command"
    return {"status": "status", "events": "event", "acks": "ack", "reports": "report"}.get(topic)
