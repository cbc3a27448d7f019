"""The reputation guard in a running relay: it pauses on evidence, not on one complaint
(min_complaints / min_bounces), a resume holds while the rate stays where it was, and it
can read the account's own reputation from CloudWatch (moto_server as the endpoint)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import boto3
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Moto, Setup, events, port_of, wait_until
from consolekit import client, with_console
from test_cli import run
from test_feedback_e2e import MESSAGE, SIGNER, post, ses_event, start_with_webhook


def deliver_to(setup: Setup, logs: list[dict[str, Any]], count: int) -> list[str]:
    """Deliver to *count* recipients (messages of up to 100); their SES MessageIds."""
    before = len(events(logs, "delivered"))
    sent = 0
    messages = 0
    while sent < count:
        rcpts = [f"r{n}@example.net" for n in range(sent, min(count, sent + 100))]
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, rcpts, MESSAGE)
        sent += len(rcpts)
        messages += 1
    wait_until(lambda: len(events(logs, "delivered")) >= before + messages)
    return [e["ses_message_id"] for e in events(logs, "delivered")[before:]]


def complain(port: int, message_id: str, n: int) -> None:
    doc = SIGNER.notification(message=ses_event("Complaint", message_id,
                                                [f"r{n}@example.net"]),
                              message_id=f"sns-c{n}")
    assert post(port, doc) == 200  # answered once handled, the guard's check included


def test_one_complaint_among_220_recipients_does_not_pause(setup: Setup, start_relay,
                                                           logs) -> None:
    _, port = start_with_webhook(setup, start_relay)  # the default thresholds
    [first, *_] = deliver_to(setup, logs, 220)
    complain(port, first, 0)  # 0.45%: over the 0.1% rate, but one event is no evidence
    assert events(logs, "feedback")
    assert not events(logs, "delivery_paused")
    assert not (setup.queue_dir / "paused").exists()


def test_three_complaints_among_220_recipients_pause(setup: Setup, start_relay,
                                                     logs) -> None:
    _, port = start_with_webhook(setup, start_relay)
    [first, *_] = deliver_to(setup, logs, 220)
    for n in range(3):
        complain(port, first, n)
    [paused] = events(logs, "delivery_paused")
    assert (paused["source"], paused["kind"]) == ("own", "complaint")
    assert "3 complaints, 220 recipients" in paused["reason"]
    wait_until(lambda: (setup.queue_dir / "paused").exists())


def transient_bounce(port: int, message_id: str, n: int) -> None:
    """An event the guard checks after, which changes no rate (only permanent bounces
    count)."""
    doc = SIGNER.notification(message=ses_event("Bounce", message_id, [f"r{n}@example.net"],
                                                bounce_type="Transient"),
                              message_id=f"sns-t{n}")
    assert post(port, doc) == 200


def test_resume_holds_while_the_rate_stays_and_pauses_when_it_rises(
        setup: Setup, start_relay, logs) -> None:
    _, port = start_with_webhook(setup, start_relay)
    [first, *_] = deliver_to(setup, logs, 220)
    for n in range(3):
        complain(port, first, n)  # 3/220 = 1.36%: paused
    assert len(events(logs, "delivery_paused")) == 1
    result = run("resume", "--config", str(setup.path))
    assert "resumed (was paused: complaint rate 1.36%" in result.stdout
    assert ("hold: complaint rate (own) 1.36% at resume: the guard pauses again only past "
            "1.70%, until it falls under 0.10%") in result.stdout
    wait_until(lambda: events(logs, "delivery_resumed"))
    transient_bounce(port, first, 10)  # a check at the same level: held, not paused
    [held] = events(logs, "reputation_held")
    assert (held["source"], held["kind"], held["pauses_again_at"]) == (
        "own", "complaint", round(3 / 220 * 1.25, 5))
    assert len(events(logs, "delivery_paused")) == 1
    assert not (setup.queue_dir / "paused").exists()
    complain(port, first, 3)  # 4/220 = 1.82%, past 1.70%: paused again
    assert len(events(logs, "delivery_paused")) == 2
    assert (setup.queue_dir / "paused").exists()
    assert "1.82% over 1.70%" in events(logs, "delivery_paused")[-1]["reason"]


# --- SES's own rates from CloudWatch (moto_server as the endpoint) -----------------------


def pauses(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The guard's pauses (a relay that starts paused says so too, with no source)."""
    return [e for e in events(logs, "delivery_paused") if "source" in e]


def put_rate(moto: Moto, kind: str, rate: float, minutes_ago: float) -> None:
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=moto.url)
    at = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=minutes_ago)
    cloudwatch.put_metric_data(Namespace="AWS/SES", MetricData=[
        {"MetricName": f"Reputation.{kind}Rate", "Value": rate, "Timestamp": at}])


def start_watching(setup: Setup, start_relay, endpoint: str,
                   source: str = "cloudwatch") -> tuple[Any, int]:
    setup.doc["delivery"]["region"] = "us-east-1"
    return start_with_webhook(setup, start_relay, reputation_source=source,
                              cloudwatch_endpoint_url=endpoint, reputation_interval="0.05s")


def test_ses_complaint_rate_from_cloudwatch_pauses_and_a_resume_holds(
        setup: Setup, start_relay, logs, moto: Moto) -> None:
    put_rate(moto, "Complaint", 0.0004, minutes_ago=30)  # SES's fractions: 0.04%
    put_rate(moto, "Complaint", 0.006, minutes_ago=10)  # 0.6%, the newest: this one counts
    put_rate(moto, "Bounce", 0.01, minutes_ago=10)
    relay, _ = start_watching(setup, start_relay, moto.url)
    # No mail of ours at all: SES's rate, computed over the account's volume, decides.
    wait_until(lambda: pauses(logs))
    [paused] = pauses(logs)
    assert (paused["source"], paused["kind"], paused["rate"]) == ("cloudwatch", "complaint",
                                                                  0.006)
    assert paused["reason"].startswith("complaint rate 0.60% over 0.10% (cloudwatch: SES "
                                       "Reputation.ComplaintRate at ")
    result = run("resume", "--config", str(setup.path))
    assert ("hold: complaint rate (cloudwatch) 0.60% at resume: the guard pauses again only "
            "past 0.75%") in result.stdout
    wait_until(lambda: events(logs, "reputation_held"))  # the next reads: same rate, held
    guard = relay.relay.feedback._guard
    reads = guard.refreshes
    wait_until(lambda: guard.refreshes >= reads + 3)
    assert len(pauses(logs)) == 1
    assert not (setup.queue_dir / "paused").exists()
    put_rate(moto, "Complaint", 0.008, minutes_ago=0)  # worse than 0.75%: paused again
    wait_until(lambda: len(pauses(logs)) == 2)
    assert pauses(logs)[-1]["rate"] == 0.008
    assert (setup.queue_dir / "paused").exists()


def test_cloudwatch_unreachable_never_pauses_and_is_logged_once(
        setup: Setup, start_relay, logs, hold) -> None:
    down = hold()  # bound, not listening: every connection is refused
    relay, _ = start_watching(setup, start_relay, f"http://127.0.0.1:{port_of(down)}")
    guard = relay.relay.feedback._guard
    wait_until(lambda: guard.refreshes >= 4)
    [line] = events(logs, "reputation_cloudwatch_unavailable")
    assert line["region"] == "us-east-1"
    assert not pauses(logs)
    assert not (setup.queue_dir / "paused").exists()


def test_both_sources_the_worse_decides(setup: Setup, start_relay, logs, moto: Moto) -> None:
    put_rate(moto, "Complaint", 0.0002, minutes_ago=5)  # SES: 0.02%, fine
    _, port = start_watching(setup, start_relay, moto.url, source="both")
    [first, *_] = deliver_to(setup, logs, 220)
    for n in range(3):
        complain(port, first, n)  # ours: 1.36%, with the evidence min_complaints asks
    [paused] = pauses(logs)
    assert (paused["source"], paused["kind"]) == ("own", "complaint")


def test_bad_reputation_settings_are_clear_errors(setup: Setup) -> None:
    setup.doc["feedback"].update({"reputation_source": "ses", "min_complaints": 0,
                                  "resume_margin": 2, "cloudwatch_endpoint_url": "nowhere"})
    setup.write()
    result = run("check-config", "--config", str(setup.path))
    assert result.returncode == 2
    for problem in ("feedback.reputation_source: must be one of own, cloudwatch, both",
                    "feedback.min_complaints: must be at least 1",
                    "feedback.resume_margin: must be a fraction",
                    "feedback.cloudwatch_endpoint_url: must be an http"):
        assert problem in result.stderr + result.stdout, problem
    setup.doc["feedback"] = {"database": setup.doc["feedback"]["database"],
                             "reputation_source": "both"}  # the outbox: no region
    setup.write()
    result = run("check-config", "--config", str(setup.path))
    assert result.returncode == 2
    assert "feedback.reputation_source: both needs delivery.region" in result.stderr


def test_the_console_resume_holds_and_says_so(setup: Setup, start_relay, logs,
                                              tmp_path: Path) -> None:
    with_console(setup, tmp_path)
    relay, port = start_with_webhook(setup, start_relay)
    [first, *_] = deliver_to(setup, logs, 220)
    for n in range(3):
        complain(port, first, n)
    c = client(relay)
    c.login()
    token = c.csrf("/reputation")
    assert c.post("/reputation/resume", {"csrf": token}).status_code == 303
    page = c.get("/reputation").text
    assert ("resumed, held: complaint rate (own) 1.36% at resume: the guard pauses again "
            "only past 1.70%") in page
    transient_bounce(port, first, 10)
    assert events(logs, "reputation_held")
    assert len(events(logs, "delivery_paused")) == 1


def test_the_hold_ends_once_the_rate_is_back_under_the_threshold(
        setup: Setup, start_relay, logs, moto: Moto) -> None:
    put_rate(moto, "Complaint", 0.006, minutes_ago=20)
    start_watching(setup, start_relay, moto.url)
    wait_until(lambda: pauses(logs))
    run("resume", "--config", str(setup.path))
    wait_until(lambda: events(logs, "reputation_held"))
    put_rate(moto, "Complaint", 0.0008, minutes_ago=10)  # the problem fixed: 0.08%
    wait_until(lambda: events(logs, "reputation_hold_ended"))
    assert not (setup.queue_dir / "reputation-hold.json").exists()
    # A new rise past the plain threshold pauses again, though still under 0.75%.
    put_rate(moto, "Complaint", 0.002, minutes_ago=0)
    wait_until(lambda: len(pauses(logs)) == 2)
    assert pauses(logs)[-1]["rate"] == 0.002
