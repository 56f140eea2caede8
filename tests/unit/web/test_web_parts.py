"""The console's pieces in-process: password and token checks, the users file, sessions, the login
limit, the enforcement word and the exact kWh text (docs/web.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.web import auth, fmt
from gateway.web.views import enforcement


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_password_matches_only_itself_and_the_hash_is_salted() -> None:
    h = auth.hash_password("correct-horse")
    assert h.startswith("scrypt$") and auth.check_secret(h, "correct-horse")
    assert not auth.check_secret(h, "correct-horsE")
    assert auth.hash_password("correct-horse") != h
    t = auth.new_token()
    assert auth.check_secret(auth.hash_token(t), t) and not auth.check_secret(auth.hash_token(t), t + "x")
    assert not auth.check_secret("md5$abc", "abc") and not auth.check_secret("scrypt$bad", "x")


def test_the_users_file_round_trips_and_refuses_a_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    assert auth.save_user(path, auth.User("olga", "operator", auth.hash_token("t1")))
    assert not auth.save_user(path, auth.User("olga", "readonly", auth.hash_token("t2")))
    users = auth.load_users(path)
    assert list(users) == ["olga"] and users["olga"].role == "readonly" and not users["olga"].may_act
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text(path.read_text() + "eve admin sha256$x\n")
    with pytest.raises(auth.UsersFileError, match=r"users:3:"):
        auth.load_users(path)


def test_sessions_expire_and_a_flood_of_anonymous_ones_evicts_anonymous_first() -> None:
    clock = Clock()
    sessions = auth.Sessions(60, clock=clock, max_sessions=3)
    user = sessions.new(auth.User("olga", "operator", "sha256$x"))
    first = sessions.new()
    assert sessions.get(user.id) is user and sessions.get("nope") is None
    sessions.new()
    sessions.new()  # the fourth: the oldest anonymous one goes, not the logged-in one
    assert sessions.get(first.id) is None and sessions.get(user.id) is user
    clock.t += 61
    assert sessions.get(user.id) is None


def test_logins_are_limited_per_address_and_per_name_within_the_window() -> None:
    clock = Clock()
    limit = auth.LoginLimiter(attempts=3, window_s=60, clock=clock)
    for _ in range(3):
        assert not limit.blocked("ip:a", "user:olga")
        limit.failed("ip:a", "user:olga")
    assert limit.blocked("ip:b", "user:olga") and limit.blocked("ip:a", "user:rita")
    clock.t += 61
    assert not limit.blocked("ip:a", "user:olga")


@pytest.mark.parametrize(
    ("state", "protected", "keep", "kept", "word"),
    [
        ("normal", False, False, False, ("normal", None)),
        ("warning_2", False, False, False, ("warning", 2)),
        ("notice_served", False, False, False, ("notice served", None)),
        ("load_limited", False, False, False, ("limited", None)),
        ("disconnected", False, False, False, ("cut", None)),
        ("normal", True, False, False, ("protected", None)),
        ("disconnected", False, True, False, ("keep-power", None)),
        ("warning_3", False, False, True, ("keep-power", None)),
    ],
)
def test_the_enforcement_word(state: str, protected: bool, keep: bool, kept: bool, word: tuple[str, int | None]) -> None:
    assert enforcement(state, protected, keep, kept) == word


def test_energy_is_shown_exactly_in_kwh() -> None:
    assert [fmt.kwh(w) for w in (0, 4, 5, 1234, 999_995, -1500)] == ["0.00", "0.00", "0.01", "1.23", "1000.00", "-1.50"]
    assert fmt.kwh(None) == ""
