"""Who may use the console: accounts with a scrypt password hash or a token, sessions, CSRF tokens,
and a login rate limit.

The users file is plain text, one account a line: ``NAME ROLE SECRET`` where ROLE is ``operator``
(may act) or ``readonly``, and SECRET is ``scrypt$N$r$p$SALT$HASH`` for a password or
``sha256$HASH`` for a token (a token is 32 random bytes: a fast hash suffices; a password is not, so
it gets scrypt, RFC 7914).  ``pmg web passwd`` and ``pmg web token`` write it.  Sessions live in the
process's memory: a restart logs everyone out, which is what a console on a concentrator wants.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.errors import UserError

ROLES = ("operator", "readonly")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB, ~50 ms here: slow for a guesser, fine for a login
MIN_PASSWORD = 10


class UsersFileError(UserError, ValueError):
    """The users file is unreadable or malformed (the console refuses to start)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    secret: str

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def hash_token(token: str) -> str:
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def check_secret(secret: str, offered: str) -> bool:
    """Whether ``offered`` (a password or a token) matches the stored ``secret``; constant time."""
    kind, _, rest = secret.partition("$")
    if kind == "sha256":
        return hmac.compare_digest(hash_token(offered), secret)
    if kind != "scrypt":
        return False
    try:
        n, r, p, salt, digest = rest.split("$")
        got = hashlib.scrypt(
            offered.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def load_users(path: Path) -> dict[str, User]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsersFileError(f"web users file {path}: {exc.strerror or exc}") from None
    users: dict[str, User] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or not NAME.match(parts[0]) or parts[1] not in ROLES or "$" not in parts[2]:
            raise UsersFileError(f"{path}:{n}: expected 'NAME operator|readonly SECRET' (see pmg web passwd)")
        users[parts[0]] = User(parts[0], parts[1], parts[2])
    return users


def save_user(path: Path, user: User) -> bool:
    """Add or replace ``user`` in the file (written whole, then renamed; mode 0600).  True if new."""
    users = load_users(path) if path.exists() else {}
    new = user.name not in users
    users[user.name] = user
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("# pmg web accounts: NAME ROLE SECRET (written by pmg web passwd / token)\n")
        for u in users.values():
            out.write(f"{u.name} {u.role} {u.secret}\n")
    os.replace(tmp, path)
    return new


@dataclass
class Session:
    id: str
    csrf: str
    expires: float
    user: User | None = None
    flash: dict[str, object] | None = None  # an action's outcome, shown once on the next page


@dataclass
class Sessions:
    """Session ids (random, 256 bits) to sessions; anonymous ones carry the login form's CSRF token."""

    lifetime_s: float
    clock: Callable[[], float] = time.monotonic
    max_sessions: int = 10_000
    _by_id: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _now(self) -> float:
        return self.clock()

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            s = self._by_id.get(sid)
            if s is not None and s.expires <= self._now():
                del self._by_id[sid]
                return None
            return s

    def new(self, user: User | None = None) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), self._now() + self.lifetime_s, user)
        with self._lock:
            if len(self._by_id) >= self.max_sessions:  # anonymous floods evict the oldest first
                oldest = min(self._by_id.values(), key=lambda x: (x.user is not None, x.expires))
                del self._by_id[oldest.id]
            self._by_id[s.id] = s
        return s

    def drop(self, sid: str) -> None:
        with self._lock:
            self._by_id.pop(sid, None)


@dataclass
class LoginLimiter:
    """At most ``attempts`` failed logins per ``window_s`` per client address and per account name."""

    attempts: int = 5
    window_s: float = 300.0
    clock: Callable[[], float] = time.monotonic
    _fails: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> bool:
        now = self.clock()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.attempts for k in keys)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)
            if len(self._fails) > 100_000:
                self._fails.clear()

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)
