"""`ses-relay queue ...` while the relay runs, and notices for mail that failed after 250."""

from __future__ import annotations

import email
from typing import Any

from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, events, wait_until
from fakeses import Failure, FakeSES
from test_cli import run

MESSAGE = (b"From: sender@example.com\r\nSubject: queued\r\nDate: Sun, 22 Nov 2026 10:00:00 "
           b"+0000\r\nMessage-ID: <q@example.com>\r\n\r\nbody\r\n")


def send(setup: Setup, rcpts: list[str], sender: str = SENDER) -> str:
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.mail(sender)
        for r in rcpts:
            s.rcpt(r)
        code, text = s.data(MESSAGE)
    assert code == 250
    return text.split()[-1].decode()


def queue(setup: Setup, *args: str) -> Any:
    return run("queue", *args, "--config", str(setup.path))


def ses_setup(make_setup, ses: FakeSES, **delivery: Any) -> Setup:
    setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url, **delivery)
    setup.doc["queue"]["min_backoff"] = "1h"  # only commands make things happen
    setup.doc["queue"]["max_backoff"] = "2h"
    setup.write()
    return setup


def test_list_hold_flush_release_while_running(make_setup, start_relay, logs) -> None:
    with FakeSES() as ses:
        ses.rule = lambda n: Failure(503, "ServiceUnavailable")
        setup = ses_setup(make_setup, ses)
        start_relay(setup)
        held, other = send(setup, ["a@example.net"]), send(setup, ["b@example.net"])
        wait_until(lambda: len(events(logs, "deferred")) == 2)
        listing = queue(setup, "list").stdout.splitlines()
        assert sorted(line.split()[0] for line in listing) == sorted([held, other])
        assert all("deferred" in line and "ServiceUnavailable" in line for line in listing)
        assert f"queue id:   {held}" in queue(setup, "show", held).stdout
        assert queue(setup, "hold", held).returncode == 0
        ses.rule = None
        assert queue(setup, "flush").returncode == 0
        wait_until(lambda: len(ses.accepted) == 1)
        assert ses.accepted[0]["to"] == ["b@example.net"]
        assert [line.split()[3] for line in queue(setup, "list").stdout.splitlines()] == ["hold"]
        assert queue(setup, "release", held).returncode == 0
        wait_until(lambda: len(ses.accepted) == 2)
        assert ses.accepted[1]["to"] == ["a@example.net"]
        assert queue(setup, "list").stdout == ""


def test_a_failed_message_is_kept_and_can_be_retried(make_setup, start_relay, logs) -> None:
    with FakeSES() as ses:
        ses.rule = lambda n: Failure(400, "MessageRejected") if n == 1 else None
        setup = ses_setup(make_setup, ses)
        start_relay(setup)
        qid = send(setup, ["a@example.net"])
        wait_until(lambda: events(logs, "failed"))
        [line] = queue(setup, "list").stdout.splitlines()
        assert line.startswith(qid) and "failed" in line and "MessageRejected" in line
        shown = queue(setup, "show", qid).stdout
        assert "hint:" in shown and "Subject: queued" in shown
        assert queue(setup, "retry", qid).returncode == 0
        wait_until(lambda: ses.accepted)
        assert ses.accepted[0]["raw"] == MESSAGE


def test_delete_removes_one_or_every_failed(make_setup, start_relay, logs) -> None:
    with FakeSES() as ses:
        ses.rule = lambda n: Failure(400, "MessageRejected")
        setup = ses_setup(make_setup, ses)
        start_relay(setup)
        first, second = send(setup, ["a@example.net"]), send(setup, ["b@example.net"])
        wait_until(lambda: len(events(logs, "failed")) == 2)
        assert queue(setup, "delete", first).returncode == 0
        assert [line.split()[0] for line in queue(setup, "list").stdout.splitlines()] == [second]
        assert "deleted 1 failed message" in queue(setup, "delete", "--failed").stdout
        assert queue(setup, "list").stdout == ""
        assert queue(setup, "show", first).returncode == 1


def test_a_message_that_fails_after_250_sends_a_delivery_status_notice(
        make_setup, start_relay, logs) -> None:
    with FakeSES() as ses:
        ses.rule = lambda n: Failure(400, "MessageRejected", "Email address is not verified") \
            if n == 1 else None
        setup = ses_setup(make_setup, ses, bounce_notices=True,
                          bounce_from="mailer-daemon@example.com")
        start_relay(setup)
        qid = send(setup, ["nobody@example.net"])
        wait_until(lambda: ses.accepted)
    [notice] = ses.accepted
    assert notice["from"] == "mailer-daemon@example.com"
    assert notice["to"] == [SENDER]
    msg = email.message_from_bytes(notice["raw"])
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    text = notice["raw"].decode()
    assert "Final-Recipient: rfc822; nobody@example.net" in text
    assert "Action: failed" in text and "Status: 5.0.0" in text
    assert f"X-Ses-Relay-Queue-ID: {qid}" in text
    assert "Subject: queued" in text  # the original headers are returned
    assert all(len(line) <= 998 for line in notice["raw"].split(b"\r\n"))


def test_no_notice_about_a_notice(make_setup, start_relay, logs) -> None:
    with FakeSES() as ses:
        ses.rule = lambda n: Failure(400, "MessageRejected")
        setup = ses_setup(make_setup, ses, bounce_notices=True,
                          bounce_from="mailer-daemon@example.com")
        start_relay(setup)
        send(setup, ["nobody@example.net"])
        wait_until(lambda: len(events(logs, "failed")) == 2)  # the message, then its notice
        wait_until(lambda: ses.calls >= 2)
    assert len(events(logs, "bounce_notice_queued")) == 1
    assert ses.calls == 2
