"""How fast and how much the scheduler sends: retry delays, the in-flight byte budget and
recipient chunks (relay/delivery.py uses them; kept apart so the scheduler stays about
scheduling)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    minimum: float
    maximum: float
    jitter: float = 0.2

    def delay(self, age: float, rng: Callable[[], float] = random.random) -> float:
        """Wait about as long as the message has already waited, within [min, max]."""
        base = min(self.maximum, max(self.minimum, age))
        return base * (1.0 + self.jitter * rng())


class ByteBudget:
    """Bounds the bytes of messages held in memory by deliveries under way.

    A transport needs the whole message in memory, and an API transport several copies
    (base64, the request body): ten workers on 10 MB messages would hold hundreds of MB.
    Each send is charged what its transport says it holds (``memory_per_byte``).
    A message larger than the whole budget still goes, alone.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = min(size, self._limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self._used + size <= self._limit)
            self._used += size
        try:
            yield
        finally:
            async with self._changed:
                self._used -= size
                self._changed.notify_all()


def split(rcpts: tuple[str, ...], size: int) -> list[tuple[str, ...]]:
    """Recipients in chunks of at most *size*, the same way every time (progress keys)."""
    return [rcpts[i:i + size] for i in range(0, len(rcpts), size)]
