"""The event store under a running relay: PostgreSQL down never costs a 250, the fleet's
story can be traced from any relay, and an SES event that arrives twice counts once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Setup, events, wait_until
from test_cli import run
from test_feedback_e2e import SIGNER, deliver, post, ses_event, start_with_webhook


def relay_b(setup: Setup, tmp_path: Path) -> Path:
    """Another relay's configuration on the same event store (its own queue)."""
    doc = json.loads(json.dumps(setup.doc))
    doc["queue"]["directory"] = str(tmp_path / "queue-b")
    doc["feedback"] = {"database": setup.doc["feedback"]["database"], "node": "relay-b"}
    path = tmp_path / "relay-b.yaml"
    path.write_text(json.dumps(doc))
    return path


def steps_traced(config: Path, queue_id: str) -> list[tuple[str, str]]:
    done = run("trace", queue_id, "--config", str(config))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return [(line.split()[1], next((w for w in line.split() if w.startswith("relay=")), ""))
            for line in lines]


def test_mail_flows_while_postgres_is_down_and_its_steps_arrive_once_it_is_back(
        setup: Setup, start_relay, logs: list[dict[str, Any]], pg_server: Any, pg_dsn: str,
        tmp_path: Path) -> None:
    setup.doc["feedback"].update({"database": pg_dsn, "node": "relay-a"})
    setup.write()
    pg_server.stop()  # down before the relay starts: it starts all the same
    relay = start_relay(setup)
    first = deliver(setup, logs, "one@example.net")  # 250, and delivered
    relay.relay.events.flush()
    assert len(events(logs, "event_store_unreachable")) == 1
    pg_server.start()
    wait_until(lambda: events(logs, "event_store_recovered"), timeout=30)
    second = deliver(setup, logs, "two@example.net")
    pg_server.stop()  # and again, mid-run
    third = deliver(setup, logs, "three@example.net")
    relay.relay.events.flush()
    assert len(events(logs, "event_store_unreachable")) == 2
    pg_server.start()
    wait_until(lambda: len(events(logs, "event_store_recovered")) == 2, timeout=30)
    other = relay_b(setup, tmp_path)  # traced from another relay of the fleet
    for sent in (first, second, third):
        assert steps_traced(other, sent["queue_id"]) == [("queued", "relay=relay-a"),
                                                         ("delivered", "relay=relay-a")]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_ses_event_delivered_twice_is_stored_and_counted_once(
        setup: Setup, start_relay, logs: list[dict[str, Any]], backend: str,
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if backend == "postgres":
        setup.doc["feedback"]["database"] = request.getfixturevalue("pg_dsn")
    relay, port = start_with_webhook(setup, start_relay)
    sent = deliver(setup, logs, "jane@example.net")
    bounce = ses_event("Bounce", sent["ses_message_id"], ["jane@example.net"])
    # SES publishes an event at least once: the same event in two SNS messages (or by
    # SNS and SQS both, or to two relays of a fleet). The SNS MessageIds differ.
    for sns_id in ("sns-1", "sns-2"):
        assert post(port, SIGNER.notification(message=bounce, message_id=sns_id)) == 200
    relay.relay.events.flush()
    assert [what for what, _ in steps_traced(setup.path, sent["queue_id"])] == [
        "queued", "delivered", "bounce"]
    exported = run("events", "export", "--config", str(setup.path)).stdout.splitlines()
    assert len(exported) == 1
    assert relay.relay.events.rates(0).bounces == 1  # what the reputation guard counts
    assert len(events(logs, "feedback")) == 1
    assert len(events(logs, "feedback_duplicate")) == 1  # the second, recognised


def test_an_ses_event_in_two_sqs_messages_is_stored_once_in_the_shared_store(
        setup: Setup, start_relay, logs: list[dict[str, Any]], moto, pg_dsn: str) -> None:
    import boto3
    from test_feedback_sns import TOPIC

    sqs = boto3.client("sqs", region_name="us-east-1", endpoint_url=moto.url)
    url = sqs.create_queue(QueueName="ses-feedback-dup")["QueueUrl"]
    setup.doc["delivery"]["region"] = "us-east-1"
    setup.doc["feedback"].update({"database": pg_dsn, "sqs_queue_url": url,
                                  "sqs_endpoint_url": moto.url})
    setup.write()
    relay = start_relay(setup)
    complaint = ses_event("Complaint", "m-dup", ["angry@example.net"])
    for sns_id in ("n-1", "n-2"):  # SES published it twice
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({
            "Type": "Notification", "MessageId": sns_id, "TopicArn": TOPIC,
            "Message": complaint}))
    wait_until(lambda: len(events(logs, "feedback")) + len(events(logs, "feedback_duplicate"))
               == 2, timeout=20)
    assert [s["kind"] for s in relay.relay.events.trace("m-dup")] == ["complaint"]
    assert relay.relay.events.rates(0).complaints == 1


def test_two_relay_processes_on_one_database_trace_each_others_mail(
        setup: Setup, start_process, pg_dsn: str, tmp_path: Path) -> None:
    from clients import implicit
    from conftest import PASSWORD, SENDER, USER
    from test_feedback_e2e import MESSAGE

    setup.doc["feedback"].update({"database": pg_dsn, "node": "relay-a"})
    setup.write()
    doc = json.loads(json.dumps(setup.doc))
    for key, section in (("directory", "queue"), ("outbox_dir", "delivery"),
                         ("database", "suppression")):
        doc[section][key] = str(tmp_path / "b" / key)
    doc["feedback"]["node"] = "relay-b"
    other = Setup(tmp_path / "relay-b.yaml", doc, setup.certs)
    other.write()
    relays = {"relay-a": (setup, start_process(setup)), "relay-b": (other, start_process(other))}
    sent = {}
    for name, (s, proc) in relays.items():
        with implicit(s.implicit_port, s.certs.ca, USER, PASSWORD) as client:
            client.sendmail(SENDER, [f"{name}@example.net"], MESSAGE)
        sent[name] = proc.wait_event("delivered")["queue_id"]
    # Each relay's configuration traces the other's message, as that relay wrote it.
    for reader, writer in (("relay-a", "relay-b"), ("relay-b", "relay-a")):
        config = relays[reader][0].path
        wait_until(lambda c=config, q=sent[writer]: run("trace", q, "--config", str(c))
                   .stdout.count("\n") == 2)
        assert steps_traced(config, sent[writer]) == [("queued", f"relay={writer}"),
                                                      ("delivered", f"relay={writer}")]
