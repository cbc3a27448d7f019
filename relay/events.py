"""The event store's old import path: relay.eventstore is the package."""

from relay.eventstore import EventStore, EventStoreError, Rates, insights_summary, story_lines

__all__ = ["EventStore", "EventStoreError", "Rates", "insights_summary", "story_lines"]
