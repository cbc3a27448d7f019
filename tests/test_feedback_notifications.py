"""SES notifications in both dialects, SNS unwrapping, and hostile input."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.feedback.notifications import (
    Event,
    Kind,
    NotificationError,
    parse_body,
    parse_event,
    unwrap,
)

FIXTURES = Path(__file__).parent / "feedback"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def sns_envelope(message: dict[str, Any] | str) -> str:
    return json.dumps({
        "Type": "Notification", "MessageId": "sns-1",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-feedback",
        "Message": message if isinstance(message, str) else json.dumps(message),
        "Timestamp": "2026-11-22T10:00:06.000Z", "SignatureVersion": "1",
        "Signature": "AAAA", "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"})


def test_permanent_bounce_names_each_bounced_recipient_and_the_feedback_id() -> None:
    event = parse_event(json.dumps(load("bounce-permanent")))
    assert event == Event(
        kind=Kind.BOUNCE, raw_type="Bounce", ses_message_id="0100017c-permanent-bounce-000000",
        timestamp=datetime(2026, 11, 22, 10, 0, 5, tzinfo=UTC),
        recipients=("jane@example.com", "richard@example.com"),
        bounce_type="Permanent", bounce_subtype="General",
        feedback_id="0100017c0a1b2c3d-perm-000000",
        diagnostic="smtp; 550 5.1.1 user unknown")


def test_transient_bounce_in_event_publishing_form() -> None:
    event = parse_event(load("bounce-transient"))
    assert (event.kind, event.bounce_type, event.bounce_subtype, event.recipients) == (
        Kind.BOUNCE, "Transient", "MailboxFull", ("full@example.com",))


def test_account_suppression_list_bounce_keeps_its_subtype() -> None:
    event = parse_event(load("bounce-account-list"))
    assert event.bounce_subtype == "OnAccountSuppressionList"
    assert event.recipients == ("listed@example.com",)


def test_complaint_names_only_the_complaining_recipient() -> None:
    event = parse_event(load("complaint"))
    assert (event.kind, event.recipients, event.feedback_id, event.diagnostic) == (
        Kind.COMPLAINT, ("angry@example.com",), "0100017c0a1b2c3d-compl-000000", "abuse")
    assert event.complaint_subtype is None and event.bounce_type is None


def test_delivery_names_the_delivered_recipients() -> None:
    event = parse_event(load("delivery"))
    assert (event.kind, event.recipients) == (Kind.DELIVERY, ("a@example.com",))
    assert event.diagnostic == "250 ok:  Message 64111812 accepted"


@pytest.mark.parametrize(("name", "kind", "recipients", "diagnostic"), [
    ("send", Kind.SEND, ("a@example.com", "b@example.com"), None),
    ("reject", Kind.REJECT, ("a@example.com",), "Bad content"),
    ("open", Kind.OPEN, ("reader@example.com",), None),
    ("click", Kind.CLICK, ("reader@example.com",), None),
    ("delivery-delay", Kind.DELIVERY_DELAY, ("slow@example.com",),
     "TransientCommunicationFailure"),
])
def test_event_publishing_types_are_recognised(name: str, kind: Kind,
                                               recipients: tuple[str, ...],
                                               diagnostic: str | None) -> None:
    event = parse_event(load(name))
    assert (event.kind, event.recipients, event.diagnostic) == (kind, recipients, diagnostic)
    assert event.ses_message_id.startswith("0100017c-")


def test_rendering_failure_and_subscription_fall_back_to_the_destination() -> None:
    doc = load("send")
    for raw, kind in (("Rendering Failure", Kind.RENDERING_FAILURE),
                      ("Subscription", Kind.SUBSCRIPTION)):
        doc["eventType"] = raw
        doc.pop("send")
        event = parse_event(doc)
        assert (event.kind, event.raw_type, event.recipients) == (
            kind, raw, ("a@example.com", "b@example.com"))
        doc["send"] = {}


def test_unknown_fields_and_future_event_types_are_tolerated() -> None:
    doc = load("bounce-permanent")
    doc["brandNewField"] = {"nested": [1, 2, 3]}
    doc["bounce"]["anotherNewField"] = None
    doc["mail"]["yetAnother"] = 42.5
    assert parse_event(doc).recipients == ("jane@example.com", "richard@example.com")
    doc["notificationType"] = "SomethingNew"
    assert parse_event(doc).kind is Kind.UNKNOWN


def test_a_malformed_timestamp_is_dropped_not_fatal() -> None:
    doc = load("delivery")
    doc["delivery"]["timestamp"] = "yesterday"
    doc["mail"]["timestamp"] = 12
    assert parse_event(doc).timestamp is None


def test_sns_envelope_and_raw_body_give_the_same_event() -> None:
    raw = load("complaint")
    assert parse_body(sns_envelope(raw)) == parse_body(json.dumps(raw)) == parse_event(raw)
    assert unwrap(sns_envelope(raw).encode()) == raw


@pytest.mark.parametrize(("body", "reason"), [
    (b"\xff\xfe\x00garbage", "not JSON"),
    ("not json at all", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({"Type": "SubscriptionConfirmation", "Message": "x"}), "not a notification"),
    (json.dumps({"Type": "Notification", "Message": 3}), "not a string"),
    (json.dumps({"Type": "Notification", "Message": "{nope"}), "not JSON"),
    (json.dumps({"Type": ["x"]}), "not a notification"),
    ("[" * 100_000, "not JSON"),
])
def test_bodies_that_are_no_notification_raise_our_error(body: str | bytes,
                                                         reason: str) -> None:
    with pytest.raises(NotificationError, match=reason):
        parse_body(body)


def _broken(name: str, change: Any) -> dict[str, Any]:
    doc = load(name)
    change(doc)
    return doc


@pytest.mark.parametrize("doc", [
    {"notificationType": "Bounce"},
    _broken("bounce-permanent", lambda d: d.pop("mail")),
    _broken("bounce-permanent", lambda d: d["mail"].pop("messageId")),
    _broken("bounce-permanent", lambda d: d["mail"].update(messageId=17)),
    _broken("bounce-permanent", lambda d: d["mail"].update(messageId="")),
    _broken("bounce-permanent", lambda d: d.update(mail=["x"])),
    _broken("bounce-permanent", lambda d: d.update(bounce="Permanent")),
    _broken("bounce-permanent", lambda d: d["bounce"].update(bouncedRecipients="a@b.c")),
    _broken("bounce-permanent", lambda d: d["bounce"].update(bouncedRecipients=["a@b.c"])),
    _broken("bounce-permanent", lambda d: d["bounce"].update(bouncedRecipients=[{}])),
    _broken("bounce-permanent", lambda d: d["bounce"].update(bounceType=5)),
    _broken("complaint", lambda d: d["complaint"]["complainedRecipients"][0].update(
        emailAddress=" ")),
    _broken("delivery", lambda d: d["delivery"].update(recipients=[None])),
    _broken("send", lambda d: d["mail"].update(destination={"a": 1})),
    _broken("send", lambda d: d.update(eventType=None, notificationType=None)),
    _broken("send", lambda d: d.update(eventType=["Send"])),
], ids=lambda d: json.dumps(d)[:60])
def test_wrong_shapes_raise_our_error(doc: dict[str, Any]) -> None:
    with pytest.raises(NotificationError):
        parse_event(json.dumps(doc))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20)

# Documents shaped roughly like SES notifications, so the parser's deeper paths are hit.
ses_like = st.fixed_dictionaries(
    {"mail": st.one_of(json_values, st.fixed_dictionaries(
        {"messageId": st.one_of(st.text(max_size=5), json_values)},
        optional={"destination": st.one_of(json_values, st.lists(json_values, max_size=3)),
                  "timestamp": st.one_of(st.text(max_size=30), json_values)}))},
    optional={
        "notificationType": st.sampled_from(["Bounce", "Complaint", "Delivery", "Other"]),
        "eventType": st.one_of(st.sampled_from(["Send", "Reject", "Open", "Click",
                                                "Rendering Failure", "DeliveryDelay",
                                                "Subscription", "Bounce"]), json_values),
        "bounce": st.one_of(json_values, st.fixed_dictionaries({}, optional={
            "bounceType": json_values, "bounceSubType": json_values,
            "timestamp": st.one_of(st.text(max_size=30), json_values),
            "bouncedRecipients": st.one_of(json_values, st.lists(st.one_of(
                json_values, st.fixed_dictionaries({"emailAddress": json_values})),
                max_size=3))})),
        "complaint": json_values, "delivery": json_values, "deliveryDelay": json_values,
    })


@settings(database=None, max_examples=300, deadline=None)
@given(json_values)
def test_arbitrary_json_raises_nothing_but_our_error(value: Any) -> None:
    text = json.dumps(value)
    for parse in (parse_event, parse_body):
        with contextlib.suppress(NotificationError):
            assert isinstance(parse(text), Event)


@settings(database=None, max_examples=500, deadline=None)
@given(ses_like, st.booleans())
def test_ses_shaped_json_raises_nothing_but_our_error(doc: dict[str, Any],
                                                      wrapped: bool) -> None:
    body = sns_envelope(doc) if wrapped else json.dumps(doc)
    try:
        event = parse_body(body)
    except NotificationError:
        return
    assert all(isinstance(r, str) and r for r in event.recipients)


@settings(database=None, max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_nothing_but_our_error(body: bytes) -> None:
    with contextlib.suppress(NotificationError):
        parse_body(body)
