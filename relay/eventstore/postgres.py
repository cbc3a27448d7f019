"""The event store on PostgreSQL: one database shared by a fleet of relays (issue 18).

psycopg 3, synchronous: every call here already runs off the event loop (the store's
writer thread, or a reader in asyncio.to_thread), as with SQLite, so an async driver would
only add a second loop to bridge to. Two connections per process: the writer's and the
readers', each behind its own lock, so a console page never waits behind a batch being
written, nor a batch behind a reconnect attempt of a reader.

A connection that fails (server down, restarted, network gone) raises Unreachable and is
opened again on the next call; the store buffers writes on local disk meanwhile
(relay.eventstore.buffer). The schema is migrated on the first connection, under a
transaction-scoped advisory lock so that relays starting together take turns.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from relay.eventstore import migrations
from relay.eventstore.common import EventStoreError, Unreachable
from relay.eventstore.sqlbase import INSERT_EVENTS, SqlBackend, Statement

# pg_advisory_xact_lock's keys, constants the fleet agrees on: schema migrations, and
# event inserts (below).
_MIGRATION_LOCK = 0x5E5_2E1A7
_EVENTS_LOCK = 0x5E5_2E1A8
_CONNECT_TIMEOUT = 5  # seconds: an unreachable server costs a writer batch this, not more


def redact(dsn: str) -> str:
    """*dsn* without its password, for logs and error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


@functools.lru_cache(maxsize=256)
def _native(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _Link:
    """One connection, opened when needed and dropped when it fails."""

    def __init__(self, backend: PostgresBackend) -> None:
        self.lock = threading.Lock()
        self._backend = backend
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def conn(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = self._backend.connect()
        return self._conn

    def drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresBackend(SqlBackend):
    RCPTS = "coalesce(json_array_length(rcpts::json), 0)"
    HOUR = "floor((at - ?) / 3600)::int"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.describe = redact(dsn)
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._reader = _Link(self)
        self._writer = _Link(self)

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        extra: dict[str, Any] = {"application_name": "ses-relay"}
        if "connect_timeout" not in self.dsn:
            extra["connect_timeout"] = _CONNECT_TIMEOUT
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, **extra)
        except psycopg.OperationalError as e:
            raise Unreachable(f"{self.describe}: {_first_line(e)}") from None
        except psycopg.Error as e:  # a malformed DSN, among others
            raise EventStoreError(f"{self.describe}: {_first_line(e)}") from None
        try:
            with self._migrate_lock:
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))

            def execute(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                cur.execute(_native(sql), params)
                return cur.fetchall() if cur.description else []

            migrations.apply("postgres", execute, time.time())

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._reader.lock:
            rows: list[tuple[Any, ...]] = self._run(
                self._reader, lambda c: c.execute(_native(sql), params).fetchall())
            return rows

    def _write(self, statements: Sequence[Statement]) -> list[int]:
        def run(conn: psycopg.Connection[tuple[Any, ...]]) -> list[int]:
            counts = []
            with conn.transaction(), conn.cursor() as cur:
                if any(sql is INSERT_EVENTS and rows for sql, rows in statements):
                    # `events export --cursor` goes on after the last seq it saw. Relays
                    # inserting at once would commit seqs out of order and a row could
                    # land behind the cursor: event inserts take turns, fleet-wide, so
                    # seqs become visible in order. SES events are few; steps need not.
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_EVENTS_LOCK,))
                for sql, rows in statements:
                    if rows:
                        cur.executemany(_native(sql), rows)
                    counts.append(max(cur.rowcount, 0) if rows else 0)
            return counts

        with self._writer.lock:
            counts: list[int] = self._run(self._writer, run)
            return counts

    def _run(self, link: _Link, work: Any) -> Any:
        """*work(connection)*, the driver's errors mapped to ours (here only)."""
        try:
            return work(link.conn())
        except psycopg.OperationalError as e:  # connection lost (or never made)
            link.drop()
            raise Unreachable(f"{self.describe}: {_first_line(e)}") from None
        except psycopg.Error as e:
            if link._conn is not None and link._conn.broken:
                link.drop()
            raise EventStoreError(f"{self.describe}: {_first_line(e)}") from None

    def close(self) -> None:
        for link in (self._reader, self._writer):
            with link.lock:
                link.drop()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
