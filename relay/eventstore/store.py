"""The event store: every message's story, from SMTP receipt to SES's last word about it.

``steps`` is what the relay did with a message (received, queued, delivered with the SES
MessageId, deferred, failed), ``events`` what SES reported later (Delivery, Bounce,
Complaint...), keyed by SES MessageId, so ``ses-relay trace`` can join them by queue id,
MessageId or address, and ``ses-relay events export`` can hand them to a warehouse. In
one SQLite file (the default) or in a PostgreSQL database shared by a fleet
(``feedback.database: postgresql://...``), where each row names the relay that wrote it.

Writes come from the event loop and must not wait for the database: they go into a queue
that a writer thread commits in batches. Losing the last fraction of a second of history
in a crash is acceptable; the queue, not this store, is what guarantees delivery. While
PostgreSQL cannot be reached the writer keeps rows in a bounded disk buffer and sends
them, oldest first, once it is back. The writer also prunes rows past the retention.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from relay import log
from relay.eventstore.buffer import DiskBuffer
from relay.eventstore.common import (
    EventRow,
    EventStoreError,
    Rates,
    StepIds,
    StepRow,
    Unreachable,
    event_rows,
    is_url,
)
from relay.eventstore.sqlbase import SqlBackend
from relay.feedback.notifications import Event

_log = log.get("events")
_STOP = object()
_BATCH = 1000
_GATHER_SECONDS = 0.05
DEFAULT_RETENTION = 30 * 86400.0
BUFFER_MAX_BYTES = 256 * 1024 * 1024
_PRUNE_EVERY = 3600.0
_PRUNE_BATCH = 500
_PRUNE_BATCHES_PER_TICK = 20  # then writes get their turn; the rest at the next tick
_RETRY_SECONDS = 2.0  # while unreachable: how often the writer tries the server again


def open_backend(database: Path | str) -> SqlBackend:
    if is_url(database):  # psycopg is imported only where it is used
        from relay.eventstore.postgres import PostgresBackend
        return PostgresBackend(str(database))
    from relay.eventstore.sqlite import SqliteBackend
    return SqliteBackend(Path(database))


class EventStore:
    def __init__(self, database: Path | str, *, node: str | None = None,
                 retention: float | None = DEFAULT_RETENTION, buffer: Path | None = None,
                 buffer_max_bytes: int = BUFFER_MAX_BYTES) -> None:
        self.database = database
        self.node = node or socket.gethostname()
        self.retention = retention
        self._ids = StepIds()
        self._backend = open_backend(database)
        # SQLite is local: a disk that refuses it would refuse a buffer too. Without a
        # buffer (the CLI) an unreachable server is an error for the caller.
        self._buffer = DiskBuffer(buffer, buffer_max_bytes) \
            if buffer is not None and is_url(database) else None
        self._down_since: float | None = None
        self._check_buffer = True  # rows a previous run left in the buffer: sent when idle
        self._next_try = 0.0
        self._next_prune = 0.0
        self._pruned = 0
        self._write_lock = threading.Lock()  # the writer and event() keep rows in order
        # SimpleQueue: put() is one C call, no Condition (a put per mail log step).
        self._pending: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    @property
    def describe(self) -> str:
        return self._backend.describe

    # -- writing (from the event loop: never blocks)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="event-store",
                                        daemon=True)
        self._writer.start()

    def step(self, queue_id: str, step: str, *, ses_message_id: str | None = None,
             sender: str | None = None, user: str | None = None,
             rcpts: Sequence[str] = (), **detail: Any) -> None:
        # The row built here, inline (one step per mail log line, on the event loop).
        row: StepRow = (self._ids(), time.time(), queue_id, step, ses_message_id, sender,
                        user, json.dumps(list(rcpts)), json.dumps(detail) if detail else None,
                        self.node)
        if self._writer is None:
            self._store([row], [])
        else:
            self._pending.put(row)

    def event(self, event: Event) -> bool:
        """Store one SES event (blocking: from a thread). False when it was stored
        already (an SNS retry, an SQS redelivery, another relay got it too)."""
        return self._store([], event_rows(self.node, event), fail=True) != 0

    def put_insights(self, rows: Sequence[tuple[str, str, float, dict[str, Any]]]) -> int:
        """Store Message Insights records (MessageId, recipient, when, record); one per
        message and recipient, the newest import winning. Returns how many were new."""
        return self._backend.put_insights(rows)

    def insights_cursor(self) -> float | None:
        """Where the last Message Insights import stopped (None: never ran)."""
        return self._backend.insights_cursor()

    def set_insights_cursor(self, until: float) -> None:
        self._backend.set_insights_cursor(until)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything handed to ``step`` is written (readers, tests)."""
        if self._writer is None:
            return  # written at once
        done = threading.Event()
        self._pending.put(done)
        done.wait(timeout)

    def close(self) -> None:
        if self._writer is not None:
            self._pending.put(_STOP)
            self._writer.join(10)
            self._writer = None
        self._backend.close()
        if self._buffer is not None:
            self._buffer.close()

    def _write_loop(self) -> None:
        """Write what ``step`` queued, in batches of at most _BATCH rows.

        After the first item of a batch the writer sleeps _GATHER_SECONDS and then takes
        whatever came meanwhile: one wake-up per batch. Waking for every step, as the queue
        does by itself, cost about six context switches per message under load. A steady
        stream is still written as it goes. Between batches, and when idle, it sends the
        disk buffer and prunes old rows."""
        behind = False  # the last batch was full: more is waiting, no need to gather
        while True:
            try:
                items = [self._pending.get(timeout=self._idle_timeout())]
            except queue.Empty:
                self._housekeeping()
                continue
            if not behind and isinstance(items[0], tuple):
                time.sleep(_GATHER_SECONDS)
            while len(items) < _BATCH:
                try:
                    items.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            behind = len(items) == _BATCH
            rows: list[Any] = [item for item in items if isinstance(item, tuple)]
            if rows:
                self._store(rows, [])
            self._housekeeping()
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in items):
                return

    def _idle_timeout(self) -> float:
        due = min(self._next_prune, self._next_try if self._down_since else float("inf"))
        return max(0.05, min(60.0, due - time.monotonic()))

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if self._buffer is not None and (self._down_since is not None or self._check_buffer) \
                and now >= self._next_try:
            with self._write_lock:
                self._drain()
        if now >= self._next_prune:
            self._prune()

    def _store(self, steps: list[StepRow], events: list[EventRow], fail: bool = False) -> int:
        """Write the rows now, or into the buffer while the server is unreachable (or
        older rows still wait there: order is kept). Returns the new event rows (-1:
        unknown, buffered). A write that fails otherwise is logged and dropped: history
        must never stop the writer, nor the mail; with *fail* it is raised (an SES event,
        which SQS or SNS then delivers again)."""
        with self._write_lock:
            if self._buffer is not None and not self._drain():
                return self._keep(steps, events)
            try:
                return self._backend.write(steps, events)
            except EventStoreError as e:
                if isinstance(e, Unreachable) and self._buffer is not None:
                    self._unreachable(e)
                    return self._keep(steps, events)
                if fail:
                    raise
                _log.error("event_store_write_failed", error=str(e),
                           rows=len(steps) + len(events),
                           hint="message history (trace, export) misses these rows; "
                                "check the disk and feedback.database")
                return 0

    def _drain(self) -> bool:
        """Send the buffer, oldest first; True when it is empty (the server answers)."""
        assert self._buffer is not None
        if self._down_since is not None and time.monotonic() < self._next_try:
            return False
        while True:
            try:
                last, steps, events = self._buffer.oldest(_BATCH)
                if not last:
                    break
                try:
                    self._backend.write(steps, events)
                except Unreachable as e:
                    self._unreachable(e)
                    return False
                except EventStoreError as e:  # rows the server refuses: never again
                    _log.error("event_store_write_failed", error=str(e),
                               rows=len(steps) + len(events), buffer=str(self._buffer.path),
                               hint="message history (trace, export) misses these rows")
                self._buffer.forget(last)
            except Exception as e:  # the buffer's own file (sqlite3, OSError): write past it
                _log.error("event_store_buffer_failed", error=str(e),
                           buffer=str(self._buffer.path))
                break
        self._check_buffer = False
        if self._down_since is not None:
            _log.info("event_store_recovered", database=self.describe,
                      down_seconds=round(time.monotonic() - self._down_since, 1),
                      dropped=self._buffer.dropped)
            self._down_since = None
            self._buffer.dropped = 0
        return True

    def _keep(self, steps: list[StepRow], events: list[EventRow]) -> int:
        assert self._buffer is not None
        try:
            if dropped := self._buffer.append(steps, events):
                _log.warning("event_store_buffer_full", dropped=dropped,
                             dropped_total=self._buffer.dropped,
                             buffer=str(self._buffer.path),
                             hint="history of these steps is lost; mail is not")
        except Exception as e:  # the buffer's own disk (sqlite3, OSError): history only
            _log.error("event_store_buffer_failed", error=str(e),
                       rows=len(steps) + len(events), buffer=str(self._buffer.path))
        return -1

    def _unreachable(self, e: EventStoreError) -> None:
        assert self._buffer is not None
        if self._down_since is None:
            self._down_since = time.monotonic()
            _log.error("event_store_unreachable", database=self.describe, error=str(e),
                       buffer=str(self._buffer.path),
                       hint="steps and events wait on local disk; mail is not affected")
        self._next_try = time.monotonic() + _RETRY_SECONDS

    def prune(self, before: float | None = None, batches: int | None = None) -> int:
        """Delete rows older than the retention (or *before*), in small batches; returns
        how many rows went. Blocking: the writer thread, or a test."""
        if before is None:
            if self.retention is None:
                return 0
            before = time.time() - self.retention
        gone = 0
        for _ in range(batches or 10**9):
            n = self._backend.prune(before, _PRUNE_BATCH)
            gone += n
            if n == 0:
                break
        return gone

    def _prune(self) -> None:
        self._next_prune = time.monotonic() + _PRUNE_EVERY
        if self.retention is None or self._down_since is not None:
            return
        try:
            gone = self.prune(batches=_PRUNE_BATCHES_PER_TICK)
        except EventStoreError as e:
            _log.warning("event_store_prune_failed", error=str(e))
            return
        self._pruned += gone
        if gone >= _PRUNE_BATCH * _PRUNE_BATCHES_PER_TICK:  # more to go: soon, not now
            self._next_prune = time.monotonic() + 1.0
        elif self._pruned:
            _log.info("event_store_pruned", rows=self._pruned,
                      retention_days=round(self.retention / 86400, 2))
            self._pruned = 0

    # -- reading (blocking: from a thread)

    def rates(self, since: float) -> Rates:
        """Delivered recipients and bounces/complaints about our own sends since *since*
        (the steps still waiting for the writer included)."""
        self.flush()
        return self._backend.rates(since)

    def trace(self, key: str) -> list[dict[str, Any]]:
        """Every step and event about a queue id, an SES MessageId or an address."""
        return self._backend.trace(key)

    def recent(self, limit: int = 50,
               steps: Sequence[str] = ("delivered", "deferred", "failed")
               ) -> list[dict[str, Any]]:
        """The latest *steps* (newest first): what the console's messages page lists."""
        self.flush()
        return self._backend.recent(limit, steps)

    def hourly(self, since: float, hours: int) -> dict[str, list[int]]:
        """Per hour from *since*: recipients delivered, messages failed, bounces and
        complaints (the overview's chart)."""
        self.flush()
        return self._backend.hourly(since, hours)

    def export(self, *, after_seq: int = 0, since: float = 0.0
               ) -> Iterator[dict[str, Any]]:
        """SES events with the relay's context (queue id, sender, user), oldest first."""
        return self._backend.export(after_seq, since)
