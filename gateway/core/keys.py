"""Head-office public keys as the configuration writes them (base64 raw Ed25519, RFC 8032).

Here, below both, so the configuration can refuse a bad key at load time with the very parser the
command verifier (``gateway.sync.signing``) uses, without importing the sync layer.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core.errors import UserError


class SigningError(UserError, ValueError):
    """A key or a signature that cannot be used; ``str()`` says which and why."""


def parse_public_key(text: str, key_id: str = "?") -> Ed25519PublicKey:
    """A base64 raw 32-byte Ed25519 public key, as written in ``mqtt.command_keys``."""
    prefix = f"command key '{key_id}': " if key_id else ""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(f"{prefix}not base64") from None
    if len(raw) != 32:
        raise SigningError(f"{prefix}{len(raw)} bytes, an Ed25519 public key has 32")
    return Ed25519PublicKey.from_public_bytes(raw)
