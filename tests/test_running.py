"""The running configuration key by key (relay.running): key paths, what a reload applies,
and secrets never written."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from conftest import Setup

from relay import running
from relay.queueshare import Share


def test_keys_are_paths_listeners_by_name(setup: Setup) -> None:
    flat = running.flatten(setup.load())
    assert flat["listeners.submission.port"] == 0  # any free port (the test harness)
    assert flat["listeners.submissions.tls"] == "implicit"
    assert flat["limits.max_auth_failures"] == 5
    assert flat["delivery.transport"] == "outbox"
    assert "source" not in flat


def test_what_a_reload_applies_and_what_needs_a_restart() -> None:
    assert not running.needs_restart("limits.max_connections_per_ip")
    assert not running.needs_restart("metrics.port")
    assert not running.needs_restart("feedback.http.port")
    assert not running.needs_restart("delivery.max_send_rate")
    for key in ("queue.directory", "delivery.region", "listeners.submission.port",
                "feedback.database", "suppression.database", "workers", "somethingnew"):
        assert running.needs_restart(key), key
    # TLS: renewed live, not turned on or off.
    assert not running.needs_restart("tls.cert", {"tls.cert": "a"}, {"tls.cert": "b"})
    assert running.needs_restart("tls.cert", {"tls.cert": None}, {"tls.cert": "b"})


def test_a_reload_keeps_what_it_cannot_apply(setup: Setup, tmp_path: Path) -> None:
    old = setup.load()
    new = dataclasses.replace(
        old, queue=dataclasses.replace(old.queue, directory=tmp_path / "q2"),
        limits=dataclasses.replace(old.limits, max_recipients=7),
        delivery=dataclasses.replace(old.delivery, region="eu-west-1", max_send_rate=3.0))
    applied = running.applicable(old, new, tls_on=True)
    assert running.differences(running.flatten(applied), running.flatten(new)) == [
        "delivery.region", "queue.directory"]
    assert applied.limits.max_recipients == 7 and applied.delivery.max_send_rate == 3.0


def test_secrets_are_recorded_as_digests_that_still_compare(setup: Setup) -> None:
    cfg = setup.load()
    cfg = dataclasses.replace(cfg, delivery=dataclasses.replace(
        cfg.delivery, smtp=dataclasses.replace(cfg.delivery.smtp, password="s3cret-x")))
    cfg.queue.directory.mkdir()
    running.write(cfg, 1)
    record = running.read(cfg.queue.directory)
    assert "s3cret-x" not in (cfg.queue.directory / running.STATE_FILE).read_text()
    assert running.differences(record["config"], running.flatten(cfg)) == []
    other = dataclasses.replace(cfg, delivery=dataclasses.replace(
        cfg.delivery, smtp=dataclasses.replace(cfg.delivery.smtp, password="other")))
    assert running.differences(record["config"], running.flatten(other)) == [
        "delivery.smtp.password"]


def test_a_file_naming_the_port_the_relay_got_for_port_0_asks_for_what_runs() -> None:
    ran = {"metrics.port": 0}
    assert running.differences(ran, {"metrics.port": 0}, {"metrics.port": 4321}) == []
    assert running.differences(ran, {"metrics.port": 4321}, {"metrics.port": 4321}) == []
    assert running.differences(ran, {"metrics.port": 9}, {"metrics.port": 4321}) == [
        "metrics.port"]


def test_pending_says_what_the_file_changed_since(setup: Setup) -> None:
    current = setup.load()
    assert running.pending(current) == ([], [])
    setup.doc["limits"] = {"max_recipients": 7}
    setup.doc["queue"]["max_age"] = "2h"
    setup.write()
    assert running.pending(current) == (["limits.max_recipients"], ["queue.max_age"])
    setup.path.write_text("listeners: [")
    assert running.pending(current) is None


def test_what_a_reload_keeps_is_what_needs_restart_says(setup: Setup, tmp_path: Path) -> None:
    """Two statements of one rule: applicable (what app.reload applies) and LIVE (what
    check-config --running, the doctor and the console say a reload applies)."""
    old = setup.load()
    rep = dataclasses.replace
    new = rep(old, hostname="other.test", workers=3,
              limits=rep(old.limits, max_recipients=7),
              queue=rep(old.queue, directory=tmp_path / "q2"),
              delivery=rep(old.delivery, region="eu-west-1", max_send_rate=3.0),
              suppression=rep(old.suppression, database=tmp_path / "s.db"),
              feedback=rep(old.feedback, database=tmp_path / "f.db"),
              web=rep(old.web, max_headers=20), log=rep(old.log, level="debug"))
    live, restart = running.split(running.flatten(old), running.flatten(new))
    applied = running.applicable(old, new, tls_on=True)
    assert running.differences(running.flatten(applied), running.flatten(new)) == restart
    assert set(live) == {"hostname", "limits.max_recipients", "delivery.max_send_rate",
                         "web.max_headers", "log.level"}


def test_the_smtp_and_delivery_processes_each_write_their_part_of_the_ports(
        setup: Setup) -> None:
    """delivery.process: separate: the SMTP process knows its listeners' ports, the
    delivery process its HTTP sites'. Whichever writes last, the record has both, under
    the supervisor's pid; a record of an earlier relay (another pid) is not kept from."""
    cfg = setup.load()
    cfg.queue.directory.mkdir(parents=True, exist_ok=True)
    smtp, delivery = Share(0, 2, "smtp"), Share(1, 2, "delivery")
    assert running.records(smtp) and running.records(delivery)
    assert not running.records(Share(1, 3, "smtp"))  # the second SMTP process
    running.write(cfg, 99, {"listeners.old.port": 1, "metrics.port": 2}, delivery)  # before
    running.write(cfg, 42, {"listeners.submission.port": 2587}, smtp)
    running.write(cfg, 42, {"metrics.port": 9100}, delivery)
    record = running.read(cfg.queue.directory)
    assert record["pid"] == 42
    assert record["bound"] == {"listeners.submission.port": 2587, "metrics.port": 9100}
    running.write(cfg, 42, {"listeners.submission.port": 2588}, smtp)  # after a restart
    assert running.read(cfg.queue.directory)["bound"] == {
        "listeners.submission.port": 2588, "metrics.port": 9100}
    # One process (role all) writes the whole record.
    running.write(cfg, 7, {"listeners.submission.port": 1}, Share())
    assert running.read(cfg.queue.directory)["bound"] == {"listeners.submission.port": 1}
