"""The memory of successful logins (relay/authcache.py), through a real client: smtplib over
STARTTLS, one connection per login, as PHPMailer and msmtp do it."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from clients import Dialog, implicit, starttls
from conftest import PASSWORD, USER, InProcess, Process, Setup, events, wait_until
from reloadkit import reload

from relay import metrics, users
from relay.authcache import SuccessCache

NEW_PASSWORD = "a new staple for the horse"  # test credential


def cache_checks(result: str) -> float:
    value = metrics.REGISTRY.get_sample_value("ses_relay_auth_cache_total", {"result": result})
    return value or 0.0


@pytest.fixture
def own_users(setup: Setup, tmp_path: Path) -> Path:
    """A users file of this test's own, to rewrite (the shared one is session-wide)."""
    path = tmp_path / "users.yaml"
    users.save(path, users.UserDB({}).with_user(users.User(USER, users.hash_password(PASSWORD))))
    setup.doc["users_file"] = str(path)
    setup.write()
    return path


def log_in(setup: Setup, password: str = PASSWORD) -> None:
    """One connection, one AUTH PLAIN (smtplib's login() would try LOGIN after it too)."""
    with starttls(setup.starttls_port, setup.certs.ca) as s:
        s.user, s.password = USER, password
        assert s.auth("PLAIN", s.auth_plain)[0] == 235


def refused(setup: Setup, password: str) -> None:
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        log_in(setup, password)
    assert err.value.smtp_code == 535


def auth_ok(logs: list[dict[str, Any]]) -> list[bool]:
    return [e["cached"] for e in events(logs, "auth_ok")]


def test_a_second_login_with_the_right_password_is_answered_from_memory(
        setup: Setup, start_relay: Callable[[Setup], InProcess],
        logs: list[dict[str, Any]]) -> None:
    start_relay(setup)
    hits, misses = cache_checks("hit"), cache_checks("miss")
    log_in(setup)
    log_in(setup)
    assert auth_ok(logs) == [False, True]
    assert (cache_checks("hit") - hits, cache_checks("miss") - misses) == (1, 1)


def test_a_wrong_password_after_a_remembered_success_is_still_refused(
        setup: Setup, start_relay: Callable[[Setup], InProcess],
        logs: list[dict[str, Any]]) -> None:
    start_relay(setup)
    log_in(setup)
    misses = cache_checks("miss")
    refused(setup, PASSWORD + "x")
    assert cache_checks("miss") - misses == 1  # checked in full
    log_in(setup)
    assert auth_ok(logs) == [False, True]


def test_failures_are_never_remembered(
        setup: Setup, start_relay: Callable[[Setup], InProcess],
        logs: list[dict[str, Any]]) -> None:
    start_relay(setup)
    hits, misses = cache_checks("hit"), cache_checks("miss")
    for _ in range(2):
        refused(setup, "wrong")
    assert (cache_checks("hit") - hits, cache_checks("miss") - misses) == (0, 2)
    log_in(setup)  # the first success is checked in full too
    assert auth_ok(logs) == [False]


def test_a_changed_users_file_forgets_what_was_remembered(
        setup: Setup, own_users: Path, start_relay: Callable[[Setup], InProcess],
        logs: list[dict[str, Any]]) -> None:
    relay = start_relay(setup)
    log_in(setup)
    log_in(setup)
    assert auth_ok(logs) == [False, True]
    # `ses-relay user add` with a new password, then SIGHUP (what app.py runs on it).
    users.save(own_users, users.load(own_users).with_user(
        users.User(USER, users.hash_password(NEW_PASSWORD))))
    assert relay.call(relay.relay.reload()) is True
    # (The reload reconfigures logging, out of the logs fixture's reach: count instead.)
    hits, misses = cache_checks("hit"), cache_checks("miss")
    refused(setup, PASSWORD)
    log_in(setup, NEW_PASSWORD)
    log_in(setup, NEW_PASSWORD)
    assert (cache_checks("hit") - hits, cache_checks("miss") - misses) == (1, 2)


def test_a_reload_forgets_even_an_unchanged_password(
        setup: Setup, own_users: Path, start_relay: Callable[[Setup], InProcess]) -> None:
    relay = start_relay(setup)
    log_in(setup)
    log_in(setup)
    assert relay.call(relay.relay.reload()) is True
    hits, misses = cache_checks("hit"), cache_checks("miss")
    log_in(setup)
    log_in(setup)
    assert (cache_checks("hit") - hits, cache_checks("miss") - misses) == (1, 1)
    # The user removed from the file: the remembered success must not let it in.
    users.save(own_users, users.load(own_users).without(USER))
    assert relay.call(relay.relay.reload()) is True
    refused(setup, PASSWORD)


def test_a_success_on_one_listener_is_remembered_on_the_others(
        setup: Setup, start_relay: Callable[[Setup], InProcess],
        logs: list[dict[str, Any]]) -> None:
    start_relay(setup)
    log_in(setup)
    with implicit(setup.implicit_port, setup.certs.ca) as s:
        s.user, s.password = USER, PASSWORD
        assert s.auth("LOGIN", s.auth_login)[0] == 235
    assert auth_ok(logs) == [False, True]


# --- the cache's own bounds (no network needed to see them) ------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_remembered_success_expires_after_its_ttl() -> None:
    clock, db = Clock(), object()
    cache = SuccessCache(ttl=60, clock=clock)
    cache.remember(db, USER, "hash", b"pw")
    clock.now = 59
    assert cache.verified(db, USER, "hash", b"pw")
    clock.now = 61  # a hit does not extend it: the TTL runs from the check by scrypt
    assert not cache.verified(db, USER, "hash", b"pw")
    assert len(cache) == 0


def test_the_cache_keeps_the_most_recently_used_entries_up_to_its_size() -> None:
    db = object()
    cache = SuccessCache(size=3)
    for n in range(3):
        cache.remember(db, f"user{n}", "hash", b"pw")
    assert cache.verified(db, "user0", "hash", b"pw")  # now the most recent
    cache.remember(db, "user3", "hash", b"pw")
    assert len(cache) == 3
    assert not cache.verified(db, "user1", "hash", b"pw")
    assert all(cache.verified(db, f"user{n}", "hash", b"pw") for n in (0, 2, 3))


def test_a_success_matches_only_its_own_name_hash_and_password() -> None:
    db = object()
    cache = SuccessCache()
    cache.remember(db, "ab", "c", b"pw")
    assert not cache.verified(db, "a", "bc", b"pw")
    assert not cache.verified(db, "ab", "c", b"pw2")
    assert not cache.verified(db, "ab", "c2", b"pw")
    assert cache.verified(db, "ab", "c", b"pw")
    assert not cache.verified(object(), "ab", "c", b"pw")  # another users snapshot
    assert len(cache) == 0


def test_a_check_against_a_replaced_snapshot_is_not_remembered() -> None:
    old, new = object(), object()
    cache = SuccessCache()
    cache.remember(old, USER, "hash", b"pw")
    assert not cache.verified(new, USER, "hash", b"pw")
    cache.remember(old, USER, "hash", b"pw")  # finished after the reload
    assert not cache.verified(new, USER, "hash", b"pw")


def test_sighup_to_the_relay_process_forgets_what_was_remembered(
        setup: Setup, own_users: Path, start_process: Callable[[Setup], Process]) -> None:
    relay = start_process(setup)

    def cached() -> list[bool]:
        return [e["cached"] for e in relay.events() if e.get("event") == "auth_ok"]

    log_in(setup)
    log_in(setup)
    wait_until(lambda: len(cached()) == 2)
    users.save(own_users, users.load(own_users).with_user(
        users.User(USER, users.hash_password(NEW_PASSWORD))))
    reload(relay, "reloaded")
    refused(setup, PASSWORD)
    log_in(setup, NEW_PASSWORD)
    log_in(setup, NEW_PASSWORD)
    wait_until(lambda: len(cached()) == 4)
    assert cached() == [False, True, False, True]


def test_a_burst_of_first_logins_checks_the_password_once_and_lets_every_one_in(
        setup: Setup, start_relay: Callable[[Setup], InProcess]) -> None:
    setup.doc["limits"] = {"max_auth_failures": 1}  # one check at a time per user and address
    setup.write()
    start_relay(setup)
    hits, misses = cache_checks("hit"), cache_checks("miss")
    sessions = []
    try:
        for _ in range(20):
            d = Dialog(setup.starttls_port, setup.certs.ca)
            sessions.append(d)
            d.cmd("EHLO client.test")
            d.starttls()
            d.cmd("EHLO client.test")
        creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        for d in sessions:
            d.send(f"AUTH PLAIN {creds}\r\n".encode())
        answers = [d.reply()[:3] for d in sessions]
    finally:
        for d in sessions:
            d.close()
    assert answers == [b"235"] * 20
    assert (cache_checks("hit") - hits, cache_checks("miss") - misses) == (19, 1)
