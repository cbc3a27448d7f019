"""feedback.database (a SQLite file or a PostgreSQL URL), feedback.node, feedback.retention:
parsed like every other key, and a URL's password never written or shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay import config, running
from relay.errors import ConfigError

LISTENER = {"name": "a", "address": "127.0.0.1", "port": 2525, "tls": "none", "auth": "none",
            "trusted_networks": ["127.0.0.0/8"]}


def parse(tmp_path: Path, environ: dict[str, str] | None = None,
          **feedback: Any) -> config.Config:
    doc = {"hostname": "relay.example.com", "listeners": [LISTENER],
           "delivery": {"transport": "outbox"}, "feedback": feedback}
    return config.parse(doc, base=tmp_path, environ=environ or {})


def test_a_path_stays_a_sqlite_file_and_a_url_names_a_postgresql_database(
        tmp_path: Path) -> None:
    assert parse(tmp_path, database="events.sqlite3").feedback.database == \
        tmp_path / "events.sqlite3"
    url = "postgresql://relay:${PGPASS}@db.internal:5432/events"
    cfg = parse(tmp_path, {"PGPASS": "s3cret"}, database=url, node="relay-1",
                retention="7d")
    assert cfg.feedback.database == "postgresql://relay:s3cret@db.internal:5432/events"
    assert (cfg.feedback.node, cfg.feedback.retention) == ("relay-1", 7 * 86400)
    socket = parse(tmp_path, database="postgresql:///events?host=/run/postgresql")
    assert socket.feedback.database == "postgresql:///events?host=/run/postgresql"
    defaults = parse(tmp_path).feedback
    assert (defaults.node, defaults.retention) == (None, 30 * 86400)


@pytest.mark.parametrize(("feedback", "problem"), [
    ({"database": "postgresql://db.internal:5432"}, "feedback.database: a PostgreSQL URL"),
    ({"database": "postgresql:events"}, "feedback.database: a PostgreSQL URL"),
    ({"retention": "soon"}, "feedback.retention: must be a duration"),
    ({"retention": 0}, "feedback.retention: must be positive"),
    ({"node": ""}, "feedback.node: must not be empty"),
])
def test_a_bad_value_is_named(tmp_path: Path, feedback: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(tmp_path, **feedback)
    assert any(p.startswith(problem) for p in e.value.problems), e.value.problems


def test_the_running_record_keeps_no_database_password(tmp_path: Path) -> None:
    cfg = parse(tmp_path, database="postgresql://relay:s3cret@db.internal/events")
    flat = running.flatten(cfg)
    record = running.redacted(flat)
    assert "s3cret" not in str(record)
    assert running.differences(record, flat) == []  # the same URL: no restart asked
    other = running.flatten(parse(tmp_path, database="postgresql://relay:new@db/events"))
    assert running.differences(record, other) == ["feedback.database"]
