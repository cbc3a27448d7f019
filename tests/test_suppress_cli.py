"""`ses-relay suppress` and `ses-relay user update`, and their effect on a running relay."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup
from test_cli import own_users_file, run

from relay.suppression import SuppressionList


def cfg(setup: Setup) -> list[str]:
    return ["--config", str(setup.path)]


def test_add_list_remove_and_the_relay_refuses_at_rcpt(setup: Setup, start_relay) -> None:
    assert run("suppress", "add", "Gone@Example.net", *cfg(setup)).returncode == 0
    assert run("suppress", "add", "@bounced.example", "--reason", "bounce",
               *cfg(setup)).returncode == 0
    listing = run("suppress", "list", *cfg(setup)).stdout.splitlines()
    assert [line.split("\t")[:3] for line in listing] == [
        ["@bounced.example", "bounce", "cli"], ["gone@example.net", "manual", "cli"]]
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.mail(SENDER)
        assert s.rcpt("gone@example.net")[0] == 550
        assert s.rcpt("x@bounced.example")[0] == 550
        # The CLI and the relay share the database: a removal takes effect at once.
        assert run("suppress", "remove", "gone@example.net", *cfg(setup)).returncode == 0
        assert s.rcpt("gone@example.net")[0] == 250


def test_an_expired_entry_no_longer_suppresses(setup: Setup) -> None:
    db = SuppressionList(Path(setup.doc["suppression"]["database"]))
    db.add("old@example.net", "bounce", expires_at=1.0)
    db.add("new@example.net", "bounce")
    assert db.lookup("old@example.net") is None
    assert db.lookup("new@example.net") is not None
    db.close()


def test_import_of_100k_rows_is_idempotent_and_export_round_trips(
        setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    with path.open("w") as f:
        f.write("email,reason\n")
        for i in range(100_000):
            f.write(f"user{i}@example.net,{'complaint' if i % 10 == 0 else ''}\n")
    first = run("suppress", "import", str(path), *cfg(setup))
    assert first.returncode == 0, first.stderr
    assert "100000 rows: 100000 new" in first.stdout
    again = run("suppress", "import", str(path), *cfg(setup))
    assert "100000 rows: 0 new, 100000 already present" in again.stdout
    exported = list(csv.DictReader(io.StringIO(run("suppress", "export", *cfg(setup)).stdout)))
    assert len(exported) == 100_000
    reasons = {row["address"]: row["reason"] for row in exported}
    assert reasons["user10@example.net"] == "complaint"
    assert reasons["user11@example.net"] == "import"


def test_a_bad_import_file_changes_nothing(setup: Setup, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("good@example.net\nnot an address\nalso@example.net\n")
    result = run("suppress", "import", str(path), *cfg(setup))
    assert result.returncode == 1
    assert "line 2" in result.stderr and "Traceback" not in result.stderr
    assert run("suppress", "list", *cfg(setup)).stdout == ""


def test_user_update_sets_sender_rights_that_the_relay_enforces(
        setup: Setup, tmp_path: Path, start_relay) -> None:
    own_users_file(setup, tmp_path)
    assert run("user", "add", "wp", *cfg(setup), stdin="wp-password-1\n").returncode == 0
    result = run("user", "update", "wp", "--allow-sender", "blog@example.com",
                 "--allow-sender", "@news.example.com", *cfg(setup))
    assert result.returncode == 0, result.stderr
    assert "blog@example.com, @news.example.com" in result.stdout
    bad = run("user", "update", "wp", "--allow-sender", "not valid", *cfg(setup))
    assert bad.returncode == 2
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca, "wp", "wp-password-1") as s:
        assert s.mail("ceo@example.com")[0] == 553
        assert s.mail("blog@example.com")[0] == 250
        s.rset()
        assert s.mail("alerts@news.example.com")[0] == 250
