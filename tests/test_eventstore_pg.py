"""The event store on a real PostgreSQL server (tests/peers/postgres.py)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest


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
