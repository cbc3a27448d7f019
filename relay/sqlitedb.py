"""Opening the relay's SQLite files (suppression list, event store) safely when several
relay processes (workers) open them at the same moment.

WAL journal, synchronous=NORMAL, a 10 s busy timeout, and the schema created under an
flock on a side file: two connections that both read the schema and then upgrade to write
get SQLITE_BUSY at once, without the busy timeout (SQLite's deadlock avoidance), which
made one of two starting workers fail with "database is locked".
"""

from __future__ import annotations

import fcntl
import sqlite3
from collections.abc import Callable
from pathlib import Path


def connect(path: Path, schema: str | Callable[[sqlite3.Connection], None]
            ) -> sqlite3.Connection:
    """The file, opened and its schema made: *schema* is a script, or a function that
    brings the schema up to date (relay.eventstore's migrations), run under the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    try:
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if isinstance(schema, str):
                db.executescript(schema)
            else:
                schema(db)
    except BaseException:
        db.close()
        raise
    return db
