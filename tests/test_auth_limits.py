"""AUTH lockout over real sockets: parallel guessing from one address gets no extra guesses,
and guessing from other addresses never locks out the right password from a clean one.

Linux routes all of 127.0.0.0/8 to lo, so a client socket bound to 127.0.0.2 is another
client address for the relay listening on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from clients import Dialog, tls_context
from conftest import PASSWORD, USER, InProcess, Setup, events

from relay.limits import AuthGuard

WRONG = "not the password"  # test credential


def plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def login(setup: Setup, password: str, source: str = "127.0.0.1", user: str = USER) -> int:
    """One connection from *source*: STARTTLS, AUTH PLAIN; the reply code (421 included)."""
    try:
        s = smtplib.SMTP("127.0.0.1", setup.starttls_port, local_hostname="client.test",
                         timeout=30, source_address=(source, 0))
    except smtplib.SMTPConnectError as e:
        return e.smtp_code  # refused at connect
    with s:
        s.starttls(context=tls_context(setup.certs.ca))
        s.ehlo("client.test")
        return s.docmd("AUTH", plain(user, password)[len("AUTH "):])[0]


def relay_with(setup: Setup, start_relay: Callable[[Setup], InProcess],
               max_auth_failures: int) -> InProcess:
    setup.doc["limits"] = {"max_auth_failures": max_auth_failures}
    setup.write()
    return start_relay(setup)


def session(setup: Setup) -> Dialog:
    d = Dialog(setup.starttls_port, setup.certs.ca)
    d.cmd("EHLO client.test")
    d.starttls()
    d.cmd("EHLO client.test")
    return d


def test_parallel_guesses_after_all_but_one_failure_get_one_guess_not_thirty(
        setup: Setup, start_relay: Callable[[Setup], InProcess],
        logs: list[dict[str, Any]]) -> None:
    relay_with(setup, start_relay, max_auth_failures=3)
    for _ in range(2):  # max - 1 failures
        assert login(setup, WRONG) == 535
    sessions = [session(setup) for _ in range(30)]
    try:
        # Every guess is on the wire before any is answered; the right one is sent last.
        for d in sessions[:-1]:
            d.send(plain(USER, WRONG).encode() + b"\r\n")
        sessions[-1].send(plain(USER, PASSWORD).encode() + b"\r\n")
        answers = [d.reply()[:3] for d in sessions]
    finally:
        for d in sessions:
            d.close()
    assert b"235" not in answers
    assert set(answers) <= {b"421", b"535"}
    # One password check was left: only one more failure was let through.
    assert len(events(logs, "auth_failed")) == 3
    assert events(logs, "auth_ok") == []
    assert login(setup, PASSWORD) == 421  # and now the client is locked out


def test_guessing_from_other_addresses_does_not_lock_out_a_clean_client(
        setup: Setup, start_relay: Callable[[Setup], InProcess]) -> None:
    relay_with(setup, start_relay, max_auth_failures=2)
    attackers = [f"127.0.0.{n}" for n in range(2, 7)]

    def guess(source: str) -> list[int]:
        return [login(setup, WRONG, source) for _ in range(3)]

    with ThreadPoolExecutor(len(attackers)) as pool:
        results = list(pool.map(guess, attackers))
    # Each guessing address is penalised: the failure that reaches the limit says so.
    assert results == [[535, 421, 421]] * len(attackers)
    assert login(setup, PASSWORD, attackers[0]) == 421
    # Ten failures at the user name from elsewhere: its own clean address gets in.
    assert login(setup, PASSWORD, "127.0.0.1") == 235


@pytest.mark.parametrize("spray", [False, True])
def test_an_address_is_locked_per_user_name_and_for_every_name_when_it_sprays(
        setup: Setup, start_relay: Callable[[Setup], InProcess], spray: bool) -> None:
    """A name failing max_auth_failures times from one address is locked there; failures
    over all names (four times as many) lock the address itself, at connect."""
    relay_with(setup, start_relay, max_auth_failures=1)
    source = "127.0.0.9"
    for n in range(4 if spray else 1):
        assert login(setup, WRONG, source, user=f"user{n}") == 421  # the last failure
    assert login(setup, WRONG, source, user="user0") == 421
    if spray:
        assert login(setup, PASSWORD, source) == 421  # at connect: the address is locked
    else:
        assert login(setup, PASSWORD, source) == 235  # another name from the same address


# --- the guard's bookkeeping (addresses no loopback socket can have) --------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fail(guard: AuthGuard, ip: str, user: str) -> None:
    attempt = asyncio.run(guard.attempt(ip, user))
    assert attempt is not None
    attempt.fail()


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_one_its_ipv4_address() -> None:
    guard = AuthGuard(max_failures=2, window=60)
    fail(guard, "2001:db8:1:2::1", USER)
    fail(guard, "2001:db8:1:2:ffff::9", USER)
    assert guard.locked("2001:db8:1:2::77", USER)
    assert not guard.locked("2001:db8:1:3::1", USER)
    fail(guard, "::ffff:192.0.2.7", USER)
    fail(guard, "192.0.2.7", USER)
    assert guard.locked("192.0.2.7", USER)
    assert not guard.locked("::ffff:192.0.2.8", USER)


def test_failures_age_out_and_made_up_names_are_forgotten() -> None:
    clock = Clock()
    guard = AuthGuard(max_failures=1, window=60, clock=clock)
    for n in range(3000):
        fail(guard, f"198.51.{n // 250}.{n % 250}", f"made-up-{n}")
        clock.now += 0.05  # 150 s in all: the first ones are older than the window
    # Three keys a failure (address, name at address, name); 1,200 failures in the window:
    # what is kept stays within twice what is live, not all 9,000.
    assert len(guard._failures) <= 2 * 3 * 1200
    clock.now += 61
    assert not guard.locked("198.51.11.249", "made-up-2999")


def test_a_check_beyond_the_attempts_left_waits_for_those_in_progress() -> None:
    async def scenario() -> list[object]:
        guard = AuthGuard(max_failures=2, window=60)
        first = await guard.attempt("192.0.2.1", USER)
        second = await guard.attempt("192.0.2.1", USER)
        assert first is not None and second is not None
        third = asyncio.ensure_future(guard.attempt("192.0.2.1", USER))
        fourth = asyncio.ensure_future(guard.attempt("192.0.2.1", USER))
        await asyncio.sleep(0)
        seen: list[object] = [third.done(), fourth.done()]  # both wait: two in progress
        first.release()  # a success gives its slot back: one waiting check gets it
        await asyncio.sleep(0)
        seen.append(sum(t.done() for t in (third, fourth)))
        second.fail()
        winner = next(t.result() for t in (third, fourth) if t.done())
        assert winner is not None
        winner.fail()  # the second failure: the check still waiting is refused
        await asyncio.sleep(0)
        seen.append([t.result() for t in (third, fourth)].count(None))
        seen.append(await guard.attempt("192.0.2.1", USER))
        return seen

    assert asyncio.run(scenario()) == [False, False, 1, 1, None]


def test_no_user_name_can_pass_for_another_count() -> None:
    guard = AuthGuard(max_failures=1, window=60)
    for n in range(1, 4):
        fail(guard, f"192.0.2.{100 + n}", f"{USER}@ip:192.0.2.1")
        fail(guard, f"192.0.2.{100 + n}", "")
    assert not guard.locked("192.0.2.1", USER)
    assert not guard.locked("192.0.2.1")
