"""Delivery status notifications (RFC 3464) for mail that failed after it was accepted.

A legacy application never learns that a message it handed over with a 250 later failed
at SES; the sender's mailbox does, the way mail has always worked. The notice goes through
the same queue and transport as any message, from ``delivery.bounce_from`` (an address SES
lets us send from), and is itself marked so that a failing notice never causes another.
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Mapping, Sequence
from email.utils import formatdate

from relay.spool import queue_id_time


def build(*, queue_id: str, sender: str, bounce_from: str, hostname: str,
          failed: Mapping[str, Sequence[str]], original_headers: bytes,
          now: float | None = None) -> bytes:
    """The notice for *sender* about the recipients in *failed* ({rcpt: [code, error,
    hint]})."""
    boundary = f"=_ses-relay_{uuid.uuid4().hex}"
    head = [
        f"From: Mail Delivery System <{bounce_from}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {formatdate(now, usegmt=True)}",
        f"Message-ID: <{uuid.uuid4()}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; '
        f'boundary="{boundary}"',
    ]
    parts = [
        _part("text/plain; charset=utf-8", _human(queue_id, hostname, failed)),
        _part("message/delivery-status", _status(queue_id, hostname, failed)),
        _part("text/rfc822-headers", original_headers.decode("utf-8", "replace").rstrip()),
    ]
    body = "".join(f"--{boundary}\r\n{p}\r\n" for p in parts) + f"--{boundary}--\r\n"
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("utf-8")


def _part(content_type: str, text: str) -> str:
    lines = "\r\n".join(line for raw in text.splitlines() for line in _wrap(raw))
    return f"Content-Type: {content_type}\r\n\r\n{lines}\r\n"


def _wrap(line: str) -> list[str]:
    # Lines must stay under SMTP's 998 characters; continuation lines start with a space,
    # which keeps header-style fields valid when folded.
    return textwrap.wrap(line, 900, subsequent_indent=" ", break_long_words=True,
                         break_on_hyphens=False) or [""]


def _human(queue_id: str, hostname: str, failed: Mapping[str, Sequence[str]]) -> str:
    lines = [f"This is the mail system at {hostname}.", "",
             "Your message could not be delivered to one or more recipients. It was "
             "accepted, then refused by Amazon SES or given up after retrying.", ""]
    for rcpt, (code, error, *_hint) in failed.items():
        lines.append(f"<{rcpt}>: {code}: {error}")
    lines += ["", f"Queue id: {queue_id}"]
    return "\n".join(lines)


def _status(queue_id: str, hostname: str, failed: Mapping[str, Sequence[str]]) -> str:
    fields = [f"Reporting-MTA: dns; {hostname}", f"X-Ses-Relay-Queue-ID: {queue_id}",
              f"Arrival-Date: {formatdate(queue_id_time(queue_id), usegmt=True)}"]
    for rcpt, (code, error, *_hint) in failed.items():
        status = "4.4.7" if "gave up" in " ".join(_hint) else "5.0.0"
        diagnostic = " ".join(f"{code}: {error}".split())
        fields += ["", f"Final-Recipient: rfc822; {rcpt}", "Action: failed",
                   f"Status: {status}", f"Diagnostic-Code: X-SES; {diagnostic}"]
    return "\n".join(fields)
