"""The local suppression list: addresses and domains the relay must not send to.

SQLite (in the state directory) is the embedded default: one file, safe for the relay and
the CLI to use at the same time (WAL), and a primary-key lookup stays a few microseconds at
a million entries, so checking every RCPT costs nothing measurable. Addresses are stored
lower-cased; ``@domain`` entries cover a whole domain.
"""

from __future__ import annotations

import asyncio
import csv
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from relay import sqlitedb
from relay.addresses import AddressError, normalize_pattern
from relay.errors import RelayError

REASONS = ("bounce", "complaint", "manual", "import")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS suppression (
    address    TEXT PRIMARY KEY,  -- lower-cased address, or '@domain'
    reason     TEXT NOT NULL,
    source     TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL
) WITHOUT ROWID;
"""


class SuppressionError(RelayError):
    """The suppression database cannot be opened, read or written."""


@dataclass(frozen=True)
class Entry:
    address: str
    reason: str
    source: str
    created_at: float
    expires_at: float | None = None


def _key(address: str) -> str:
    return address.lower()


class SuppressionList:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlitedb.connect(path, _SCHEMA)
        except (sqlite3.Error, OSError) as e:
            raise SuppressionError(f"cannot open suppression list {path}: {e}") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- lookups

    def lookup(self, address: str) -> Entry | None:
        """The entry that suppresses *address* (exact, then its domain), if any. Blocking."""
        key = _key(address)
        domain = "@" + key.rpartition("@")[2]
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT address, reason, source, created_at, expires_at FROM suppression "
                "WHERE address IN (?, ?) AND (expires_at IS NULL OR expires_at > ?)",
                (key, domain, now)).fetchall()
        if not rows:
            return None
        rows.sort(key=lambda r: r[0] != key)  # the exact entry first
        return Entry(*rows[0])

    async def check(self, address: str) -> Entry | None:
        return await asyncio.to_thread(self.lookup, address)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM suppression").fetchone()[0])

    def entries(self) -> Iterator[Entry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT address, reason, source, created_at, expires_at FROM suppression "
                "ORDER BY address").fetchall()
        return (Entry(*r) for r in rows)

    def search(self, text: str = "", limit: int = 200) -> list[Entry]:
        """Entries whose address contains *text* (all, up to *limit*, when empty). Blocking."""
        pattern = "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
        with self._lock:
            rows = self._db.execute(
                "SELECT address, reason, source, created_at, expires_at FROM suppression "
                "WHERE address LIKE ? ESCAPE '\\' ORDER BY address LIMIT ?",
                (pattern, limit)).fetchall()
        return [Entry(*r) for r in rows]

    # -- changes

    def add(self, address: str, reason: str, source: str = "", *,
            expires_at: float | None = None) -> Entry:
        """Add or replace an entry; raises SuppressionError for a bad address or reason."""
        entry = self._entry(address, reason, source, expires_at)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO suppression VALUES (?, ?, ?, ?, ?)",
                             (entry.address, entry.reason, entry.source, entry.created_at,
                              entry.expires_at))
        return entry

    def remove(self, address: str) -> bool:
        key = _key(address)
        with self._lock:
            return self._db.execute("DELETE FROM suppression WHERE address = ?",
                                    (key,)).rowcount > 0

    def import_entries(self, entries: Iterable[Entry], *, batch: int = 5000,
                       progress: Callable[[int], object] | None = None) -> int:
        """Insert entries not already present (idempotent); return how many were new."""
        added = 0
        chunk: list[tuple[str, str, str, float, float | None]] = []

        def flush() -> None:
            nonlocal added
            with self._lock:
                before = self._db.total_changes
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR IGNORE INTO suppression VALUES (?, ?, ?, ?, ?)",
                                     chunk)
                self._db.execute("COMMIT")
                added += self._db.total_changes - before
            if progress:
                progress(len(chunk))
            chunk.clear()

        for e in entries:
            chunk.append((e.address, e.reason, e.source, e.created_at, e.expires_at))
            if len(chunk) >= batch:
                flush()
        if chunk:
            flush()
        return added

    def _entry(self, address: str, reason: str, source: str,
               expires_at: float | None) -> Entry:
        if reason not in REASONS:
            raise SuppressionError(f"reason must be one of {', '.join(REASONS)}")
        try:
            key = _key(normalize_pattern(address.strip()))
        except AddressError as e:
            raise SuppressionError(f"{address!r}: {e.reason}") from None
        return Entry(key, reason, source, self._clock(), expires_at)

    # -- CSV

    def read_csv(self, f: TextIO, *, reason: str = "import", source: str = "") -> Iterator[Entry]:
        """Entries from CSV: one address per row in the first column, or a header row with
        an ``address``/``email`` column and optional ``reason`` and ``expires_at`` columns.
        Bad rows raise SuppressionError naming the line."""
        rows: Iterator[list[str]] = csv.reader(f)
        first = next(rows, None)
        if first is None:
            return
        header = [c.strip().lower() for c in first]
        col = next((i for i, c in enumerate(header) if c in ("address", "email",
                                                              "emailaddress")), None)
        reason_col = header.index("reason") if "reason" in header else None
        expires_col = header.index("expires_at") if "expires_at" in header else None
        if col is None:
            col = 0
            rows = _chain([first], rows)
        for n, row in enumerate(rows, start=1 if reason_col is None and col == 0 else 2):
            if not row or not row[col].strip():
                continue
            r = row[reason_col].strip().lower() if reason_col is not None and \
                len(row) > reason_col and row[reason_col].strip() else reason
            exp = row[expires_col] if expires_col is not None and len(row) > expires_col \
                else ""
            try:
                yield self._entry(row[col], r if r in REASONS else reason, source,
                                  float(exp) if exp.strip() else None)
            except (SuppressionError, ValueError) as e:
                raise SuppressionError(f"line {n}: {e}") from None

    def write_csv(self, f: TextIO) -> int:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["address", "reason", "source", "created_at", "expires_at"])
        n = 0
        for e in self.entries():
            w.writerow([e.address, e.reason, e.source, f"{e.created_at:.0f}",
                        "" if e.expires_at is None else f"{e.expires_at:.0f}"])
            n += 1
        return n


def _chain(first: list[list[str]], rest: Iterator[list[str]]) -> Iterator[list[str]]:
    yield from first
    yield from rest
