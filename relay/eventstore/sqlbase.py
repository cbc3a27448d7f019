"""The event store's SQL, written once for both backends (SQLite and PostgreSQL).

The statements use ``?`` placeholders; a backend turns them into its driver's style. The
few expressions the two dialects spell differently (JSON length, integer division) are the
backend's ``RCPTS`` and ``HOUR``. A backend provides ``_rows`` (a read) and ``_write`` (a
list of statements in one transaction, returning each one's row count).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from relay.eventstore.common import (
    EventRow,
    Rates,
    StepRow,
    event_dict,
    insights_summary,
    step_dict,
)

Statement = tuple[str, Sequence[Sequence[Any]]]

_STEP_COLUMNS = 'at, queue_id, step, ses_message_id, sender, "user", rcpts, detail, relay'
_INSERT_STEPS = ('INSERT INTO steps (step_id, at, queue_id, step, ses_message_id, sender, '
                 '"user", rcpts, detail, relay) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) '
                 "ON CONFLICT (step_id) DO NOTHING")
INSERT_EVENTS = ("INSERT INTO events (event_key, at, received_at, ses_message_id, kind, "
                  "recipient, detail, relay) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                  "ON CONFLICT (event_key, recipient) DO NOTHING")
# Old rows: by table, the column that says when and the row's key.
_AGED = (("steps", "at", "seq"), ("events", "at", "seq"),
         ("insights", "at", "ses_message_id, recipient"))


class SqlBackend:
    RCPTS = "coalesce(json_array_length(rcpts), 0)"  # a step's recipients, counted in SQL
    HOUR = "CAST((at - ?) / 3600 AS INTEGER)"
    describe = "?"

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _write(self, statements: Sequence[Statement]) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -- writing

    def write(self, steps: Sequence[StepRow], events: Sequence[EventRow]) -> int:
        """Store *steps* and *events* in one transaction, each row once however often it
        is written; returns how many event rows were new."""
        counts = self._write([(_INSERT_STEPS, steps), (INSERT_EVENTS, events)])
        return counts[1]

    def put_insights(self, rows: Sequence[tuple[str, str, float, dict[str, Any]]]) -> int:
        now = time.time()
        before = self._count_insights()
        # All of a range or none of it: the cursor moves only past stored ones.
        self._write([("INSERT INTO insights (ses_message_id, recipient, at, imported_at, "
                      "record) VALUES (?, ?, ?, ?, ?) ON CONFLICT (ses_message_id, "
                      "recipient) DO UPDATE SET at = excluded.at, imported_at = "
                      "excluded.imported_at, record = excluded.record",
                      [(mid, rcpt, at, now, json.dumps(record))
                       for mid, rcpt, at, record in rows])])
        return self._count_insights() - before

    def _count_insights(self) -> int:
        return int(self._rows("SELECT count(*) FROM insights")[0][0])

    def insights_cursor(self) -> float | None:
        rows = self._rows("SELECT until FROM insights_cursor")
        return float(rows[0][0]) if rows else None

    def set_insights_cursor(self, until: float) -> None:
        self._write([("INSERT INTO insights_cursor (id, until) VALUES (1, ?) ON CONFLICT "
                      "(id) DO UPDATE SET until = excluded.until", [(until,)])])

    def prune(self, before: float, batch: int) -> int:
        """Delete at most *batch* rows older than *before* from each table (one short
        transaction: other writers wait for a batch, never for the whole pruning)."""
        counts = self._write([
            (f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} "  # noqa: S608
             f"WHERE {column} < ? LIMIT ?)", [(before, batch)])
            for table, column, key in _AGED])
        return sum(counts)

    # -- reading

    def rates(self, since: float) -> Rates:
        # Counted by the database (its JSON functions), not one json.loads per row in
        # Python: the overview asks every few seconds, and a day is ~10^5 rows.
        delivered = int(self._rows(
            f"SELECT coalesce(sum({self.RCPTS}), 0) FROM steps "  # noqa: S608  # a constant
            "WHERE step = 'delivered' AND at >= ?", (since,))[0][0])
        counts = dict(self._rows(
            "SELECT kind, count(*) FROM events WHERE at >= ? AND kind IN "
            "('bounce', 'complaint') AND (kind = 'complaint' OR detail LIKE "
            "'%\"bounce_type\": \"Permanent\"%') GROUP BY kind", (since,)))
        return Rates(delivered, int(counts.get("bounce", 0)), int(counts.get("complaint", 0)))

    def trace(self, key: str) -> list[dict[str, Any]]:
        if "@" in key:
            address = key.lower()
            queue_ids = [q for (q,) in self._rows(
                "SELECT DISTINCT queue_id FROM steps WHERE rcpts LIKE ?",
                (f'%"{address}"%',))]
        else:
            queue_ids = [q for (q,) in self._rows(
                "SELECT DISTINCT queue_id FROM steps WHERE queue_id = ? OR "
                "ses_message_id = ?", (key, key))]
        story: list[dict[str, Any]] = []
        for qid in queue_ids:
            story += [step_dict(r) for r in self._rows(
                f"SELECT {_STEP_COLUMNS} FROM steps WHERE queue_id = ? "  # noqa: S608
                "ORDER BY at, seq", (qid,))]
        message_ids = {s["ses_message_id"] for s in story if s.get("ses_message_id")}
        if "@" not in key:
            message_ids.add(key)  # an SES MessageId the relay did not send: insights
        for mid in sorted(message_ids):
            story += [event_dict(r) for r in self._rows(
                "SELECT seq, at, ses_message_id, kind, recipient, detail, relay FROM events "
                "WHERE ses_message_id = ? ORDER BY at, seq", (mid,))]
        story += self._insights_rows(key, message_ids)
        if "@" in key:
            story = [s for s in story if s.get("kind") is None
                     or s.get("recipient") in ("", key.lower())]
        return sorted(story, key=lambda s: s["at"])

    def _insights_rows(self, key: str, message_ids: set[str]) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(message_ids))  # placeholders only: the values are bound
        rows = self._rows(
            "SELECT at, ses_message_id, recipient, record FROM insights WHERE "  # noqa: S608
            f"ses_message_id IN ({marks}) OR recipient = ? ORDER BY at",
            (*message_ids, key.lower()))
        return [{"at": at, "kind": "insights", "ses_message_id": mid, "recipient": rcpt,
                 **insights_summary(json.loads(record))} for at, mid, rcpt, record in rows]

    def recent(self, limit: int, steps: Sequence[str]) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(steps))  # placeholders only: the values are bound
        sql = (f"SELECT {_STEP_COLUMNS} FROM steps WHERE step IN ({marks}) "  # noqa: S608
               "ORDER BY seq DESC LIMIT ?")
        return [step_dict(r) for r in self._rows(sql, (*steps, limit))]

    def hourly(self, since: float, hours: int) -> dict[str, list[int]]:
        out = {k: [0] * hours for k in ("delivered", "failed", "bounce", "complaint")}
        rows = self._rows(
            f"SELECT {self.HOUR} AS hour, step, "  # noqa: S608  # constants
            f"sum(CASE step WHEN 'delivered' THEN {self.RCPTS} ELSE 1 END) FROM steps "
            "WHERE at >= ? AND step IN ('delivered', 'failed') GROUP BY hour, step "
            f"UNION ALL SELECT {self.HOUR} AS hour, kind, count(*) "
            "FROM events WHERE at >= ? AND kind IN ('bounce', 'complaint') "
            "GROUP BY hour, kind", (since, since, since, since))
        for hour, kind, n in rows:
            if 0 <= hour < hours:
                out[kind][hour] += int(n)
        return out

    def export(self, after_seq: int, since: float) -> Iterator[dict[str, Any]]:
        # The relay's context from the first 'delivered' step of the message (an index
        # lookup per event), whichever relay wrote it.
        rows = self._rows(
            'SELECT e.seq, e.at, e.ses_message_id, e.kind, e.recipient, e.detail, e.relay, '
            's.queue_id, s.sender, s."user" FROM events e LEFT JOIN steps s ON s.seq = '
            "(SELECT min(d.seq) FROM steps d WHERE d.ses_message_id = e.ses_message_id "
            "AND d.step = 'delivered') WHERE e.seq > ? AND e.at >= ? ORDER BY e.seq",
            (after_seq, since))
        for seq, at, mid, kind, rcpt, detail, node, qid, sender, user in rows:
            yield {"seq": seq, "at": at, "ses_message_id": mid, "kind": kind,
                   "recipient": rcpt, "queue_id": qid, "sender": sender, "user": user,
                   "relay": node, **(json.loads(detail) if detail else {})}
