"""Abuse limits aiosmtpd does not have: connections per client and in all, and AUTH
failures per client address and per user name with a growing delay and a lockout.

Counts live in memory: they protect one process, reset on restart, and cost nothing per
command. Postfix's defaults inspired the numbers (50 connections per client).
"""

from __future__ import annotations

import asyncio
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
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def count(self) -> int:
        return sum(self._per_ip.values())

    def opened(self, ip: str) -> str | None:
        """Count a new connection; return the reply refusing it, if it is one too many."""
        self._per_ip[ip] += 1
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


class AuthGuard:
    """Failures within *window* seconds, per client address and per user name."""

    def __init__(self, max_failures: int, window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> int:
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

    def locked(self, ip: str, user: str | None = None) -> bool:
        """An address is locked after max_failures; a user name after four times as many,
        so that guessing at one account from many addresses stops too, while one noisy
        address cannot lock a user out of everywhere."""
        if self._recent(f"ip:{ip}") >= self.max_failures:
            return True
        return bool(user) and self._recent(f"user:{user}") >= 4 * self.max_failures

    def failed(self, ip: str, user: str) -> int:
        """Record a failure; return the larger of the two counts."""
        now = self._clock()
        counts = []
        for key in (f"ip:{ip}", f"user:{user}"):
            self._failures.setdefault(key, deque()).append(now)
            counts.append(self._recent(key))
        return max(counts)

    @staticmethod
    def delay(failures: int) -> float:
        """Seconds to wait before answering a failed AUTH: 0.5, 1, 2, 4, then 8."""
        return float(min(8.0, 0.5 * 2 ** max(0, failures - 1)))
