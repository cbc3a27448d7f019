"""The event store: every message's story, from SMTP receipt to SES's last word about it.

Two tables in one SQLite file (the state directory): ``steps``, what the relay did with a
message (received, queued, delivered with the SES MessageId, deferred, failed), and
``events``, what SES reported later (Delivery, Bounce, Complaint, Open, Click...), keyed by
SES MessageId, so ``ses-relay trace`` can join them by queue id, MessageId or address, and
``ses-relay events export`` can hand them to a warehouse incrementally.

Writes come from the event loop and must not wait for the disk: they go into a queue that
a writer thread commits in batches. Losing the last fraction of a second of history in a
crash is acceptable; the queue, not this store, is what guarantees delivery.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay import log, sqlitedb
from relay.feedback.notifications import Event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS steps (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    at             REAL NOT NULL,
    queue_id       TEXT NOT NULL,
    step           TEXT NOT NULL,
    ses_message_id TEXT,
    sender         TEXT,
    user           TEXT,
    rcpts          TEXT,             -- JSON list
    detail         TEXT              -- JSON object
);
CREATE INDEX IF NOT EXISTS steps_queue ON steps (queue_id);
CREATE INDEX IF NOT EXISTS steps_message ON steps (ses_message_id);
CREATE TABLE IF NOT EXISTS events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    at             REAL NOT NULL,    -- when SES says it happened
    received_at    REAL NOT NULL,
    ses_message_id TEXT NOT NULL,
    kind           TEXT NOT NULL,
    recipient      TEXT,
    detail         TEXT
);
CREATE INDEX IF NOT EXISTS events_message ON events (ses_message_id);
CREATE INDEX IF NOT EXISTS events_recipient ON events (recipient);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE INDEX IF NOT EXISTS steps_at ON steps (at);
-- SES's Message Insights, imported (relay.insights): one record per message and recipient,
-- replaced by a later import of the same message.
CREATE TABLE IF NOT EXISTS insights (
    ses_message_id TEXT NOT NULL,
    recipient      TEXT NOT NULL,
    at             REAL NOT NULL,
    imported_at    REAL NOT NULL,
    record         TEXT NOT NULL,    -- JSON object, as SES exported it
    PRIMARY KEY (ses_message_id, recipient)
);
CREATE INDEX IF NOT EXISTS insights_recipient ON insights (recipient);
-- Where the last import stopped (one row).
CREATE TABLE IF NOT EXISTS insights_cursor (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    until REAL NOT NULL
);
"""

_log = log.get("events")
# A step's recipients (a JSON array; none when NULL), counted in SQL.
_RCPTS = "coalesce(json_array_length(rcpts), 0)"
_STOP = object()
_BATCH = 1000
_GATHER_SECONDS = 0.05


@dataclass(frozen=True)
class Rates:
    delivered: int
    bounces: int
    complaints: int

    @property
    def bounce_rate(self) -> float:
        return self.bounces / self.delivered if self.delivered else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complaints / self.delivered if self.delivered else 0.0


class EventStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlitedb.connect(path, _SCHEMA)
        self._lock = threading.Lock()
        # SimpleQueue: put() is one C call, no Condition (a put per mail log step).
        self._pending: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    # -- writing (from the event loop: never blocks)

    def start(self) -> None:
        self._writer = threading.Thread(target=self._write_loop, name="event-store",
                                        daemon=True)
        self._writer.start()

    def step(self, queue_id: str, step: str, *, ses_message_id: str | None = None,
             sender: str | None = None, user: str | None = None,
             rcpts: Sequence[str] = (), **detail: Any) -> None:
        row = (time.time(), queue_id, step, ses_message_id, sender, user,
               json.dumps(list(rcpts)), json.dumps(detail) if detail else None)
        if self._writer is None:
            self._insert_steps([row])
        else:
            self._pending.put(("steps", row))

    def event(self, event: Event) -> None:
        at = event.timestamp.timestamp() if event.timestamp else time.time()
        detail = {k: v for k, v in (("bounce_type", event.bounce_type),
                                    ("bounce_subtype", event.bounce_subtype),
                                    ("complaint_subtype", event.complaint_subtype),
                                    ("feedback_id", event.feedback_id),
                                    ("diagnostic", event.diagnostic)) if v}
        rows = [(at, time.time(), event.ses_message_id, str(event.kind), r,
                 json.dumps(detail) if detail else None) for r in event.recipients or ("",)]
        with self._lock:
            self._db.executemany("INSERT INTO events (at, received_at, ses_message_id, kind, "
                                 "recipient, detail) VALUES (?, ?, ?, ?, ?, ?)", rows)

    def put_insights(self, rows: Sequence[tuple[str, str, float, dict[str, Any]]]) -> int:
        """Store Message Insights records (MessageId, recipient, when, record); one per
        message and recipient, the newest import winning. Returns how many were new."""
        now = time.time()
        with self._lock:
            before = self._count_insights()
            self._db.execute("BEGIN")
            try:  # all of a range or none of it: the cursor moves only past stored ones
                self._db.executemany(
                    "INSERT INTO insights (ses_message_id, recipient, at, imported_at, "
                    "record) VALUES (?, ?, ?, ?, ?) ON CONFLICT (ses_message_id, recipient) "
                    "DO UPDATE SET at = excluded.at, imported_at = excluded.imported_at, "
                    "record = excluded.record",
                    [(mid, rcpt, at, now, json.dumps(record)) for mid, rcpt, at, record in rows])
                self._db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise
            return self._count_insights() - before

    def _count_insights(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM insights").fetchone()[0])

    def insights_cursor(self) -> float | None:
        """Where the last Message Insights import stopped (None: never ran)."""
        with self._lock:
            row = self._db.execute("SELECT until FROM insights_cursor").fetchone()
        return float(row[0]) if row else None

    def set_insights_cursor(self, until: float) -> None:
        with self._lock:
            self._db.execute("INSERT INTO insights_cursor (id, until) VALUES (1, ?) ON "
                             "CONFLICT (id) DO UPDATE SET until = excluded.until", (until,))

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
        with self._lock:
            self._db.close()

    def _write_loop(self) -> None:
        """Write what ``step`` queued, in batches of at most _BATCH rows.

        After the first item of a batch the writer sleeps _GATHER_SECONDS and then takes
        whatever came meanwhile: one wake-up per batch. Waking for every step, as the queue
        does by itself, cost about six context switches per message under load. A steady
        stream is still written as it goes. A batch that cannot be written is logged and
        dropped: history must never stop the writer, nor the mail."""
        behind = False  # the last batch was full: more is waiting, no need to gather
        while True:
            items = [self._pending.get()]
            if not behind and isinstance(items[0], tuple):
                time.sleep(_GATHER_SECONDS)
            while len(items) < _BATCH:
                try:
                    items.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            behind = len(items) == _BATCH
            rows = [item[1] for item in items if isinstance(item, tuple)]
            if rows:
                self._insert_steps(rows)
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is _STOP for item in items):
                return

    def _insert_steps(self, rows: list[Any]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO steps (at, queue_id, step, ses_message_id, "
                                     "sender, user, rcpts, detail) VALUES "
                                     "(?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the writer must live on
                        self._db.execute("ROLLBACK")
                _log.error("event_store_write_failed", error=str(e), rows=len(rows),
                           hint="message history (trace, export) misses these steps; "
                                "check the disk and feedback.database")

    # -- reading

    def rates(self, since: float) -> Rates:
        """Delivered recipients and bounces/complaints about our own sends since *since*
        (the steps still waiting for the writer included)."""
        self.flush()
        with self._lock:
            # Counted by SQLite (its JSON functions), not one json.loads per row in Python:
            # the overview asks every few seconds, and a day is ~10^5 rows.
            delivered = int(self._db.execute(
                f"SELECT coalesce(sum({_RCPTS}), 0) FROM steps "  # noqa: S608  # a constant
                "WHERE step = 'delivered' AND at >= ?", (since,)).fetchone()[0])
            counts = dict(self._db.execute(
                "SELECT kind, count(*) FROM events WHERE at >= ? AND kind IN "
                "('bounce', 'complaint') AND (kind = 'complaint' OR detail LIKE "
                "'%\"bounce_type\": \"Permanent\"%') GROUP BY kind", (since,)).fetchall())
        return Rates(delivered, int(counts.get("bounce", 0)), int(counts.get("complaint", 0)))

    def trace(self, key: str) -> list[dict[str, Any]]:
        """Every step and event about a queue id, an SES MessageId or an address."""
        with self._lock:
            if "@" in key:
                address = key.lower()
                queue_ids = [q for (q,) in self._db.execute(
                    "SELECT DISTINCT queue_id FROM steps WHERE rcpts LIKE ?",
                    (f'%"{address}"%',))]
            else:
                queue_ids = [q for (q,) in self._db.execute(
                    "SELECT DISTINCT queue_id FROM steps WHERE queue_id = ? OR "
                    "ses_message_id = ?", (key, key))]
            story: list[dict[str, Any]] = []
            for qid in queue_ids:
                story += [self._step_row(r) for r in self._db.execute(
                    "SELECT at, queue_id, step, ses_message_id, sender, user, rcpts, detail "
                    "FROM steps WHERE queue_id = ? ORDER BY seq", (qid,))]
            message_ids = {s["ses_message_id"] for s in story if s.get("ses_message_id")}
            if "@" not in key:
                message_ids.add(key)  # an SES MessageId the relay did not send: insights
            for mid in sorted(message_ids):
                story += [self._event_row(r) for r in self._db.execute(
                    "SELECT seq, at, ses_message_id, kind, recipient, detail FROM events "
                    "WHERE ses_message_id = ? ORDER BY at, seq", (mid,))]
            story += self._insights_rows(key, message_ids)
            if "@" in key:
                story = [s for s in story if s.get("kind") is None
                         or s.get("recipient") in ("", key.lower())]
        return sorted(story, key=lambda s: s["at"])

    def recent(self, limit: int = 50,
               steps: Sequence[str] = ("delivered", "deferred", "failed")
               ) -> list[dict[str, Any]]:
        """The latest *steps* (newest first): what the console's messages page lists."""
        self.flush()
        marks = ", ".join("?" * len(steps))  # placeholders only: the values are bound
        columns = "at, queue_id, step, ses_message_id, sender, user, rcpts, detail"
        sql = f"SELECT {columns} FROM steps WHERE step IN ({marks}) ORDER BY seq DESC LIMIT ?"  # noqa: S608
        with self._lock:
            rows = self._db.execute(sql, (*steps, limit)).fetchall()
        return [self._step_row(r) for r in rows]

    def hourly(self, since: float, hours: int) -> dict[str, list[int]]:
        """Per hour from *since*: recipients delivered, messages failed, bounces and
        complaints (the overview's chart)."""
        self.flush()
        out = {k: [0] * hours for k in ("delivered", "failed", "bounce", "complaint")}
        with self._lock:
            rows = self._db.execute(
                f"SELECT CAST((at - ?1) / 3600 AS INTEGER) AS hour, step, "  # noqa: S608
                f"sum(CASE step WHEN 'delivered' THEN {_RCPTS} ELSE 1 END) FROM steps "
                "WHERE at >= ?1 AND step IN ('delivered', 'failed') GROUP BY hour, step "
                "UNION ALL SELECT CAST((at - ?1) / 3600 AS INTEGER) AS hour, kind, count(*) "
                "FROM events WHERE at >= ?1 AND kind IN ('bounce', 'complaint') "
                "GROUP BY hour, kind", (since,)).fetchall()
        for hour, kind, n in rows:
            if 0 <= hour < hours:
                out[kind][hour] += int(n)
        return out

    def export(self, *, after_seq: int = 0, since: float = 0.0
               ) -> Iterator[dict[str, Any]]:
        """SES events with the relay's context (queue id, sender, user), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT e.seq, e.at, e.ses_message_id, e.kind, e.recipient, e.detail, "
                "s.queue_id, s.sender, s.user FROM events e LEFT JOIN steps s ON "
                "s.ses_message_id = e.ses_message_id AND s.step = 'delivered' "
                "WHERE e.seq > ? AND e.at >= ? GROUP BY e.seq ORDER BY e.seq",
                (after_seq, since)).fetchall()
        for seq, at, mid, kind, rcpt, detail, qid, sender, user in rows:
            yield {"seq": seq, "at": at, "ses_message_id": mid, "kind": kind,
                   "recipient": rcpt, "queue_id": qid, "sender": sender, "user": user,
                   **(json.loads(detail) if detail else {})}

    def _insights_rows(self, key: str, message_ids: set[str]) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(message_ids))  # placeholders only: the values are bound
        rows = self._db.execute(
            "SELECT at, ses_message_id, recipient, record FROM insights WHERE "  # noqa: S608
            f"ses_message_id IN ({marks}) OR recipient = ? ORDER BY at",
            (*message_ids, key.lower())).fetchall()
        return [{"at": at, "kind": "insights", "ses_message_id": mid, "recipient": rcpt,
                 **insights_summary(json.loads(record))} for at, mid, rcpt, record in rows]

    @staticmethod
    def _step_row(r: tuple[Any, ...]) -> dict[str, Any]:
        at, qid, step, mid, sender, user, rcpts, detail = r
        return {"at": at, "queue_id": qid, "step": step, "ses_message_id": mid,
                "sender": sender, "user": user, "rcpts": json.loads(rcpts or "[]"),
                **(json.loads(detail) if detail else {})}

    @staticmethod
    def _event_row(r: tuple[Any, ...]) -> dict[str, Any]:
        seq, at, mid, kind, rcpt, detail = r
        return {"at": at, "seq": seq, "ses_message_id": mid, "kind": kind, "recipient": rcpt,
                **(json.loads(detail) if detail else {})}


_SUMMARY = {"isp": "isp", "lastdeliveryevent": "last_delivery",
            "lastengagementevent": "last_engagement"}


def insights_summary(record: dict[str, Any]) -> dict[str, Any]:
    """What ``trace`` shows of a Message Insights record: the ISP, the last delivery and
    engagement events, and the events SES lists (GetMessageInsights' shape)."""
    fields = {k.replace("_", "").lower(): v for k, v in record.items()}
    out = {name: fields[k] for k, name in _SUMMARY.items() if fields.get(k)}
    events = [str(e.get("Type")) for i in fields.get("insights") or [] if isinstance(i, dict)
              for e in i.get("Events") or [] if isinstance(e, dict) and e.get("Type")]
    if events:
        out["events"] = ",".join(events)
    return out


def story_lines(story: list[dict[str, Any]]) -> list[tuple[float, str, str]]:
    """``ses-relay trace``'s lines, as data: (when, what, details) per step or event."""
    lines = []
    for entry in story:
        entry = dict(entry)
        when = float(entry.pop("at"))
        what = entry.pop("step", None) or entry.pop("kind", "?")
        entry.pop("seq", None)
        details = " ".join(f"{k}={v}" for k, v in entry.items() if v not in (None, "", []))
        lines.append((when, str(what), details))
    return lines
