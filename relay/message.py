"""Header rewriting at DATA time: what SES would refuse, and what must not reach it.

The header section is small and held in memory; the body is streamed untouched. Fields
are kept byte for byte except for the ones this module removes or adds:

- ``Bcc`` is removed (its recipients stay in the envelope);
- ``X-SES-CONFIGURATION-SET`` and ``X-SES-MESSAGE-TAGS`` are read, validated and removed,
  and become API parameters (SESv2 ignores these headers in raw mail); any other
  ``X-SES-*`` header (the sending-authorisation ARNs) is removed;
- ``Date`` and ``Message-ID`` are added when missing, and ``From`` (the envelope sender)
  when the caller gives one to add (relay.policy decides for whom);
- a second copy of a field that may appear only once is refused, as SES would
  ("554 Transaction failed: Duplicate header"), but at DATA instead of after the 250.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Literal

# Fields SES accepts only once (RFC 5322 section 3.6 singletons plus MIME and DKIM ones).
SINGLETONS = frozenset({
    "date", "from", "sender", "reply-to", "to", "cc", "message-id", "in-reply-to",
    "references", "subject", "mime-version", "content-type", "content-transfer-encoding",
    "dkim-signature",
})
# Postfix's message_drop_headers and Bcc's kin: Resent-Bcc would show a resent message's
# hidden recipients to everyone; Return-Path is the final MTA's to add (RFC 5321 4.4), a
# client's is forged; Content-Length misleads mbox readers.
_REMOVE = frozenset({"bcc", "resent-bcc", "return-path", "content-length",
                     "x-ses-configuration-set", "x-ses-message-tags"})
# Whether a message's X-SES-CONFIGURATION-SET / X-SES-MESSAGE-TAGS may choose its
# configuration set and tags (a user's ses_headers; policy.ses_headers adds "auto").
SesHeaders = Literal["allow", "ignore"]
SES_HEADERS: tuple[str, ...] = ("allow", "ignore")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")
_SES_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TAG = re.compile(r"[A-Za-z0-9_-]{1,255}")


def valid_configuration_set(name: str) -> bool:
    """SES's rule for configuration set names; wherever one comes from, this decides."""
    return _SES_NAME.fullmatch(name) is not None


def valid_tag(text: str) -> bool:
    """SES's rule for message tag names and values."""
    return _TAG.fullmatch(text) is not None


class HeaderError(Exception):
    """The header section cannot be accepted; ``reply`` is the SMTP answer."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


@dataclass
class Headers:
    block: bytes
    configuration_set: str | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)
    # The From: and Sender: values as written (unfolded), for relay.mailboxes to read; None
    # when the message has none (a From: added here is not one).
    from_value: str | None = None
    sender_value: str | None = None
    from_added: bool = False
    ses_headers_ignored: bool = False  # there were some, and they were removed unread


def is_header_line(line: bytes, in_field: bool) -> bool:
    """Whether *line* continues the header section (a field, or a folded continuation)."""
    if line[:1] in (b" ", b"\t"):
        return in_field
    return _FIELD.match(line) is not None


def split_fields(block: bytes) -> list[tuple[str, bytes]]:
    """(lower-cased name, raw bytes including folded lines) for each field."""
    fields: list[tuple[str, bytes]] = []
    for line in block.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
            continue
        m = _FIELD.match(line)
        if m:
            fields.append((m.group(1).decode("ascii").lower(), line))
    return fields


def _unfolded(raw: bytes) -> str:
    # Unfolding removes the CRLF and nothing else (RFC 5322 2.2.3): the whitespace after
    # it stays, as it may be inside a quoted string.
    text = raw.split(b":", 1)[1].decode("utf-8", errors="replace")
    return text.replace("\r\n", "").strip(" \t")


def _value(raw: bytes) -> str:
    """Unfolded, with each run of whitespace as one space (the X-SES-* values)."""
    return " ".join(_unfolded(raw).split())


def rewrite(block: bytes, *, hostname: str, now: float | None = None,
            default_from: str | None = None, ses_headers: bool = True) -> Headers:
    """Check and rewrite a header section (CRLF-terminated lines, no blank line).

    *default_from* is the address for a ``From:`` added to a message without one; with
    *ses_headers* false the X-SES-* headers are removed without being read.
    """
    fields = split_fields(block)
    seen: set[str] = set()
    out = Headers(block=b"")
    kept: list[bytes] = []
    for name, raw in fields:
        if name in SINGLETONS:
            if name in seen:
                raise HeaderError(f"554 5.6.0 Duplicate header: {_display(name)}")
            seen.add(name)
        if name in ("x-ses-configuration-set", "x-ses-message-tags") and not ses_headers:
            out.ses_headers_ignored = True
        elif name == "x-ses-configuration-set":
            out.configuration_set = _configuration_set(_value(raw))
        elif name == "x-ses-message-tags":
            out.tags.extend(_tags(_value(raw)))
        elif name == "from":
            out.from_value = _unfolded(raw)
        elif name == "sender":
            out.sender_value = _unfolded(raw)
        # Every other X-SES-* header goes too: over the SMTP transport SES would act on
        # X-SES-SOURCE-ARN and friends, which are the operator's to set, not a client's.
        if name not in _REMOVE and not name.startswith("x-ses-"):
            kept.append(raw)
    if "from" not in seen and default_from is not None:
        kept.append(f"From: {default_from}\r\n".encode())
        out.from_added = True
    if "date" not in seen:
        kept.append(f"Date: {formatdate(now, usegmt=True)}\r\n".encode())
    if "message-id" not in seen:
        kept.append(f"Message-ID: <{uuid.uuid4()}@{hostname}>\r\n".encode())
    out.block = b"".join(kept)
    return out


def _display(name: str) -> str:
    return "-".join("ID" if p == "id" else "DKIM" if p == "dkim" else "MIME" if p == "mime"
                    else p.capitalize() for p in name.split("-"))


def _configuration_set(value: str) -> str:
    if not valid_configuration_set(value):
        raise HeaderError("554 5.6.0 Invalid X-SES-CONFIGURATION-SET header")
    return value


def _tags(value: str) -> list[tuple[str, str]]:
    tags = []
    for item in value.split(","):
        name, eq, tag_value = item.strip().partition("=")
        if not eq or not valid_tag(name.strip()) or not valid_tag(tag_value.strip()):
            raise HeaderError("554 5.6.0 Invalid X-SES-MESSAGE-TAGS header")
        tags.append((name.strip(), tag_value.strip()))
    return tags
