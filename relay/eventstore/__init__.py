"""The event store (relay.eventstore.store), on SQLite or PostgreSQL.

``open_store(cfg)`` is how the relay and the CLI open it from the configuration.
"""

from __future__ import annotations

from relay.config import Config
from relay.eventstore.common import (
    EventStoreError,
    Rates,
    Unreachable,
    insights_summary,
    story_lines,
)
from relay.eventstore.store import EventStore

__all__ = ["EventStore", "EventStoreError", "Rates", "Unreachable", "insights_summary",
           "open_store", "story_lines"]


def open_store(cfg: Config, *, buffered: bool = True) -> EventStore:
    """The configured store (blocking: may connect and migrate). *buffered*: the relay's
    writer keeps rows on local disk while PostgreSQL is unreachable (the state folder,
    beside the queue); the CLI reads and needs none."""
    fc = cfg.feedback
    buffer = cfg.queue.directory.parent / "events-buffer.sqlite3" if buffered else None
    return EventStore(fc.database, node=fc.node, retention=fc.retention, buffer=buffer)
