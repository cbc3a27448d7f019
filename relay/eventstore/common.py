"""What every event store backend shares: the rows written, the rates read, the story shown.

A step row and an event row carry the ``relay`` (node) that wrote them, so a fleet sharing
one PostgreSQL database can tell which relay did what, and a key that makes writing them
twice harmless: a step's ``step_id`` is made when the step happens (a row sent again from
the disk buffer after a reconnect is the same row), and an event's ``event_key`` is SES's
own identity of the event (its feedback id for bounces and complaints, else its type,
message and time), so an SNS retry, an SQS redelivery or the same event arriving by both
is stored once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.feedback.notifications import Event


def is_url(database: object) -> bool:
    """Whether feedback.database names a PostgreSQL server rather than a SQLite file."""
    return isinstance(database, str) and database.startswith(("postgresql://",
                                                              "postgres://"))


class EventStoreError(Exception):
    """The event store could not be read or written (the backend's error, mapped once)."""


class Unreachable(EventStoreError):
    """The database server cannot be reached now (PostgreSQL down or unreachable): writes
    go to the disk buffer meanwhile."""


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


# (step_id, at, queue_id, step, ses_message_id, sender, user, rcpts, detail, relay)
StepRow = tuple[str, float, str, str, str | None, str | None, str | None, str, str | None, str]
# (event_key, at, received_at, ses_message_id, kind, recipient, detail, relay)
EventRow = tuple[str, float, float, str, str, str, str | None, str]


class StepIds:
    """Unique step ids, made on the event loop at each step, so cheap: a random prefix per
    store (one per process: 64 bits, no two relays alike) and a counter (atomic in C).
    A uuid4 per step (an os.urandom call) doubled the cost of a step."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._next = itertools.count().__next__

    def __call__(self) -> str:
        return f"{self._prefix}{self._next():010x}"


_ids = StepIds()


def step_row(node: str, queue_id: str, step: str, ses_message_id: str | None,
             sender: str | None, user: str | None, rcpts: Sequence[str],
             detail: dict[str, Any]) -> StepRow:
    return (_ids(), time.time(), queue_id, step, ses_message_id, sender, user,
            json.dumps(list(rcpts)), json.dumps(detail) if detail else None, node)


def event_key(event: Event) -> str:
    """SES's identity of *event*, the same however often and by whichever path it comes."""
    if event.feedback_id:
        ident = f"feedback\0{event.feedback_id}"
    else:
        when = event.timestamp.isoformat() if event.timestamp else ""
        ident = f"{event.raw_type}\0{event.ses_message_id}\0{when}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def event_rows(node: str, event: Event) -> list[EventRow]:
    at = event.timestamp.timestamp() if event.timestamp else time.time()
    detail = {k: v for k, v in (("bounce_type", event.bounce_type),
                                ("bounce_subtype", event.bounce_subtype),
                                ("complaint_subtype", event.complaint_subtype),
                                ("feedback_id", event.feedback_id),
                                ("diagnostic", event.diagnostic)) if v}
    key = event_key(event)
    return [(key, at, time.time(), event.ses_message_id, str(event.kind), r,
             json.dumps(detail) if detail else None, node) for r in event.recipients or ("",)]


def step_dict(r: Sequence[Any]) -> dict[str, Any]:
    at, qid, step, mid, sender, user, rcpts, detail, node = r
    return {"at": at, "queue_id": qid, "step": step, "ses_message_id": mid,
            "sender": sender, "user": user, "rcpts": json.loads(rcpts or "[]"),
            **(json.loads(detail) if detail else {}), "relay": node}


def event_dict(r: Sequence[Any]) -> dict[str, Any]:
    seq, at, mid, kind, rcpt, detail, node = r
    return {"at": at, "seq": seq, "ses_message_id": mid, "kind": kind, "recipient": rcpt,
            **(json.loads(detail) if detail else {}), "relay": node}


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
