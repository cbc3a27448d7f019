"""The event store over both backends: one SQLite file, and a real PostgreSQL server
(tests/peers/postgres.py). Each test runs on each: the same promises hold."""

from __future__ import annotations

import datetime
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import events

from relay.eventstore import EventStore, migrations, story_lines
from relay.feedback.notifications import Event, Kind

DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    if request.param == "sqlite":
        return tmp_path / "events.sqlite3"
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def stores(database: Path | str) -> Iterator[Any]:
    """Open stores on *database*, as relays named by the test; all closed at the end."""
    opened: list[EventStore] = []

    def open_as(node: str, **kw: Any) -> EventStore:
        opened.append(EventStore(database, node=node, **kw))
        return opened[-1]

    yield open_as
    for store in opened:
        store.close()


def bounce(message_id: str, rcpt: str, *, feedback_id: str | None = None,
           at: datetime.datetime | None = None) -> Event:
    return Event(kind=Kind.BOUNCE, raw_type="Bounce", ses_message_id=message_id,
                 timestamp=at or datetime.datetime.now(datetime.UTC), recipients=(rcpt,),
                 bounce_type="Permanent", bounce_subtype="General",
                 feedback_id=feedback_id or f"fb-{message_id}")


def delivery(message_id: str, rcpt: str, at: datetime.datetime) -> Event:
    return Event(kind=Kind.DELIVERY, raw_type="Delivery", ses_message_id=message_id,
                 timestamp=at, recipients=(rcpt,))


def test_trace_from_one_relay_shows_what_another_relay_wrote(stores) -> None:
    a, b = stores("relay-a"), stores("relay-b")
    a.start()
    a.step("Q1", "queued", sender="s@x.test", user="app", rcpts=["jane@x.test"])
    a.step("Q1", "delivered", ses_message_id="M1", sender="s@x.test", user="app",
           rcpts=["jane@x.test"])
    a.flush()
    assert b.event(bounce("M1", "jane@x.test"))
    story = b.trace("Q1")
    assert [(s.get("step") or s["kind"], s["relay"]) for s in story] == [
        ("queued", "relay-a"), ("delivered", "relay-a"), ("bounce", "relay-b")]
    assert b.trace("M1") == story and b.trace("jane@x.test") == story
    assert "relay=relay-a" in story_lines(story)[0][2]  # what `ses-relay trace` prints
    [row] = list(a.export())
    assert (row["queue_id"], row["kind"], row["relay"], row["user"]) == (
        "Q1", "bounce", "relay-b", "app")


def test_rates_recent_and_hourly_count_the_fleet(stores) -> None:
    a, b = stores("relay-a"), stores("relay-b")
    a.step("Q1", "delivered", ses_message_id="M1", rcpts=["a@x.test", "b@x.test"])
    b.step("Q2", "delivered", ses_message_id="M2", rcpts=["c@x.test"])
    b.step("Q3", "failed", rcpts=["d@x.test"])
    a.event(bounce("M1", "a@x.test"))
    now = time.time()
    rates = b.rates(now - 60)
    assert (rates.delivered, rates.bounces, rates.complaints) == (3, 1, 0)
    assert [r["queue_id"] for r in a.recent()] == ["Q3", "Q2", "Q1"]
    since = (now // 3600) * 3600
    assert a.hourly(since, 1) == {"delivered": [3], "failed": [1], "bounce": [1],
                                  "complaint": [0]}


def test_an_ses_event_delivered_again_is_stored_once_and_counted_once(stores) -> None:
    a, b = stores("relay-a"), stores("relay-b")
    a.step("Q1", "delivered", ses_message_id="M1", rcpts=["jane@x.test"])
    event = bounce("M1", "jane@x.test")
    assert a.event(event) is True
    # An SQS redelivery to the same relay, the SNS copy to another: the same event.
    assert a.event(event) is False
    assert b.event(event) is False
    at = datetime.datetime.now(datetime.UTC)
    assert a.event(delivery("M1", "jane@x.test", at)) is True
    assert b.event(delivery("M1", "jane@x.test", at)) is False  # no feedback id: by time
    assert a.rates(time.time() - 60).bounces == 1
    assert [s.get("kind") for s in a.trace("M1") if "kind" in s] == ["bounce", "delivery"]
    assert len(list(b.export())) == 2


def test_a_step_written_twice_is_stored_once(stores) -> None:
    from relay.eventstore.common import step_row

    a = stores("relay-a")
    row = step_row("relay-a", "Q1", "queued", None, None, None, ["x@x.test"], {})
    a._backend.write([row], [])
    a._backend.write([row], [])  # sent again from the disk buffer after a reconnect
    assert [s["step"] for s in a.trace("Q1")] == ["queued"]


def test_retention_prunes_old_rows_in_batches_and_keeps_the_rest(
        stores, monkeypatch: pytest.MonkeyPatch, logs: list[dict[str, Any]]) -> None:
    import relay.eventstore.common as common
    import relay.eventstore.store as store_mod

    monkeypatch.setattr(store_mod, "_PRUNE_BATCH", 7)  # several batches
    old = time.time() - 31 * DAY
    a = stores("relay-a", retention=30 * DAY)
    with monkeypatch.context() as m:
        m.setattr(common.time, "time", lambda: old)
        for n in range(20):
            a.step(f"OLD{n}", "delivered", ses_message_id=f"O{n}", rcpts=["o@x.test"])
    old_at = datetime.datetime.fromtimestamp(old, datetime.UTC)
    a.event(bounce("O1", "o@x.test", at=old_at))
    a.step("NEW", "delivered", ses_message_id="N1", rcpts=["n@x.test"])
    a.event(bounce("N1", "n@x.test"))
    a.start()  # the writer prunes at start, then hourly
    a.flush()
    assert a.trace("OLD3") == [] and a.trace("O1") == []
    assert [s.get("step") or s["kind"] for s in a.trace("NEW")] == ["delivered", "bounce"]
    [pruned] = events(logs, "event_store_pruned")
    assert pruned["rows"] == 21


def test_a_file_made_by_the_old_schema_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with sqlite3.connect(path) as db:  # relay.events' schema before versioning, with a row
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO steps (at, queue_id, step, ses_message_id, rcpts) VALUES "
                   "(?, 'QOLD', 'delivered', 'MOLD', '[\"old@x.test\"]')", (time.time(),))
        db.execute("INSERT INTO events (at, received_at, ses_message_id, kind, recipient) "
                   "VALUES (?, ?, 'MOLD', 'bounce', 'old@x.test')", (time.time(),) * 2)
    store = EventStore(path, node="relay-a")
    try:
        assert [s.get("step") or s["kind"] for s in store.trace("QOLD")] == ["delivered",
                                                                            "bounce"]
        store.step("QOLD", "note")
        assert store.event(bounce("MOLD", "old@x.test"))
        assert store.rates(0).delivered == 1
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version")]
    assert versions == [n for n, _ in migrations.MIGRATIONS]
    EventStore(path).close()  # opened again: nothing left to do, nothing fails


def test_a_schema_newer_than_the_relay_is_refused(database: Path | str) -> None:
    from relay.eventstore import EventStoreError

    EventStore(database).close()
    store = EventStore(database)
    store._backend._write([("INSERT INTO schema_version (version, applied_at) VALUES "
                            "(?, ?)", [(migrations.LATEST + 1, 0.0)])])
    store.close()
    with pytest.raises(EventStoreError, match="newer than this relay"):
        EventStore(database).trace("x")


OLD_SCHEMA = """
CREATE TABLE steps (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
    queue_id TEXT NOT NULL, step TEXT NOT NULL, ses_message_id TEXT, sender TEXT, user TEXT,
    rcpts TEXT, detail TEXT);
CREATE INDEX steps_queue ON steps (queue_id);
CREATE INDEX steps_message ON steps (ses_message_id);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
    received_at REAL NOT NULL, ses_message_id TEXT NOT NULL, kind TEXT NOT NULL,
    recipient TEXT, detail TEXT);
CREATE INDEX events_message ON events (ses_message_id);
CREATE INDEX events_recipient ON events (recipient);
CREATE INDEX events_at ON events (at);
CREATE INDEX steps_at ON steps (at);
CREATE TABLE insights (ses_message_id TEXT NOT NULL, recipient TEXT NOT NULL,
    at REAL NOT NULL, imported_at REAL NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (ses_message_id, recipient));
CREATE INDEX insights_recipient ON insights (recipient);
CREATE TABLE insights_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), until REAL NOT NULL);
"""
