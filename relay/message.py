"""Header rewriting at DATA time: what SES would refuse, and what must not reach it.

The header section is small and held in memory; the body is streamed untouched. Fields
are kept byte for byte except for the ones this module removes or adds:

- ``Bcc`` is removed (its recipients stay in the envelope);
- ``X-SES-CONFIGURATION-SET`` and ``X-SES-MESSAGE-TAGS`` are read, validated and removed,
  and become API parameters (SESv2 ignores these headers in raw mail); any other
  ``X-SES-*`` header (the sending-authorisation ARNs) is removed;
- ``Date`` and ``Message-ID`` are added when missing;
- a second copy of a field that may appear only once is refused, as SES would
  ("554 Transaction failed: Duplicate header"), but at DATA instead of after the 250.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import formatdate, getaddresses

from relay.addresses import SIMPLE_ADDRESS

# Fields SES accepts only once (RFC 5322 section 3.6 singletons plus MIME and DKIM ones).
SINGLETONS = frozenset({
    "date", "from", "sender", "reply-to", "to", "cc", "message-id", "in-reply-to",
    "references", "subject", "mime-version", "content-type", "content-transfer-encoding",
    "dkim-signature",
})
_REMOVE = frozenset({"bcc", "x-ses-configuration-set", "x-ses-message-tags"})
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
    from_addresses: list[str] = field(default_factory=list)


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


def _value(raw: bytes) -> str:
    text = raw.split(b":", 1)[1].decode("utf-8", errors="replace")
    return " ".join(text.split())  # unfold


def rewrite(block: bytes, *, hostname: str, now: float | None = None) -> Headers:
    """Check and rewrite a header section (CRLF-terminated lines, no blank line)."""
    fields = split_fields(block)
    seen: set[str] = set()
    out = Headers(block=b"")
    kept: list[bytes] = []
    for name, raw in fields:
        if name in SINGLETONS:
            if name in seen:
                raise HeaderError(f"554 5.6.0 Duplicate header: {_display(name)}")
            seen.add(name)
        if name == "x-ses-configuration-set":
            out.configuration_set = _configuration_set(_value(raw))
        elif name == "x-ses-message-tags":
            out.tags.extend(_tags(_value(raw)))
        elif name == "from":
            out.from_addresses = _addresses(_value(raw))
        # Every other X-SES-* header goes too: over the SMTP transport SES would act on
        # X-SES-SOURCE-ARN and friends, which are the operator's to set, not a client's.
        if name not in _REMOVE and not name.startswith("x-ses-"):
            kept.append(raw)
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


# One address in the common shapes: "a@b.c", "<a@b.c>", "Plain Name <a@b.c>".
_ONE_ADDRESS = re.compile(
    rf"[ \t]*(?:[A-Za-z0-9 _-]*<({SIMPLE_ADDRESS})>|({SIMPLE_ADDRESS}))[ \t]*\Z")


def _addresses(value: str) -> list[str]:
    # The email package's address parser and the decode_header()/make_header() round
    # trip were most of a header rewrite's cost. decode_header() changes only a value
    # with an encoded word ("=?") in it, and a From of the common shapes is read with one
    # regex; tests/test_fuzz.py checks both shortcuts give the parser's answer.
    if "=?" in value:
        with contextlib.suppress(ValueError, LookupError):
            value = str(make_header(decode_header(value)))
    else:
        one = _ONE_ADDRESS.match(value)
        if one is not None:
            return [one.group(1) or one.group(2)]
    return [addr for _, addr in getaddresses([value]) if addr]
