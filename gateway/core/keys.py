"""Head-office public keys as the configuration writes them (base64 raw Ed25519, RFC 8032).

Here, below both, so the configuration can refuse a bad key at load time with the very parser the
command verifier (``gateway.sync.signing``) uses, without importing the sync layer.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from gateway.core.errors import UserError

if TYPE_CHECKING:  # cryptography is imported when a key is first used, not to check one (see below)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


class SigningError(UserError, ValueError):
    """A key or a signature that cannot be used; ``str()`` says which and why."""


def public_key_bytes(text: str, key_id: str = "?") -> bytes:
    """The 32 raw bytes of a base64 Ed25519 public key, as written in ``mqtt.command_keys``.

    Every 32-byte string is a public key to ``Ed25519PublicKey.from_public_bytes`` (RFC 8032 §5.1.3
    decodes a point only when a signature is checked), so this check refuses exactly what it would,
    without importing cryptography: its compiled part is about 6.5 MB of a running gateway's memory,
    spent only once a command has to be verified (``gateway.sync.signing.Verifier``)."""
    prefix = f"command key '{key_id}': " if key_id else ""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SigningError(f"{prefix}not base64") from None
    if len(raw) != 32:
        raise SigningError(f"{prefix}{len(raw)} bytes, an Ed25519 public key has 32")
    return raw


def parse_public_key(text: str, key_id: str = "?") -> Ed25519PublicKey:
    """A base64 raw 32-byte Ed25519 public key, as written in ``mqtt.command_keys``."""
    raw = public_key_bytes(text, key_id)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)
