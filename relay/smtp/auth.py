"""Checking AUTH credentials: the lockout rules (relay.limits.AuthGuard), the memory of
successes (relay.authcache) and scrypt in a thread, in that order.

The order matters: a locked-out client is refused whatever it sends; a remembered success
is answered on the event loop at once, without taking a slot; anything else takes a slot
first and is counted before it is checked, so that parallel connections cannot check more
passwords than the lockout allows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import os
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import AuthResult

from relay import maillog
from relay.authcache import SuccessCache
from relay.limits import LOCKED_OUT, Attempt, AuthGuard
from relay.smtp import replies
from relay.smtp.server import RelaySMTP
from relay.users import UserDB

# Where passwords are hashed: one thread per CPU the process may run on, for the whole
# process (every listener and the console). scrypt at the users file's n=2**14, r=8 holds
# 16 MiB while it runs (relay.users), and the lockout lets a client have several checks
# in progress; on the default executor (six threads on 2 CPUs) a burst of first logins
# ran five or six at once and made up most of the SMTP process's peak: 118-121 MB under
# 50 TLS uploads after the small-message load, 50 MB without TLS and AUTH
# (bench/upload_memory.py, bench/RESULTS.md). scrypt is CPU-bound, so no more checks
# finish per second with more threads than CPUs. Its threads start on first use.
_HASHING = concurrent.futures.ThreadPoolExecutor(
    max_workers=len(os.sched_getaffinity(0)), thread_name_prefix="scrypt")


class Outcome(enum.Enum):
    OK = "ok"
    INVALID = "invalid"
    LOCKED = "locked"  # too many failures from this client: refused whatever it sent


class Authenticator:
    """One per listener; the guard and the cache are the process's (relay.app)."""

    def __init__(self, users: Callable[[], UserDB], guard: AuthGuard,
                 cache: SuccessCache) -> None:
        self._users = users
        self._guard = guard
        self._cache = cache
        self._checks: set[asyncio.Task[int | None]] = set()  # strong references

    async def check(self, server: RelaySMTP, mechanism: str, login: bytes, password: bytes,
                    authzid: bytes = b"") -> AuthResult:
        """The AUTH answer for these credentials. *authzid*: PLAIN's authorization identity,
        which may only be empty or the user itself (RFC 4616: acting as another user is a
        right nobody has here)."""
        try:
            name = login.decode("utf-8")
        except UnicodeDecodeError:
            name = ""
        assert server.session is not None
        outcome = await self.verify(server.session.peer, server.client_ip, name, password,
                                    mechanism, authorized=authzid in (b"", login))
        if outcome is Outcome.LOCKED:
            await server.push(LOCKED_OUT)
            server.close()
            return AuthResult(success=False, handled=True)
        if outcome is Outcome.OK:
            return AuthResult(success=True, auth_data=name)
        return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)

    async def verify(self, peer: Any, ip: str, name: str, password: bytes, mechanism: str,
                     *, authorized: bool = True) -> Outcome:
        """Whether *name* and *password* are right, from client *ip*: the check SMTP AUTH
        and the web console's login share (the same guard, cache and log lines)."""
        if self._guard.locked(ip, name):
            maillog.auth_locked(peer, name)
            return Outcome.LOCKED
        if authorized and self._remembered(name, password):
            maillog.auth(peer, name, True, mechanism, cached=True)
            return Outcome.OK
        attempt = await self._guard.attempt(ip, name)
        if attempt is None:
            maillog.auth_locked(peer, name)
            return Outcome.LOCKED
        if authorized and self._remembered(name, password):
            # Remembered while this check waited for a slot (a burst of first logins).
            attempt.release()
            maillog.auth(peer, name, True, mechanism, cached=True)
            return Outcome.OK
        db = self._users()
        if name and authorized:
            # Decided to the end even if the client hangs up meanwhile: the slot is held
            # until the check is over, and a wrong password still counts.
            task = asyncio.create_task(self._verify(attempt, db, name, password))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
            failures = await asyncio.shield(task)
        else:
            failures = attempt.fail()
        maillog.auth(peer, name, failures is None, mechanism)
        if failures is None:
            return Outcome.OK
        await asyncio.sleep(self._guard.delay(failures))  # slows guessing down
        if self._guard.locked(ip, name):
            maillog.auth_locked(peer, name)
            return Outcome.LOCKED
        return Outcome.INVALID

    def _remembered(self, name: str, password: bytes) -> bool:
        db = self._users()
        user = db.get(name) if name else None
        return user is not None and self._cache.verified(db, name, user.password_hash,
                                                         password)

    async def _verify(self, attempt: Attempt, db: UserDB, name: str,
                      password: bytes) -> int | None:
        """None if the password is right, else the failure count (for the delay)."""
        try:
            # scrypt takes tens of milliseconds: in a thread, so other sessions keep going.
            ok = await asyncio.get_running_loop().run_in_executor(
                _HASHING, db.authenticate, name, password)
        except BaseException:
            attempt.release()
            raise
        if not ok:
            return attempt.fail()  # never remembered
        user = db.get(name)
        if user is not None:
            self._cache.remember(db, name, user.password_hash, password)
        attempt.release()
        return None
