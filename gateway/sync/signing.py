"""End-to-end authentication of head-office commands: Ed25519 over a canonical JSON form.

The broker's ACL says who may *publish* to a topic; it cannot say who *wrote* a top-up, and a
compromised broker or bridge could forge one.  So every command carries an Ed25519 signature
(``sig``, base64) by a head-office key (``key_id``) over its canonical form: the JSON object without
``sig``, keys sorted, separators ``,`` and ``:``, UTF-8, no insignificant whitespace.  The gateway
holds only public keys, several at once so keys can be rotated without a flag day.

Floats are refused in the canonical form: their text is not unique across JSON libraries, and money
in a command is a decimal string anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.core.keys import SigningError, parse_public_key, public_key_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

# cryptography is imported inside the functions that use it: the daemon imports this module for the
# Verifier, and a gateway that has not had a command to verify yet need not hold cryptography's
# compiled part in memory (about 6.5 MB; gateway.core.keys.public_key_bytes).


def canonical(command: Mapping[str, Any]) -> bytes:
    """The signed bytes: the command without ``sig``, sorted keys, compact, UTF-8."""
    body = {k: v for k, v in command.items() if k != "sig"}
    try:
        _refuse_floats(body, "")
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise SigningError("command is nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise SigningError(f"command is not plain JSON: {exc}") from None
    return text.encode("utf-8")


def _refuse_floats(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise SigningError(f"{where or 'command'}: numbers with a fraction are not allowed (use a string)")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _refuse_floats(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_floats(v, f"{where}[{i}]")


def digest(command: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical form: what the replay table compares."""
    return hashlib.sha256(canonical(command)).hexdigest()


def _raw_public_bytes(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PublicKey) -> str:
    return base64.b64encode(_raw_public_bytes(key)).decode("ascii")


def key_id_for(key: Ed25519PublicKey) -> str:
    """A stable short name for a public key (first 16 hex digits of sha256 of the raw key)."""
    return "hq-" + hashlib.sha256(_raw_public_bytes(key)).hexdigest()[:16]


def generate_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """PKCS#8 PEM, created with mode 0600 (never readable by others, not even for a moment)."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except ValueError as exc:
        raise SigningError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def sign_command(command: Mapping[str, Any], private_key: Ed25519PrivateKey, key_id: str) -> dict[str, Any]:
    """A copy of ``command`` with ``key_id`` set and ``sig`` added (for head offices and tests)."""
    body = {k: v for k, v in command.items() if k != "sig"}
    body["key_id"] = key_id
    sig = private_key.sign(canonical(body))
    return {**body, "sig": base64.b64encode(sig).decode("ascii")}


class Verifier:
    """The head-office public keys a gateway accepts (several, for rotation)."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        for key_id, b64 in keys.items():
            public_key_bytes(b64, key_id)  # a bad key is refused now, as before (without cryptography)
        self._texts = dict(keys)
        self._keys: dict[str, Ed25519PublicKey] = {}  # parsed on first use (cryptography imported then)

    def _key(self, key_id: str) -> Ed25519PublicKey | None:
        key = self._keys.get(key_id)
        if key is None and key_id in self._texts:
            try:
                key = self._keys[key_id] = parse_public_key(self._texts[key_id], key_id)
            except ValueError as exc:  # a library that checks the point at load: the command is refused
                raise SigningError(f"command key '{key_id}' is not usable: {exc}") from None
            except ImportError as exc:  # an installation without it: every command refused, saying why
                raise SigningError(f"cannot verify signatures: {exc}") from None
        return key

    def verify(self, command: Mapping[str, Any]) -> None:
        """Raise ``SigningError`` saying why unless ``sig`` is a valid signature by a known key."""
        key_id, sig = command.get("key_id"), command.get("sig")
        if sig is None:
            raise SigningError("unsigned: no 'sig'")
        if not isinstance(key_id, str) or not key_id:
            raise SigningError("no 'key_id'")
        if not isinstance(sig, str):
            raise SigningError("'sig' must be a base64 string")
        key = self._key(key_id)
        if key is None:
            raise SigningError(f"unknown key_id '{key_id[:64]}'")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise SigningError("'sig' is not base64") from None
        if len(raw) != 64:
            raise SigningError(f"'sig' is {len(raw)} bytes, an Ed25519 signature has 64")
        from cryptography.exceptions import InvalidSignature

        try:
            key.verify(raw, canonical(command))
        except InvalidSignature:
            raise SigningError(f"bad signature for key_id '{key_id}'") from None
