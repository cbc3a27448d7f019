"""Suppression checked again right before each send: a recipient suppressed while its
message waited in the queue is left out (logged, counted, traced, in the DSN), and a
message whose recipients are all suppressed completes without a send. The real relay
process against the scripted SES endpoint; the suppression arrives between two attempts,
written by the endpoint itself as it defers the first one (no race with the retry)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, wait_until
from fakeses import Failure, FakeSES
from test_cli import run

from relay.suppression import SuppressionList

MESSAGE = (b"From: sender@example.com\r\nTo: a@example.net\r\nSubject: later\r\n"
           b"Message-ID: <s1@example.com>\r\n\r\nThe body must not be logged.\r\n")


def _suppress_then_defer(db_path: Path, *addresses: str):  # type: ignore[no-untyped-def]
    """A FakeSES rule: on the first call, suppress *addresses* and answer 503."""
    def rule(call: int) -> Failure | None:
        if call != 1:
            return None
        db = SuppressionList(db_path)
        try:
            for a in addresses:
                db.add(a, "bounce", "test")
        finally:
            db.close()
        return Failure(503, "ServiceUnavailable")
    return rule


def _setup(make_setup, ses: FakeSES, **delivery: object) -> Setup:  # type: ignore[no-untyped-def]
    setup: Setup = make_setup("sesv2", region="eu-west-1", endpoint_url=ses.url, **delivery)
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    return setup


def test_a_recipient_suppressed_while_queued_is_dropped_from_the_next_attempt(
        make_setup, start_process) -> None:
    with FakeSES() as ses:
        setup = _setup(make_setup, ses, bounce_notices=True, bounce_from=SENDER)
        ses.rule = _suppress_then_defer(Path(setup.doc["suppression"]["database"]),
                                        "b@example.net")
        relay = start_process(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, ["a@example.net", "b@example.net"], MESSAGE)
        qid = relay.wait_event("queued")["queue_id"]
        dropped = relay.wait_event("suppressed_at_send")
        # The DSN to the sender goes through the same endpoint, after the message.
        wait_until(lambda: len(ses.accepted) >= 2)
        message, notice = ses.accepted[0], ses.accepted[1]
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{setup.port('metrics')}/metrics", timeout=10).read().decode()
    # The second attempt went to a only.
    assert message["to"] == ["a@example.net"]
    assert dropped["queue_id"] == qid and dropped["rcpt"] == "b@example.net"
    assert dropped["reason"] == "bounce"
    assert b"must not be logged" not in relay.log_path.read_bytes()
    assert 'ses_relay_recipients_suppressed_at_send_total{reason="bounce"} 1.0' in metrics
    # The sender learns about b, and only b.
    assert notice["to"] == [SENDER]
    assert b"<b@example.net>: Suppressed" in notice["raw"]
    assert b"Final-Recipient: rfc822; b@example.net" in notice["raw"]
    assert b"Final-Recipient: rfc822; a@example.net" not in notice["raw"]
    record = json.loads((setup.queue_dir / "failed" / f"{qid}.json").read_text())
    assert record["failed"]["b@example.net"][0] == "Suppressed"
    assert list(record["delivered"]) == ["a@example.net"]
    trace = run("trace", qid, "--config", str(setup.path)).stdout
    assert "suppressed" in trace and "b@example.net" in trace


def test_a_message_whose_recipients_are_all_suppressed_completes_without_a_send(
        make_setup, start_process) -> None:
    with FakeSES() as ses:
        setup = _setup(make_setup, ses)
        ses.rule = _suppress_then_defer(Path(setup.doc["suppression"]["database"]),
                                        "a@example.net", "@example.org")
        relay = start_process(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, ["a@example.net", "c@example.org"], MESSAGE)
        qid = relay.wait_event("queued")["queue_id"]
        relay.wait_event("suppressed_at_send", rcpt="c@example.org")
        wait_until(lambda: (setup.queue_dir / "failed" / f"{qid}.json").exists())
        calls = ses.calls
    assert calls == 1  # the deferred first attempt; none after
    assert ses.accepted == []
    assert list((setup.queue_dir / "active").iterdir()) == []
    record = json.loads((setup.queue_dir / "failed" / f"{qid}.json").read_text())
    assert {r: v[0] for r, v in record["failed"].items()} == {
        "a@example.net": "Suppressed", "c@example.org": "Suppressed"}


def test_a_full_chunk_is_checked_too(make_setup, start_process) -> None:
    # Over 8 recipients the lookups run on a thread: the same outcome.
    rcpts = [f"r{i}@example.net" for i in range(12)]
    with FakeSES() as ses:
        setup = _setup(make_setup, ses)
        ses.rule = _suppress_then_defer(Path(setup.doc["suppression"]["database"]),
                                        "r3@example.net", "r11@example.net")
        relay = start_process(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, rcpts, MESSAGE)
        relay.wait_event("delivered")
        [sent] = ses.accepted
    assert sent["to"] == [r for r in rcpts if r not in ("r3@example.net", "r11@example.net")]
    assert {e["rcpt"] for e in relay.events() if e.get("event") == "suppressed_at_send"} == {
        "r3@example.net", "r11@example.net"}
