"""The event store in one SQLite file (the default; a single relay, or its workers)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from relay import sqlitedb
from relay.eventstore import migrations
from relay.eventstore.common import EventStoreError
from relay.eventstore.sqlbase import SqlBackend, Statement


class SqliteBackend(SqlBackend):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.describe = str(path)
        self._lock = threading.Lock()  # one connection, shared by the writer and readers
        try:
            self._db = _open(path)
        except sqlite3.Error as e:
            raise EventStoreError(f"{path}: {e}") from e

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise EventStoreError(f"{self.path}: {e}") from e

    def _write(self, statements: Sequence[Statement]) -> list[int]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                counts = []
                for sql, rows in statements:
                    counts.append(self._db.executemany(sql, rows).rowcount if rows else 0)
                self._db.execute("COMMIT")
                return counts
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise EventStoreError(f"{self.path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _open(path: Path) -> sqlite3.Connection:
    """The file, its schema brought up to date (relay.eventstore.migrations) under
    relay.sqlitedb's flock: workers starting at once."""
    return sqlitedb.connect(path, _migrate)


def _migrate(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        migrations.apply("sqlite", lambda sql, p: db.execute(sql, p).fetchall(), time.time())
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
