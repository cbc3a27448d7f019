"""Queue ids, and which process owns which of them (``workers`` > 1, or delivery in a
process of its own)."""

from __future__ import annotations

import secrets
import time
import zlib
from dataclasses import dataclass
from typing import Literal


def new_queue_id(now: float | None = None) -> str:
    """A sortable id: 13 hex digits of microseconds since the epoch, then 5 random ones.

    The arrival time is recoverable from the id alone (``queue_id_time``), so start-up and
    the scheduler need not open a file to know a message's age.
    """
    micros = int((time.time() if now is None else now) * 1_000_000)
    return f"{micros:013X}{secrets.randbelow(16**5):05X}"


Role = Literal["all", "smtp", "delivery"]


@dataclass(frozen=True)
class Share:
    """Which entries of a shared queue this process owns, and what it does with them.

    Several relay processes share one queue directory, so the queue tools see one queue.
    Each entry has exactly one owner, a pure function of its id and the process count: a
    process gives itself the ids of what it accepts, and cleans up only the drafts it
    owns. After a restart with another count, ownership is simply recomputed; nothing
    needs moving. (The flock of a claim would keep two processes from delivering one
    message anyway; ownership keeps them from trying.)

    *role* says who delivers. ``all``: every process takes mail and delivers what it
    owns (``workers`` > 1 with ``delivery.process: shared``, or the one process).
    ``smtp`` and ``delivery``: Postfix's split (smtpd apart from qmgr and smtp). The
    SMTP processes only take mail; one delivery process delivers every entry, so
    delivering never takes the event loop from a session. The delivery process is the
    last index: the ids of the notices it writes itself (DSNs) are its own, and no SMTP
    process cleans them up as leftovers.
    """

    index: int = 0
    count: int = 1
    role: Role = "all"

    def owns(self, queue_id: str) -> bool:
        """Whether the id is this process's to give, and its draft this process's to
        clean up."""
        return self.count == 1 or zlib.crc32(queue_id.encode()) % self.count == self.index

    def delivers(self, queue_id: str) -> bool:
        """Whether this process delivers (recovers, retries) the entry."""
        if self.role == "all":
            return self.owns(queue_id)
        return self.role == "delivery"

    @property
    def deliverers(self) -> int:
        """How many processes deliver: each has its own trigger folder, and its part of
        the send rate and of the in-flight budget."""
        return self.count if self.role == "all" else 1

    @property
    def trigger_index(self) -> int:
        return self.index if self.role == "all" else 0

    @property
    def first(self) -> bool:
        """The process that runs what must run once: the HTTP listeners (metrics,
        feedback, console), feedback and the suppression sync, the running record (with
        separate delivery, the first SMTP process adds its ports: relay.running.records)."""
        return self.role == "delivery" or (self.role == "all" and self.index == 0)

    @property
    def several(self) -> bool:
        """More than one relay process (metrics are then combined across processes)."""
        return self.count > 1 or self.role != "all"


ALONE = Share()  # the one relay process, taking and delivering mail


def queue_id_time(queue_id: str) -> float:
    return int(queue_id[:13], 16) / 1_000_000


def is_queue_id(name: str) -> bool:
    return len(name) == 18 and all(c in "0123456789ABCDEF" for c in name)
