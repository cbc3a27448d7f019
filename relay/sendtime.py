"""Suppression checked again right before each send.

The policy refuses suppressed recipients at RCPT, but a message may wait in the queue for
hours (SES throttling, an outage) while one of its recipients bounces or complains in
another message. Sending to that address then is what the suppression list exists to
prevent, so every attempt asks the list again, recipient by recipient, just before the
send. A recipient found there fails for good (code ``Suppressed``): it is logged, counted,
recorded in the event store (``ses-relay trace``) and, with ``delivery.bounce_notices``,
reported to the sender in the delivery status notification.
"""

from __future__ import annotations

import sqlite3

from relay import maillog
from relay.errors import DeliveryError
from relay.spool import DeliveryState
from relay.suppression import SuppressionError, SuppressionList

CODE = "Suppressed"


def drop_suppressed(queue_id: str, rcpts: tuple[str, ...], state: DeliveryState,
                    suppression: SuppressionList | None) -> tuple[str, ...]:
    """The recipients of *rcpts* that may still be sent to; the others are recorded in
    ``state.rejected``. Raises DeliveryError (transient) when the list cannot be read:
    waiting is better than sending to an address that may be on it."""
    if suppression is None:
        return rcpts
    keep = []
    for rcpt in rcpts:
        try:
            # Inline, as at RCPT (relay/policy.py): a primary-key lookup in SQLite's page
            # cache costs microseconds, less than the hop to a thread.
            entry = suppression.lookup(rcpt)
        except (sqlite3.Error, SuppressionError) as e:
            raise DeliveryError(str(e), permanent=False, code="SuppressionUnavailable",
                                hint="the suppression list cannot be read; delivery "
                                     "waits until it can") from e
        if entry is None:
            keep.append(rcpt)
            continue
        state.rejected[rcpt] = [CODE, f"suppressed since queued ({entry.reason}, "
                                      f"{entry.address})",
                                "the address is on the suppression list: "
                                "`ses-relay suppress remove` if it should get mail again"]
        maillog.suppressed_at_send(queue_id, rcpt, entry.reason, entry.address)
    return tuple(keep)
