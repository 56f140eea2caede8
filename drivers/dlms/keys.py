"""How the gateway authenticates to a DLMS meter, and the meter's secrets from a key file.

Three association levels (IEC 62056-5-3, "Authentication mechanisms"): the public client (no
security), low-level security (a password sent in the association request) and high-level security
HLS-GMAC with security suite 0 (AES-128-GCM: APDUs authenticated and encrypted with the meter's global
unicast encryption key and authentication key; the client proves itself by a GMAC of the meter's
challenge).  Secrets never sit in the configuration: they are read from a key file (TOML, readable by
the gateway's user only), and no ``repr`` or error message here ever contains one.
"""

from __future__ import annotations

import binascii
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Auth = Literal["none", "low", "hls-gmac"]
AUTHS: tuple[Auth, ...] = ("none", "low", "hls-gmac")
KEY_BYTES = 16  # security suite 0: AES-128
SYSTEM_TITLE_BYTES = 8
PUBLIC_CLIENT = 16


class KeyFileError(ValueError):
    """The key file is missing or wrong; ``str()`` is one line that names the file and the key, never a value."""


@dataclass(frozen=True)
class DlmsSecurity:
    """The client side of an association with one meter."""

    auth: Auth = "none"
    client: int = PUBLIC_CLIENT
    password: bytes | None = field(default=None, repr=False)
    encryption_key: bytes | None = field(default=None, repr=False)
    authentication_key: bytes | None = field(default=None, repr=False)
    system_title: bytes = b"PMG00001"
    counter: Callable[[], int] | None = field(default=None, repr=False, compare=False)
    """HLS-GMAC: hands each association attempt its first invocation counter (``drivers.dlms.counter``)."""

    def first_invocation_counter(self) -> int:
        """The invocation counter the next association starts at (0 without a counter: a meter that
        remembers its counter then refuses every association after the first)."""
        return self.counter() if self.counter is not None and self.auth == "hls-gmac" else 0

    def __post_init__(self) -> None:
        if self.auth not in AUTHS:
            raise ValueError(f"auth must be one of {', '.join(AUTHS)} (got {self.auth!r})")
        if not 1 <= self.client <= 127:
            raise ValueError(f"client address must be 1–127 (got {self.client})")
        if self.auth == "low" and not self.password:
            raise ValueError("low-level security needs a password")
        if self.auth == "hls-gmac":
            for name in ("encryption_key", "authentication_key"):
                key = getattr(self, name)
                if key is None or len(key) != KEY_BYTES:
                    raise ValueError(f"HLS-GMAC needs a {KEY_BYTES}-byte {name}")
        if len(self.system_title) != SYSTEM_TITLE_BYTES:
            raise ValueError(f"system title must be {SYSTEM_TITLE_BYTES} bytes")

    def __repr__(self) -> str:
        return f"DlmsSecurity(auth={self.auth!r}, client={self.client})"


def _hex_key(path: Path, data: dict[str, object], name: str, size: int) -> bytes:
    raw = data.get(name)
    if not isinstance(raw, str):
        raise KeyFileError(f"{path}: {name}: missing (a string of {2 * size} hex digits)")
    try:
        key = binascii.unhexlify(raw.strip())
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{path}: {name}: not hexadecimal") from None
    if len(key) != size:
        raise KeyFileError(f"{path}: {name}: {len(key)} bytes, expected {size} ({2 * size} hex digits)")
    return key


def load_security(auth: Auth, client: int, key_file: str | Path | None) -> DlmsSecurity:
    """The security for ``auth``, its secrets read from ``key_file``: ``password`` (low), or
    ``encryption_key``, ``authentication_key`` (32 hex digits each) and optionally ``system_title``
    (16 hex digits, the gateway's) for HLS-GMAC.  Raises ``KeyFileError`` (one line) when it is wrong."""
    if auth == "none":
        return DlmsSecurity("none", client)
    if key_file is None:
        raise KeyFileError(f"auth = {auth!r} needs a key_file")
    path = Path(key_file)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read the key file ({type(exc).__name__})") from None
    except tomllib.TOMLDecodeError:
        raise KeyFileError(f"{path}: not valid TOML") from None
    known = {"password", "encryption_key", "authentication_key", "system_title"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyFileError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if auth == "low":
        password = data.get("password")
        if not isinstance(password, str) or not password:
            raise KeyFileError(f"{path}: password: missing (low-level security)")
        return DlmsSecurity("low", client, password=password.encode("utf-8"))
    title = (
        _hex_key(path, data, "system_title", SYSTEM_TITLE_BYTES)
        if "system_title" in data
        else DlmsSecurity.system_title
    )
    return DlmsSecurity(
        "hls-gmac",
        client,
        encryption_key=_hex_key(path, data, "encryption_key", KEY_BYTES),
        authentication_key=_hex_key(path, data, "authentication_key", KEY_BYTES),
        system_title=title,
    )
