"""Keeping to the account's send rate: a token bucket charged per recipient.

SES counts recipients, not messages, against ``MaxSendRate``, and drops a throttled
message (the caller must retry), so sending just under the rate is both faster and kinder
than sending fast and retrying. The bucket holds one second of tokens; a call for more
recipients than that borrows against the future (the balance goes negative), so a chunk of
50 at 14/s still goes, and the calls after it wait their turn.

On a throttling answer the bucket is emptied and the rate lowered a little (the account's
limit may be shared with other senders); it climbs back to the configured rate while no
throttling is seen (additive increase, multiplicative decrease, as TCP does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol


class Limiter(Protocol):
    """What delivery asks of a rate limiter: this module's bucket, or the fleet's shared
    one (relay.ratelimit_redis)."""

    @property
    def rate(self) -> float | None: ...
    def set_rate(self, rate: float | None) -> None: ...
    async def acquire(self, n: int) -> None: ...
    def throttled(self) -> None: ...
    def pause(self, seconds: float) -> None: ...
    def unpause(self) -> None: ...


class TokenBucket:
    def __init__(self, rate: float | None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._ceiling = rate  # None: unlimited
        self._rate = rate
        self._tokens = self._capacity
        self._stamp = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float | None:
        """The rate in force now (recipients per second), None when unlimited."""
        return self._rate

    @property
    def _capacity(self) -> float:
        return max(1.0, self._rate or 1.0)

    def set_rate(self, rate: float | None) -> None:
        """A new ceiling (from SES's MaxSendRate or the configuration)."""
        self._refill()
        self._ceiling = rate
        self._rate = rate if rate is None or self._rate is None else min(self._rate, rate)
        if rate is not None and self._rate is None:
            self._rate = rate
        self._tokens = min(self._tokens, self._capacity)

    async def acquire(self, n: int) -> None:
        """Wait until *n* recipients may be sent, then charge them."""
        if self._ceiling is None and self._paused_until <= self._clock():
            return
        async with self._lock:  # first come, first served
            while True:
                self._refill()
                wait = self._paused_until - self._clock()
                if wait <= 0 and self._rate is None:
                    return  # unlimited: only a pause holds us
                # (The epsilon: 0.9999999 tokens must not mean one more near-zero wait.)
                if wait <= 0 and self._tokens + 1e-9 >= min(n, self._capacity):
                    self._tokens -= n
                    return
                if wait <= 0:
                    assert self._rate is not None
                    wait = (min(n, self._capacity) - self._tokens) / self._rate
                # In steps of at most a second, so that lifting a pause (a queue flush)
                # takes effect soon.
                await self._sleep(min(wait, _STEP))

    def throttled(self) -> None:
        """SES said we are too fast: drain the bucket and slow down by a tenth."""
        self._refill()
        if self._rate is not None:
            self._rate = max(self._rate * 0.9, 0.1)
            self._tokens = min(self._tokens, 0.0)

    def pause(self, seconds: float) -> None:
        """Send nothing for a while (the daily quota is exhausted)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def unpause(self) -> None:
        """Lift a pause now (an operator's flush: try the upstream again at once)."""
        self._paused_until = 0.0

    def _refill(self) -> None:
        now = self._clock()
        elapsed, self._stamp = now - self._stamp, now
        if self._rate is None:
            return
        if self._ceiling is not None and self._rate < self._ceiling:
            # Climb back by 1% of the ceiling per second without throttling.
            self._rate = min(self._ceiling, self._rate + 0.01 * self._ceiling * elapsed)
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)


_STEP = 1.0
