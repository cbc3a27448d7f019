"""Abuse limits aiosmtpd does not have: connections per client and in all, and AUTH
failures per client (address, and user name at an address) with a growing delay and a
lockout.

Counts live in memory: they protect one process, reset on restart, and cost nothing per
command. Postfix's defaults inspired the numbers (50 connections per client).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import time
from collections import Counter, deque
from collections.abc import Callable

TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 Too many connections from your address, try again later"
LOCKED_OUT = "421 4.7.0 Too many authentication failures, try again later"


class Connections:
    def __init__(self, total: int, per_ip: int) -> None:
        self.total_limit = total
        self.per_ip_limit = per_ip
        self._per_ip: Counter[str] = Counter()
        self._count = 0  # the sum of _per_ip, kept: opened() reads it for every connection
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return self._count

    def opened(self, ip: str) -> str | None:
        """Count a new connection; return the reply refusing it, if it is one too many."""
        self._per_ip[ip] += 1
        self._count += 1
        self._idle.clear()
        if self.count > self.total_limit:
            return TOO_MANY_CONNECTIONS
        if self._per_ip[ip] > self.per_ip_limit:
            return TOO_MANY_FROM_YOU
        return None

    def moved(self, old_ip: str, new_ip: str) -> str | None:
        """The connection's real client is *new_ip* (PROXY protocol)."""
        self.closed(old_ip)
        return self.opened(new_ip)

    def closed(self, ip: str) -> None:
        if ip not in self._per_ip:
            return  # never counted: nothing to give back
        self._count -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]
        if not self._per_ip:
            self._idle.set()

    async def wait_idle(self, grace: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True


_Key = tuple[str, str, str]  # what is counted, the client, the user name


class AuthGuard:
    """AUTH failures within *window* seconds, counted against the client, as Postfix's
    anvil and Dovecot's auth penalty do, never against a user name everywhere:

    - one user name from one address (an IPv6 client: its /64): *max_failures*, then that
      name is refused from that address (421) until the failures age out;
    - one address over all names: ADDRESS_FACTOR times as many, then the address is
      refused at connect too (someone there is trying names);
    - a password check in progress holds a slot under both counts: a success gives it
      back, a failure becomes a failure. A check beyond the slots left waits for those in
      progress, so parallel connections get no more guesses than one connection would;
    - a user name guessed at from many addresses is never locked (that would let anyone
      lock the application out); its failures are answered more slowly instead
      (``delay``). A right password from a clean client is always accepted.

    A success resets nothing: an attacker sharing an address with the real user would
    otherwise get fresh guesses each time the user logs in.
    """

    ADDRESS_FACTOR = 4

    def __init__(self, max_failures: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: dict[_Key, deque[float]] = {}
        self._in_progress: Counter[_Key] = Counter()
        self._changed: asyncio.Event | None = None  # set when a check in progress ends
        self._sweep_at = 1024

    def _recent(self, key: _Key) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        horizon = self._clock() - self.window
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)

    def _limits(self, ip: str, user: str) -> list[tuple[_Key, int]]:
        # Tuples, not strings: no user name can be made to read as another key.
        client = _client(ip)
        return [(("address", client, ""), self.ADDRESS_FACTOR * self.max_failures),
                (("user at address", client, user), self.max_failures)]

    def locked(self, ip: str, user: str | None = None) -> bool:
        """Whether this address (and, given a user name, that name from it) is locked out."""
        limits = self._limits(ip, user) if user else self._limits(ip, "")[:1]
        return any(self._recent(key) >= limit for key, limit in limits)

    async def attempt(self, ip: str, user: str) -> Attempt | None:
        """A slot for one password check, once one is free; None when locked out."""
        limits = self._limits(ip, user)
        while True:
            if any(self._recent(key) >= limit for key, limit in limits):
                return None
            if all(self._recent(key) + self._in_progress[key] < limit
                   for key, limit in limits):
                keys = [key for key, _ in limits]
                self._in_progress.update(keys)
                return Attempt(self, keys, user)
            if self._changed is None:
                self._changed = asyncio.Event()
            await self._changed.wait()

    def _finished(self, keys: list[_Key], user: str, failed: bool) -> int:
        now = self._clock()
        counts = []
        for key in keys:
            self._in_progress[key] -= 1
            if self._in_progress[key] <= 0:
                del self._in_progress[key]
            if failed:
                self._failures.setdefault(key, deque()).append(now)
                counts.append(self._recent(key))
        if failed:
            # Across addresses, for the delay only: a user name many are guessing at.
            name = ("user", "", user)
            self._failures.setdefault(name, deque()).append(now)
            counts.append(self._recent(name) // self.max_failures)
            self._sweep()
        if self._changed is not None:  # wake the checks waiting for a slot
            self._changed.set()
            self._changed = None
        return max(counts, default=0)

    def _sweep(self) -> None:
        """Forget keys with no recent failure, so that made-up names cannot grow memory."""
        if len(self._failures) < self._sweep_at:
            return
        for key in list(self._failures):
            self._recent(key)
        self._sweep_at = max(1024, 2 * len(self._failures))

    @staticmethod
    def delay(failures: int) -> float:
        """Seconds to wait before answering a failed AUTH: 0.5, 1, 2, 4, then 8."""
        return float(min(8.0, 0.5 * 2 ** max(0, failures - 1)))


@functools.lru_cache(maxsize=4096)
def _client(ip: str) -> str:
    """The client an address stands for: an IPv4 address (also when written as an
    IPv4-mapped IPv6 one, as dual-stack listeners see it), or an IPv6 /64, which one site
    usually holds whole: counted per address, IPv6 would give a guesser 2**64 fresh
    counts. (Dovecot's auth penalty and Postfix's anvil aggregate IPv6 clients too.)"""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Attempt:
    """One password check in progress: end it with ``release`` (it succeeded, or never
    happened) or ``fail``; only the first call counts."""

    def __init__(self, guard: AuthGuard, keys: list[_Key], user: str) -> None:
        self._guard = guard
        self._keys: list[_Key] | None = keys
        self._user = user

    def release(self) -> None:
        self._end(failed=False)

    def fail(self) -> int:
        """Count the failure; return the failure count that sets the answer's delay."""
        return self._end(failed=True)

    def _end(self, *, failed: bool) -> int:
        keys, self._keys = self._keys, None
        if keys is None:
            return 0
        return self._guard._finished(keys, self._user, failed)
