"""Parsing of SES notifications (identity notifications and event publishing) into events.

SES speaks two dialects: identity notifications carry ``notificationType`` (Bounce,
Complaint, Delivery) and configuration-set event publishing carries ``eventType`` (ten
kinds). Both arrive as JSON, either as the ``Message`` string of an SNS envelope or bare
(SNS raw message delivery to SQS). AWS adds fields over time, so unknown keys are ignored;
anything that is not the documented shape raises NotificationError and nothing else, so a
broken or hostile queue message can never take the caller down with a stray TypeError.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from enum import StrEnum
from typing import Any

from relay.errors import RelayError


class NotificationError(RelayError):
    """The input is not an SES notification; ``reason`` is short enough for a log line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Kind(StrEnum):
    SEND = "send"
    REJECT = "reject"
    BOUNCE = "bounce"
    COMPLAINT = "complaint"
    DELIVERY = "delivery"
    OPEN = "open"
    CLICK = "click"
    RENDERING_FAILURE = "rendering_failure"
    DELIVERY_DELAY = "delivery_delay"
    SUBSCRIPTION = "subscription"
    UNKNOWN = "unknown"


# SES type name -> (our kind, the key of that type's own object in the notification).
_TYPES: dict[str, tuple[Kind, str]] = {
    "Send": (Kind.SEND, "send"),
    "Reject": (Kind.REJECT, "reject"),
    "Bounce": (Kind.BOUNCE, "bounce"),
    "Complaint": (Kind.COMPLAINT, "complaint"),
    "Delivery": (Kind.DELIVERY, "delivery"),
    "Open": (Kind.OPEN, "open"),
    "Click": (Kind.CLICK, "click"),
    "Rendering Failure": (Kind.RENDERING_FAILURE, "failure"),
    "DeliveryDelay": (Kind.DELIVERY_DELAY, "deliveryDelay"),
    "Subscription": (Kind.SUBSCRIPTION, "subscription"),
}

# Where each kind keeps a short, body-free explanation worth logging.
_DIAGNOSTIC_KEYS: dict[Kind, str] = {
    Kind.COMPLAINT: "complaintFeedbackType",
    Kind.DELIVERY: "smtpResponse",
    Kind.REJECT: "reason",
    Kind.RENDERING_FAILURE: "errorMessage",
    Kind.DELIVERY_DELAY: "delayType",
}


@dataclass(frozen=True)
class Event:
    """One SES event. ``recipients`` are the addresses it is about (the bounced or
    complained ones for bounces and complaints, never the whole destination list)."""

    kind: Kind
    raw_type: str
    ses_message_id: str
    timestamp: datetime | None
    recipients: tuple[str, ...]
    bounce_type: str | None = None
    bounce_subtype: str | None = None
    complaint_subtype: str | None = None
    feedback_id: str | None = None
    diagnostic: str | None = None


def parse_body(body: str | bytes) -> Event:
    """The event in an SQS message body, SNS-wrapped or raw."""
    return parse_event(unwrap(body))


def unwrap(body: str | bytes) -> dict[str, Any]:
    """The SES notification in *body*: the parsed ``Message`` of an SNS Notification
    envelope, or *body* itself when it is raw SES JSON (SNS raw message delivery)."""
    doc = _load(body, "body")
    if "Type" not in doc:  # SES notifications have no "Type"; SNS envelopes always do
        return doc
    kind = doc["Type"]
    if kind != "Notification":
        label = kind[:40] if isinstance(kind, str) else type(kind).__name__
        raise NotificationError(f"SNS {label!r} message, not a notification")
    message = doc.get("Message")
    if not isinstance(message, str):
        raise NotificationError("SNS Message is not a string")
    return _load(message, "SNS Message")


def parse_event(data: str | bytes | Mapping[str, Any]) -> Event:
    """Parse one SES notification (JSON text or already-decoded object)."""
    doc = data if isinstance(data, Mapping) else _load(data, "notification")
    raw_type = _event_type(doc)
    kind, key = _TYPES.get(raw_type, (Kind.UNKNOWN, ""))
    mail = _object(doc.get("mail"), "mail")
    message_id = mail.get("messageId")
    if not isinstance(message_id, str) or not message_id:
        raise NotificationError("mail.messageId missing or not a string")
    own = _object(doc.get(key, {}), key) if key else {}
    return Event(
        kind=kind,
        raw_type=raw_type,
        ses_message_id=message_id,
        timestamp=_timestamp(own.get("timestamp")) or _timestamp(mail.get("timestamp")),
        recipients=_recipients(kind, own, mail),
        bounce_type=_opt_str(own, "bounceType", key) if kind is Kind.BOUNCE else None,
        bounce_subtype=_opt_str(own, "bounceSubType", key) if kind is Kind.BOUNCE else None,
        complaint_subtype=(_opt_str(own, "complaintSubType", key)
                           if kind is Kind.COMPLAINT else None),
        feedback_id=_opt_str(own, "feedbackId", key),
        diagnostic=_diagnostic(kind, own, key),
    )


def _load(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise NotificationError(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise NotificationError(f"{what} is not a JSON object")
    return doc


def _event_type(doc: Mapping[str, Any]) -> str:
    value = doc.get("eventType", doc.get("notificationType"))
    if not isinstance(value, str) or not value:
        raise NotificationError("neither eventType nor notificationType is a string")
    return value


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise NotificationError(f"{what} is not an object")
    return value


def _opt_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise NotificationError(f"{where}.{key} is not a string")


def _timestamp(value: object) -> datetime | None:
    # A bad timestamp is not worth dropping a bounce for: it is informational only.
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _recipients(kind: Kind, own: Mapping[str, Any], mail: Mapping[str, Any]
                ) -> tuple[str, ...]:
    # Bounces and complaints name exactly the affected recipients; falling back to
    # mail.destination there would suppress people who never bounced.
    if kind is Kind.BOUNCE:
        return _object_addresses(own, "bouncedRecipients")
    if kind is Kind.COMPLAINT:
        return _object_addresses(own, "complainedRecipients")
    if kind is Kind.DELIVERY and "recipients" in own:
        return _string_addresses(own, "recipients")
    if kind is Kind.DELIVERY_DELAY and "delayedRecipients" in own:
        return _object_addresses(own, "delayedRecipients")
    return _string_addresses(mail, "destination")


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    items = obj.get(key, [])
    if not isinstance(items, list):
        raise NotificationError(f"{key} is not a list")
    return items


def _object_addresses(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(_address(_object(item, key).get("emailAddress"), key)
                 for item in _list(obj, key))


def _string_addresses(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(_address(item, key) for item in _list(obj, key))


def _address(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise NotificationError(f"{where}: address is not a string")
    # SES usually gives a bare address, but a DSN's Final-Recipient or a destination
    # may come as 'Name <addr>'; the suppression list wants the bare address.
    address = parseaddr(value)[1] if "<" in value else value.strip()
    if not address:
        raise NotificationError(f"{where}: empty address")
    return address


def _diagnostic(kind: Kind, own: Mapping[str, Any], where: str) -> str | None:
    if kind is Kind.BOUNCE:
        codes = (r.get("diagnosticCode") for r in _list(own, "bouncedRecipients")
                 if isinstance(r, Mapping))
        return next((c for c in codes if isinstance(c, str) and c), None)
    key = _DIAGNOSTIC_KEYS.get(kind)
    return _opt_str(own, key, where) if key else None
