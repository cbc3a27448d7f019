"""Where steps and events wait, on local disk, while the shared database is unreachable.

One SQLite file in the relay's state folder, shared by the relay's processes: rows are
appended in order and sent again oldest first once the server answers, then deleted. A
row sent twice (a process stopped between sending and deleting, two processes sending
the same rows) is stored once: every row carries its key (relay.eventstore.common).

Bounded: past ``max_bytes`` new rows are dropped and counted. This is history, not mail:
the queue is what guarantees delivery, and a disk filled by history must not stop it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay.eventstore.common import EventRow, StepRow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,      -- 'step' or 'event'
    row  TEXT NOT NULL       -- JSON array: the row as written to the database
);
"""


class DiskBuffer:
    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.dropped = 0  # rows refused since the last report (full)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._bytes = 0

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                 timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._bytes = int(db.execute("SELECT coalesce(sum(length(row)), 0) "
                                         "FROM pending").fetchone()[0])
            self._db = db
        return self._db

    def exists(self) -> bool:
        return self._db is not None or self.path.exists()

    def append(self, steps: Sequence[StepRow], events: Sequence[EventRow]) -> int:
        """Keep *steps* and *events* for later; returns how many rows were dropped (full)."""
        rows = [("step", json.dumps(r)) for r in steps] + \
               [("event", json.dumps(r)) for r in events]
        with self._lock:
            db = self._open()
            kept, size = [], self._bytes
            for kind, text in rows:
                if size + len(text) > self.max_bytes:
                    break  # the oldest are kept: later rows are dropped, in order
                kept.append((kind, text))
                size += len(text)
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO pending (kind, row) VALUES (?, ?)", kept)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            self._bytes = size
            dropped = len(rows) - len(kept)
            self.dropped += dropped
            return dropped

    def oldest(self, limit: int) -> tuple[int, list[StepRow], list[EventRow]]:
        """Up to *limit* of the oldest rows: (the last seq among them, steps, events)."""
        with self._lock:
            if not self.exists():
                return 0, [], []
            rows = self._open().execute("SELECT seq, kind, row FROM pending ORDER BY seq "
                                        "LIMIT ?", (limit,)).fetchall()
        steps: list[Any] = [tuple(json.loads(r)) for _, kind, r in rows if kind == "step"]
        events: list[Any] = [tuple(json.loads(r)) for _, kind, r in rows if kind == "event"]
        return (rows[-1][0] if rows else 0), steps, events

    def forget(self, up_to: int) -> None:
        """The rows up to seq *up_to* are in the database now."""
        with self._lock:
            db = self._open()
            gone = int(db.execute("SELECT coalesce(sum(length(row)), 0) FROM pending "
                                  "WHERE seq <= ?", (up_to,)).fetchone()[0])
            db.execute("DELETE FROM pending WHERE seq <= ?", (up_to,))
            self._bytes = max(0, self._bytes - gone)

    def empty(self) -> bool:
        with self._lock:
            if not self.exists():
                return True
            return self._open().execute("SELECT 1 FROM pending LIMIT 1").fetchone() is None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
