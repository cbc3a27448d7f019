"""A queue entry: the message, its envelope, its trailer; and the delivery state beside it.

An entry in ``active/`` is the raw message, then the envelope as JSON, then a fixed-size
trailer (``TRAILER_MAGIC``, ten digits of the envelope's length, a newline) that is
written last and marks the entry complete. The delivery state is a JSON file in
``state/``.

The queue wrote these files itself, but a disk, an editor or another version may have been
there since. Whatever is in them either comes out as the types delivery works with, or is
refused here (CorruptEntry; the spool moves the entry to ``corrupt/``): a field of the
wrong type would otherwise fail deep inside a delivery attempt, again at every retry.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from relay.errors import CorruptEntry, SpoolError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TRAILER_MAGIC = b"\nSESRELAY1 "
TRAILER_LEN = len(TRAILER_MAGIC) + 10 + 1  # magic, 10 digits of envelope length, "\n"


@dataclass(frozen=True)
class Envelope:
    """What SMTP said about a message, beyond its bytes."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    user: str | None = None
    peer: str | None = None
    listener: str | None = None
    configuration_set: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    # No delivery status notification about this message: it is one, or its sender was
    # the null sender (MAIL FROM:<>, rewritten for SES).
    no_dsn: bool = False

    def to_json(self) -> bytes:
        # The fields by name, not dataclasses.asdict(): its deep copy cost more than the
        # JSON encoding, once per message accepted.
        return json.dumps({
            "mail_from": self.mail_from, "rcpt_tos": list(self.rcpt_tos), "user": self.user,
            "peer": self.peer, "listener": self.listener,
            "configuration_set": self.configuration_set,
            "tags": [list(t) for t in self.tags], "no_dsn": self.no_dsn,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        """ValueError unless every field has its type."""
        return cls(**_envelope_fields(raw))


@dataclass
class DeliveryState:
    """Bookkeeping of delivery attempts, and which recipients are settled (never sent to
    again: a state file that cannot be trusted sends its entry to corrupt/)."""

    attempts: int = 0
    last_error: str = ""
    last_attempt: float = 0.0
    # Per recipient: the upstream message id once accepted, or [code, error, hint] once
    # refused for good. Settled recipients are never sent to again.
    done: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, list[str]] = field(default_factory=dict)
    # Recipients the upstream deferred one by one in the last attempt (SMTP 4xx to RCPT).
    last_deferred: dict[str, list[str]] = field(default_factory=dict)
    # The region (delivery.failover) of a send that may have reached SES: the message is
    # retried there only, never in another region, so that it is not sent twice.
    pin: str = ""


def trailer(envelope: Envelope) -> bytes:
    """What follows the message in its entry: the envelope and the trailer."""
    meta = envelope.to_json()
    return meta + TRAILER_MAGIC + b"%010d\n" % len(meta)


class FileBlob:
    """The message part of an open entry, read a slice at a time with os.pread (no shared
    file offset), for a transport that encodes the message as it sends it
    (relay.transports.httpbody): a 10 MB message then costs a slice of memory, not 10 MB.
    The descriptor stays open as long as the claim that lent it."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def __len__(self) -> int:
        return self.size

    def read(self, start: int, length: int) -> bytes:
        """Bytes *start* to *start* + *length* (fewer at the end of the message). A failed
        read is a SpoolError, ours: as an OSError it would read as a network failure."""
        length = max(0, min(length, self.size - start))
        parts = []
        while length:
            try:
                part = os.pread(self.fd, length, start)
            except OSError as e:
                raise SpoolError(f"cannot read the message: {e}") from e
            if not part:  # the file is shorter than its trailer said
                raise SpoolError(f"the message ends {length} bytes early")
            parts.append(part)
            start, length = start + len(part), length - len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def slices(self, size: int) -> Iterator[bytes]:
        """The message, *size* bytes at a time."""
        for start in range(0, self.size, size):
            yield self.read(start, size)


def read_entry(f: BinaryIO, queue_id: str) -> tuple[Envelope, bytes]:
    """Read trailer, then envelope, then the message: one allocation of the message's size
    (reading the whole file and slicing it would hold two copies at once)."""
    envelope, size = read_meta(f, queue_id)
    f.seek(0)
    return envelope, f.read(size)


def parse_entry(entry: bytes, queue_id: str) -> tuple[Envelope, bytes]:
    """A whole entry read at once (small messages): the envelope and the message."""
    meta_start, meta_len = _meta_span(len(entry), entry[-TRAILER_LEN:], queue_id)
    return _envelope(entry[meta_start:meta_start + meta_len], queue_id), entry[:meta_start]


def read_meta(f: BinaryIO, queue_id: str) -> tuple[Envelope, int]:
    """The envelope and the message's size, without reading the message."""
    end = f.seek(0, os.SEEK_END)
    f.seek(max(0, end - TRAILER_LEN))
    meta_start, meta_len = _meta_span(end, f.read(TRAILER_LEN), queue_id)
    f.seek(meta_start)
    return _envelope(f.read(meta_len), queue_id), meta_start


def _meta_span(end: int, tail: bytes, queue_id: str) -> tuple[int, int]:
    """Where the envelope starts and how long it is, from the entry's trailer."""
    digits = tail[len(TRAILER_MAGIC):-1]
    if end < TRAILER_LEN or not tail.startswith(TRAILER_MAGIC) \
            or not tail.endswith(b"\n") or not digits.isdigit():
        raise CorruptEntry(f"{queue_id}: no end-of-entry marker (incomplete write?)")
    meta_start = end - TRAILER_LEN - int(digits)
    if meta_start < 0:
        raise CorruptEntry(f"{queue_id}: envelope length out of range")
    return meta_start, int(digits)


def _envelope(raw: bytes, queue_id: str) -> Envelope:
    try:
        return Envelope.from_json(raw)
    except ValueError as e:
        raise CorruptEntry(f"{queue_id}: bad envelope ({e})") from None


def parse_state(raw: bytes, queue_id: str) -> DeliveryState:
    """A delivery state file's contents; CorruptEntry if they are not one."""
    try:
        return DeliveryState(**_state_fields(raw))
    except ValueError as e:
        raise CorruptEntry(f"{queue_id}: bad delivery state ({e})") from None


# -- checking what the JSON holds


def loads(raw: bytes) -> Any:
    """json.loads, with every way it can fail as a ValueError (deep nesting is a
    RecursionError there: ``[[[[...`` 100,000 deep)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError as e:  # a ValueError already; said plainly
        raise ValueError(f"not UTF-8 (byte {e.start})") from None


def _envelope_fields(raw: bytes) -> dict[str, Any]:
    """The keyword arguments of Envelope, from its JSON."""
    d = loads(raw)
    if not isinstance(d, dict) or not isinstance(d.get("mail_from"), str):
        raise ValueError("envelope is not an object with mail_from")
    rcpts = d.get("rcpt_tos")
    if not isinstance(rcpts, list) or not rcpts or not all(isinstance(r, str) for r in rcpts):
        raise ValueError("envelope has no recipients")
    tags = d.get("tags")
    tags = [] if tags is None else tags
    if not isinstance(tags, list) or not all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t)
            for t in tags):
        raise ValueError("envelope tags are not name/value pairs")
    fields: dict[str, Any] = {"mail_from": d["mail_from"], "rcpt_tos": tuple(rcpts),
                              "tags": tuple((n, v) for n, v in tags)}
    for key in ("user", "peer", "listener", "configuration_set"):
        value = d.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"envelope {key} is not a string")
        fields[key] = value
    texts = [fields["mail_from"], *rcpts, *(x for t in tags for x in t),
             *(v for k in ("user", "peer", "listener", "configuration_set")
               if (v := fields[k]) is not None)]
    if _CONTROL.search("".join(texts)):
        # Checked at SMTP time, so never written by us; a CR LF here would reach the
        # upstream's protocol.
        raise ValueError("envelope has control characters")
    no_dsn = d.get("no_dsn", False)
    if not isinstance(no_dsn, bool):
        raise ValueError("envelope no_dsn is not true or false")
    fields["no_dsn"] = no_dsn
    return fields


def _state_fields(raw: bytes) -> dict[str, Any]:
    """The keyword arguments of DeliveryState, from its JSON. Keys it does not
    know are left out (bookkeeping a later version may add)."""
    d = loads(raw)
    if not isinstance(d, dict):
        raise ValueError("delivery state is not an object")
    fields: dict[str, Any] = {}
    if "attempts" in d:
        if not _is_int(d["attempts"]) or d["attempts"] < 0:
            raise ValueError("attempts is not a count")
        fields["attempts"] = d["attempts"]
    if "last_error" in d:
        if not isinstance(d["last_error"], str):
            raise ValueError("last_error is not a string")
        fields["last_error"] = d["last_error"]
    if "last_attempt" in d:
        value = d["last_attempt"]
        if not (_is_int(value) or isinstance(value, float)) or not -1e12 < value < 1e12:
            raise ValueError("last_attempt is not a time")
        fields["last_attempt"] = float(value)
    if "done" in d:
        done = d["done"]
        if not isinstance(done, dict) or not all(isinstance(v, str) for v in done.values()):
            raise ValueError("done is not a mapping of recipients to message ids")
        fields["done"] = done
    for key in ("rejected", "last_deferred"):
        if key in d:
            value = d[key]
            if not isinstance(value, dict) or not all(_is_reason(v) for v in value.values()):
                raise ValueError(f"{key} is not a mapping of recipients to [code, error, "
                                 "hint]")
            fields[key] = value
    if "pin" in d:
        if not isinstance(d["pin"], str):
            raise ValueError("pin is not a region name")
        fields["pin"] = d["pin"]
    return fields


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_reason(value: object) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(isinstance(x, str)
                                                               for x in value)
