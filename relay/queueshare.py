"""Queue ids, and which process owns which of them (``workers`` > 1, or delivery in a
process of its own)."""

from __future__ import annotations

import secrets
import time
import zlib
from dataclasses import dataclass


def new_queue_id(now: float | None = None) -> str:
    """A sortable id: 13 hex digits of microseconds since the epoch, then 5 random ones.

    The arrival time is recoverable from the id alone (``queue_id_time``), so start-up and
    the scheduler need not open a file to know a message's age.
    """
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:013X}{secrets.randbelow(16**5):05X}"


@dataclass(frozen=True)
class Share:
    """Which entries of a shared queue this process owns (``workers`` > 1).

    Several relay processes share one queue directory, so the queue tools see one queue.
    Each entry has exactly one owner, a pure function of its id and the process count:
    a process delivers, recovers and cleans up only what it owns, and gives itself the
    ids of what it accepts. After a restart with another count, ownership is simply
    recomputed; nothing needs moving. (The flock of a claim would keep two processes from
    delivering one message anyway; ownership keeps them from trying.)
    """

    index: int = 0
    count: int = 1

    def owns(self, queue_id: str) -> bool:
        return self.count == 1 or zlib.crc32(queue_id.encode()) % self.count == self.index


ALONE = Share()  # the one relay process (workers: 1)


def queue_id_time(queue_id: str) -> float:
    return int(queue_id[:13], 16) / 1_000_000


def is_queue_id(name: str) -> bool:
    return len(name) == 18 and all(c in "0123456789ABCDEF" for c in name)
