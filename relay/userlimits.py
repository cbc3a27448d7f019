"""Per-user limits (the users file's max_rate and max_per_day), counted in recipients, as
SES counts them, and charged at RCPT, the earliest step that can decide.

The counts live in a small SQLite database in the queue directory, not in memory:

- several relay processes (workers > 1) share the queue directory; a count per process
  would let N workers send N times the limit. Each charge is one transaction under
  SQLite's write lock (BEGIN IMMEDIATE), so the processes take turns and none can read a
  count another is about to raise;
- the day count must survive a restart. Deriving it from the event store or the spool
  was the other way: the event store writes in batches behind the mail (a fresh count
  would be missing the last second's recipients) and knows messages at the 250, not the
  RCPTs still in a session; the spool forgets a message once delivered. A table of a few
  rows per user is exact, and small.

Cost per RCPT (``.venv/bin/python bench/userlimits.py``, bench/RESULTS.md; ext4, 2 cores):
one charge (rate and day) is one write transaction on a WAL database (synchronous=NORMAL:
no fsync per commit), p50 22 us, p99 55-62 us; 83-136 us with the hop to this module's
thread; two processes charging one user at once, 42-48 us a charge. It runs in a thread
of its own, not on the event loop: a charge may wait for another worker's transaction
(the busy timeout) or for a WAL checkpoint's fsync. Only users with a limit pay for it.

The day is any 24 hours (SES's Max24HourSend is too), counted in hourly buckets: the sum of
the current hour and the 24 before it, so a recipient is remembered for 24 to 25 hours,
never less (a calendar day would let a user send twice the limit around midnight).

A charged recipient whose message is not queued (RSET, a new MAIL, QUIT or a lost
connection before the 250, a refused DATA) is given back. A crash in between keeps it
counted: the count may be too high for a day, never too low.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay import log, sqlitedb
from relay.policy import ACCEPT, Verdict
from relay.users import User

DB_NAME = "user-limits.sqlite3"
OVER_RATE = "451 4.7.1 Sending rate limit reached, try again in {seconds} seconds"
OVER_DAY = "452 4.5.3 Daily recipient limit reached, try again later"
# The counts cannot be read or written (a locked or broken file): refused for now, not let
# through uncounted; the log says why.
UNCOUNTED = "451 4.3.0 Temporary failure, please try again later"
_log = log.get("limits")
_HOUR = 3600
_WINDOW_HOURS = 24  # the buckets before the current one that still count

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rate (
    user TEXT PRIMARY KEY, tokens REAL NOT NULL, stamp REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS day (
    user TEXT NOT NULL, hour INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (user, hour)) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Charge:
    """One recipient counted against a user's day, in the bucket it went to."""

    user: str
    hour: int


class UserLimits:
    """The shared counts. ``charge`` and ``refund`` are blocking (the bench calls them
    directly); the SMTP side goes through ``Ledger``, which runs them on this object's
    thread."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        # time.time, not monotonic: the stamps are shared by processes and kept across a
        # reboot. A clock set back counts as no time passed (no tokens given).
        self._clock = clock
        self._db = sqlitedb.connect(path, _SCHEMA)
        # One thread: this process's charges in order, on the one connection.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="user-limits")

    def charge(self, user: User) -> Verdict | Charge | None:
        """Count one recipient for *user*: the Verdict refusing it, or the Charge to give
        back if its message is not queued (None: counted against the rate only)."""
        now = self._clock()
        hour = int(now // _HOUR)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            refused = self._over(user, now, hour)
            if refused is not None:
                self._db.execute("ROLLBACK")
                return refused
            if user.max_per_day is not None:
                self._db.execute("INSERT INTO day VALUES (?, ?, 1) ON CONFLICT (user, hour) "
                                 "DO UPDATE SET n = n + 1", (user.name, hour))
                # Buckets out of the window are never read again.
                self._db.execute("DELETE FROM day WHERE user = ? AND hour < ?",
                                 (user.name, hour - _WINDOW_HOURS))
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return Charge(user.name, hour) if user.max_per_day is not None else None

    def _over(self, user: User, now: float, hour: int) -> Verdict | None:
        """The refusal, if this recipient is one too many; else take its rate token."""
        if user.max_per_day is not None:
            sent = _sum(self._db, user.name, hour)
            if sent >= user.max_per_day:
                return Verdict(OVER_DAY, f"{user.name}: {sent} recipients in 24 hours, "
                                         f"max_per_day {user.max_per_day}", limit="day")
        rate = user.max_rate
        if rate is None:
            return None
        capacity = max(1.0, rate.count)  # a burst of one period's worth
        row = self._db.execute("SELECT tokens, stamp FROM rate WHERE user = ?",
                               (user.name,)).fetchone()
        tokens = capacity if row is None else min(
            capacity, row[0] + max(0.0, now - row[1]) * rate.per_second)
        # (The epsilon: refilled to 0.9999999, a token is there.)
        if tokens + 1e-9 < 1:
            wait = math.ceil((1 - tokens) / rate.per_second)
            return Verdict(OVER_RATE.format(seconds=wait),
                           f"{user.name}: over max_rate {rate}", limit="rate")
        self._db.execute("INSERT OR REPLACE INTO rate VALUES (?, ?, ?)",
                         (user.name, tokens - 1, now))
        return None

    def refund(self, charges: Iterable[Charge]) -> None:
        rows = [(c.user, c.hour) for c in charges]
        try:
            with self._db:
                self._db.executemany(
                    "UPDATE day SET n = max(0, n - 1) WHERE user = ? AND hour = ?", rows)
        except sqlite3.Error as e:  # on its thread, with no one to tell but the log
            _log.warning("limits_refund_failed", error=str(e), recipients=len(rows),
                         hint="they stay counted against the user's day")

    def sent(self, name: str) -> int:
        """Recipients counted for *name* in the last 24 hours."""
        return _sum(self._db, name, int(self._clock() // _HOUR))

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        """Run *call* on this object's thread, not waiting for it (a refund at a close)."""
        # Closed (RuntimeError): a session that outlived the shutdown keeps its count.
        with contextlib.suppress(RuntimeError):
            self._thread.submit(call, *args)

    def close(self) -> None:
        self._thread.shutdown(wait=True)  # the refunds still queued first
        self._db.close()


def _sum(db: sqlite3.Connection, name: str, hour: int) -> int:
    row = db.execute("SELECT coalesce(sum(n), 0) FROM day WHERE user = ? AND hour >= ?",
                     (name, hour - _WINDOW_HOURS)).fetchone()
    return int(row[0])


class Ledger:
    """The SMTP side: charges per session, given back when their message is not queued.

    A session's charges are those of its transaction in progress; a new MAIL starts
    another, so whatever is still charged then was abandoned (RSET, EHLO, a refused DATA).
    """

    def __init__(self, limits: UserLimits | None) -> None:
        self._limits = limits

    async def recipient(self, session: Any, user: User | None) -> Verdict:
        if user is None or not user.limited or self._limits is None:
            return ACCEPT
        try:
            result = await self._limits.run(self._limits.charge, user)
        except sqlite3.Error as e:
            return Verdict(UNCOUNTED, f"user limits not counted: {e}")
        if isinstance(result, Verdict):
            return result
        if result is not None:
            _charges(session).append(result)
        return ACCEPT

    def abandon(self, session: Any) -> None:
        """The transaction ended without a queued message: give its recipients back."""
        self.give_back(self.take(session))

    def take(self, session: Any) -> list[Charge]:
        """The transaction's charges, no longer the session's (its DATA is committing)."""
        charges = _charges(session)
        taken = list(charges)
        charges.clear()
        return taken

    def give_back(self, charges: list[Charge]) -> None:
        if charges and self._limits is not None:
            self._limits.submit(self._limits.refund, charges)


def _charges(session: Any) -> list[Charge]:
    charges: list[Charge] | None = getattr(session, "limit_charges", None)
    if charges is None:
        charges = session.limit_charges = []
    return charges


def sent_24h(queue_dir: Path, names: Iterable[str]) -> dict[str, int]:
    """For `user list`: each name's recipients in the last 24 hours, read without creating
    or changing anything (0 before the relay has counted any; {} if it cannot be read)."""
    names = list(names)
    path = queue_dir / DB_NAME
    if not path.exists():
        return dict.fromkeys(names, 0)
    # A relay running has the WAL files open: read through them. Without them, read the
    # file as it is (immutable): even read-only, SQLite would make a -wal and -shm here,
    # owned by whoever runs the command (root), which the relay could then not write.
    wal = path.with_name(path.name + "-wal").exists()
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro{'' if wal else '&immutable=1'}",
                             uri=True, timeout=5)
    except sqlite3.Error:
        return {}
    try:
        hour = int(time.time() // _HOUR)
        return {name: _sum(db, name, hour) for name in names}
    except sqlite3.Error:
        return {}
    finally:
        db.close()
