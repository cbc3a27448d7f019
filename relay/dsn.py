"""Delivery status notifications (RFC 3464) for mail that failed after it was accepted.

A legacy application never learns that a message it handed over with a 250 later failed
at SES; the sender's mailbox does, the way mail has always worked. The notice goes through
the same queue and transport as any message, from ``delivery.bounce_from`` (an address SES
lets us send from), and is itself marked so that a failing notice never causes another.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import Mapping, Sequence
from email.utils import formatdate
from typing import Any

from relay import log, maillog
from relay.config import DeliveryConfig
from relay.errors import SpoolError
from relay.spool import Envelope, Spool, queue_id_time

_log = log.get("dsn")


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


async def queue_notice(spool: Spool, delivery: DeliveryConfig, hostname: str, queue_id: str,
                       envelope: Envelope, record: dict[str, Any]) -> str | None:
    """Queue the notice for a message that failed after its 250, when bounce notices are
    on and the sender wants one; the notice's queue id, or None."""
    if not delivery.bounce_notices or envelope.no_dsn or not delivery.bounce_from:
        return None
    try:
        headers = await asyncio.to_thread(spool.read_headers, queue_id, "failed")
        notice = build(queue_id=queue_id, sender=envelope.mail_from,
                       bounce_from=delivery.bounce_from, hostname=hostname,
                       failed=record.get("failed", {}), original_headers=headers)
        draft = spool.draft()
        draft.write(notice)
        notice_id = await spool.commit(draft, Envelope(
            mail_from=delivery.bounce_from, rcpt_tos=(envelope.mail_from,), no_dsn=True))
    except (OSError, SpoolError) as e:
        # The failed message itself is safe in failed/; only its notice is missing.
        # (Raised further, this would reach the delivery worker as a bug about a
        # message that is no longer in active/.)
        _log.error("bounce_notice_failed", queue_id=queue_id, error=str(e),
                   hint="the message stays in failed/; `ses-relay queue show` says why")
        return None
    maillog.bounce_notice(queue_id, notice_id, envelope.mail_from)
    return notice_id
