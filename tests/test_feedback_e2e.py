"""Feedback into a running relay: signed SNS notifications and SQS messages suppress
addresses, every message's story can be traced and exported, and a bad bounce rate pauses
delivery until an operator resumes it."""

from __future__ import annotations

import datetime
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Moto, Setup, events, wait_until
from test_cli import run
from test_feedback_sns import TOPIC, FakeFetcher, make_signer

from relay.feedback.sns import Verifier
from relay.suppression import SuppressionList

MESSAGE = (b"From: sender@example.com\r\nSubject: fb\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000"
           b"\r\nMessage-ID: <fb@example.com>\r\n\r\nbody\r\n")
SIGNER = make_signer("Test SNS CA")


def ses_event(kind: str, message_id: str, recipients: list[str],
              bounce_type: str = "Permanent") -> str:
    # SES stamps milliseconds: round up, so the event is never stamped before a send that
    # happened in the same millisecond (the trace orders by time).
    now = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(milliseconds=1)
           ).isoformat(timespec="milliseconds")
    mail = {"messageId": message_id, "timestamp": now,
            "source": SENDER, "destination": recipients}
    if kind == "Bounce":
        body: dict[str, Any] = {"bounce": {
            "bounceType": bounce_type, "bounceSubType": "General",
            "feedbackId": f"fb-{message_id}", "timestamp": now,
            "bouncedRecipients": [{"emailAddress": r} for r in recipients]}}
    else:
        body = {"complaint": {"feedbackId": f"fc-{message_id}", "timestamp": now,
                              "complainedRecipients": [{"emailAddress": r} for r in recipients]}}
    return json.dumps({"notificationType": kind, "mail": mail, **body})


def post(port: int, doc: dict[str, Any]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/sns", method="POST",
                                     data=json.dumps(doc).encode(),
                                     headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def start_with_webhook(setup: Setup, start_relay, **feedback: Any) -> tuple[Any, int]:
    setup.doc["feedback"].update({"topic_arns": [TOPIC],
                                  "http": {"address": "127.0.0.1", "port": 0},
                                  **feedback})
    setup.write()
    relay = start_relay(setup)
    # SNS's certificate host cannot be reached from here: serve the test CA's certificate
    # instead. Everything else (HTTP listener, verification, suppression) is the real one.
    relay.relay.feedback._verifier = Verifier([TOPIC], fetch_cert=FakeFetcher(SIGNER.pem))
    return relay, setup.port("feedback")


def deliver(setup: Setup, logs: list[dict[str, Any]], rcpt: str) -> dict[str, Any]:
    before = len(events(logs, "delivered"))
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, [rcpt], MESSAGE)
    wait_until(lambda: len(events(logs, "delivered")) > before)
    return events(logs, "delivered")[-1]


def test_a_signed_bounce_suppresses_and_the_story_can_be_traced(
        setup: Setup, start_relay, logs, tmp_path: Path) -> None:
    relay, port = start_with_webhook(setup, start_relay)
    sent = deliver(setup, logs, "jane@example.net")
    doc = SIGNER.notification(message=ses_event("Bounce", sent["ses_message_id"],
                                                ["jane@example.net"]), message_id="sns-1")
    assert post(port, doc) == 200
    assert post(port, doc) == 200  # SNS retries are answered but not applied twice
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.mail(SENDER)
        assert s.rcpt("jane@example.net")[0] == 550
    relay.relay.events.flush()
    story = run("trace", sent["queue_id"], "--config", str(setup.path)).stdout
    assert [line.split()[1] for line in story.splitlines()] == ["queued", "delivered",
                                                                "bounce"]
    assert run("trace", "jane@example.net", "--config", str(setup.path)).stdout == story
    cursor = tmp_path / "cursor"
    exported = run("events", "export", "--cursor", str(cursor), "--config",
                   str(setup.path)).stdout.splitlines()
    [row] = [json.loads(line) for line in exported]
    assert (row["kind"], row["recipient"], row["queue_id"]) == ("bounce", "jane@example.net",
                                                                sent["queue_id"])
    again = run("events", "export", "--cursor", str(cursor), "--config", str(setup.path))
    assert again.stdout == ""  # incremental: nothing new since the cursor


def test_forged_or_foreign_notifications_change_nothing(setup: Setup, start_relay) -> None:
    _, port = start_with_webhook(setup, start_relay)
    forger = make_signer("Forger CA")
    forged = forger.notification(message=ses_event("Complaint", "m-1", ["a@example.net"]))
    wrong_topic = SIGNER.notification(message=ses_event("Complaint", "m-2", ["a@example.net"]),
                                      topic="arn:aws:sns:us-east-1:999999999999:other")
    tampered = SIGNER.notification(message=ses_event("Complaint", "m-3", ["a@example.net"]))
    tampered["Message"] = ses_event("Complaint", "m-3", ["b@example.net"])
    assert [post(port, d) for d in (forged, wrong_topic, tampered)] == [403, 403, 403]
    assert post(port, {"not": "sns"}) == 400
    assert len(SuppressionList(Path(setup.doc["suppression"]["database"]))) == 0


def test_sqs_feedback_suppresses_complainers(setup: Setup, start_relay, moto: Moto) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.url)
    url = sqs.create_queue(QueueName="ses-feedback")["QueueUrl"]
    setup.doc["delivery"]["region"] = "us-east-1"
    setup.doc["feedback"].update({"sqs_queue_url": url, "sqs_endpoint_url": moto.url})
    setup.write()
    start_relay(setup)
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({
        "Type": "Notification", "MessageId": "n-1", "TopicArn": TOPIC,
        "Message": ses_event("Complaint", "m-9", ["angry@example.net"])}))
    db = SuppressionList(Path(setup.doc["suppression"]["database"]))
    wait_until(lambda: db.lookup("angry@example.net") is not None, timeout=20)
    assert db.lookup("angry@example.net").reason == "complaint"  # type: ignore[union-attr]
    wait_until(lambda: "Messages" not in sqs.receive_message(QueueUrl=url,
                                                              WaitTimeSeconds=0), timeout=10)


def test_a_high_bounce_rate_pauses_delivery_until_resumed(setup: Setup, start_relay,
                                                          logs) -> None:
    _, port = start_with_webhook(setup, start_relay, min_volume=2, pause_bounce_rate=0.4,
                                 min_bounces=1)
    first = deliver(setup, logs, "one@example.net")
    deliver(setup, logs, "two@example.net")
    doc = SIGNER.notification(message=ses_event("Bounce", first["ses_message_id"],
                                                ["one@example.net"]), message_id="sns-9")
    assert post(port, doc) == 200
    wait_until(lambda: events(logs, "delivery_paused"))
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["three@example.net"], MESSAGE)  # accepted, then held back
    wait_until(lambda: events(logs, "queued") and len(events(logs, "queued")) == 3)
    assert len(events(logs, "delivered")) == 2
    result = run("resume", "--config", str(setup.path))
    assert "resumed" in result.stdout
    wait_until(lambda: len(events(logs, "delivered")) == 3)
