"""The reputation guard in a running relay: it pauses on evidence, not on one complaint
(min_complaints / min_bounces), a resume holds while the rate stays where it was, and it
can read the account's own reputation from CloudWatch (moto_server as the endpoint)."""

from __future__ import annotations

from typing import Any

from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, events, wait_until
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
