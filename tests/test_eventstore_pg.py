"""The event store on a real PostgreSQL server (tests/peers/postgres.py)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import events, wait_until
from test_eventstore import bounce

from relay.eventstore import EventStore, migrations


def test_the_private_postgres_serves_a_fresh_database_and_keeps_it_across_a_restart(
        pg_server: Any, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    pg_server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_dsn, connect_timeout=2).close()
    pg_server.start()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_three_relays_starting_at_once_on_a_new_database_migrate_it_once(
        pg_dsn: str) -> None:
    barrier = threading.Barrier(3)
    failures: list[BaseException] = []

    def start(node: str) -> None:
        try:
            barrier.wait(10)
            store = EventStore(pg_dsn, node=node)
            store.step(f"Q-{node}", "queued")  # the first use connects and migrates
            store.close()
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=start, args=(f"relay-{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    with psycopg.connect(pg_dsn) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version "
                                               "ORDER BY version")]
        relays = sorted(r for (r,) in conn.execute("SELECT relay FROM steps"))
    assert versions == [n for n, _ in migrations.MIGRATIONS]
    assert relays == ["relay-0", "relay-1", "relay-2"]


def buffered_store(pg_dsn: str, tmp_path: Path, **kw: Any) -> EventStore:
    store = EventStore(pg_dsn, node="relay-a", buffer=tmp_path / "events-buffer.sqlite3", **kw)
    store.start()
    return store


def test_steps_written_while_postgres_is_down_wait_on_disk_and_arrive_once_in_order(
        pg_server: Any, pg_dsn: str, tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    store = buffered_store(pg_dsn, tmp_path)
    try:
        store.step("Q1", "queued")
        store.flush()
        pg_server.stop()
        for step in ("delivered", "deferred", "failed"):
            store.step("Q1", step)  # from the event loop: never waits for the server
        store.flush()
        assert store.event(bounce("M1", "jane@x.test"))  # SES events too
        store.step("Q1", "note")
        store.flush()
        assert len(events(logs, "event_store_unreachable")) == 1  # once per outage
        assert _buffered(tmp_path) == 5
        pg_server.start()
        wait_until(lambda: events(logs, "event_store_recovered"), timeout=30)
        assert [s.get("step") for s in store.trace("Q1")] == [
            "queued", "delivered", "deferred", "failed", "note"]
        assert len(store.trace("M1")) == 1
        assert _buffered(tmp_path) == 0
        store.step("Q1", "after")
        store.flush()
        assert store.trace("Q1")[-1]["step"] == "after"
    finally:
        store.close()
    with psycopg.connect(pg_dsn) as conn:  # nothing twice
        assert conn.execute("SELECT count(*) FROM steps").fetchone() == (6,)


def test_a_full_buffer_drops_the_newest_history_counts_it_and_logs_it(
        pg_server: Any, pg_dsn: str, tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    store = buffered_store(pg_dsn, tmp_path, buffer_max_bytes=1000)
    try:
        store.step("Q0", "queued")
        store.flush()
        pg_server.stop()
        for n in range(1, 21):
            store.step(f"Q{n}", "queued")
        store.flush()
        full = events(logs, "event_store_buffer_full")
        assert full and full[-1]["dropped_total"] > 0
        kept = _buffered(tmp_path)
        assert 0 < kept < 20 and kept + full[-1]["dropped_total"] == 20
        pg_server.start()
        wait_until(lambda: events(logs, "event_store_recovered"), timeout=30)
        [recovered] = events(logs, "event_store_recovered")
        assert recovered["dropped"] == 20 - kept
        assert store.trace(f"Q{kept}") != [] and store.trace(f"Q{kept + 1}") == []
    finally:
        store.close()


def test_trace_with_postgres_down_says_so_without_the_password(
        pg_server: Any, pg_dsn: str, make_setup) -> None:
    from test_cli import run

    setup = make_setup()
    dsn = pg_dsn.replace("postgresql:///", "postgresql://postgres:s3cret@/")
    setup.doc["feedback"]["database"] = dsn
    setup.write()
    pg_server.stop()
    done = run("trace", "Q1", "--config", str(setup.path))
    assert done.returncode == 1
    assert "the event store" in done.stderr and "s3cret" not in done.stderr + done.stdout


def test_what_a_stopped_relay_left_in_the_buffer_is_sent_by_the_next_even_when_idle(
        pg_server: Any, pg_dsn: str, tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    store = buffered_store(pg_dsn, tmp_path)
    pg_server.stop()
    store.step("Q1", "queued")
    store.flush()
    store.close()  # stopped while the server is down: the row waits on disk
    assert _buffered(tmp_path) == 1
    pg_server.start()
    again = buffered_store(pg_dsn, tmp_path)  # no step of its own
    try:
        wait_until(lambda: _buffered(tmp_path) == 0, timeout=30)
        assert [s["step"] for s in again.trace("Q1")] == ["queued"]
    finally:
        again.close()


def test_without_a_buffer_the_writer_logs_what_it_could_not_write_and_lives_on(
        pg_server: Any, pg_dsn: str, logs: list[dict[str, Any]]) -> None:
    store = EventStore(pg_dsn, node="relay-a")
    store.start()
    try:
        pg_server.stop()
        store.step("Q1", "queued")
        store.flush()
        assert events(logs, "event_store_write_failed")
        pg_server.start()
        store.step("Q2", "queued")
        store.flush()
        assert [s["step"] for s in store.trace("Q2")] == ["queued"]
    finally:
        store.close()


def _buffered(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "events-buffer.sqlite3") as db:
        return int(db.execute("SELECT count(*) FROM pending").fetchone()[0])
