"""What the relay does with SES feedback: suppress addresses that bounce or complain.

A permanent bounce or a complaint suppresses its recipients at once: AWS reviews accounts
whose bounce rate passes 5% or complaint rate 0.1%, and mailing them again only hurts.
Transient and undetermined bounces (mailbox full, greylisting, a receiver's bad day) are
counted per address: ``transient_bounce_limit`` of them within the window are tolerated,
one more suppresses. The counts live
in SQLite, in memory by default or in a file that survives restarts (a 7-day window is
longer than most processes live). Every other event type changes nothing.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from relay import log
from relay.addresses import AddressError, normalize
from relay.feedback.notifications import Event, Kind
from relay.suppression import SuppressionList

_log = log.get("feedback")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transient_bounce (
    address  TEXT NOT NULL,  -- lower-cased
    feedback TEXT NOT NULL,  -- SES feedback id: a redelivered notification counts once
    at       REAL NOT NULL,
    PRIMARY KEY (address, feedback)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS transient_bounce_at ON transient_bounce (at);
"""

_TRANSIENT = ("Transient", "Undetermined")
_ACCOUNT_LIST = "OnAccountSuppressionList"
_DIAGNOSTIC_MAX = 200


class TransientCounter:
    """Transient bounces per address within a sliding window, in SQLite.

    ``path`` None keeps the counts in memory (lost on restart)."""

    def __init__(self, path: Path | None = None, *, window: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if path is None else path,
                                   check_same_thread=False, isolation_level=None, timeout=10)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, address: str, feedback: str) -> int:
        """Count one bounce and return how many *address* has had within the window."""
        now = self._clock()
        with self._lock:
            # Old rows go on every write, so the table never outgrows one window's worth.
            self._db.execute("DELETE FROM transient_bounce WHERE at <= ?", (now - self.window,))
            self._db.execute("INSERT OR IGNORE INTO transient_bounce VALUES (?, ?, ?)",
                             (address.lower(), feedback, now))
            row = self._db.execute("SELECT count(*) FROM transient_bounce WHERE address = ?",
                                   (address.lower(),)).fetchone()
        return int(row[0])

    def reset(self, address: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM transient_bounce WHERE address = ?",
                             (address.lower(),))


class FeedbackProcessor:
    """Applies SES events to the suppression list. Blocking (SQLite): call it from a
    thread (``asyncio.to_thread``) in async code."""

    def __init__(self, suppression: SuppressionList, *, transient_bounce_limit: int = 3,
                 transient_window: float = 7 * 86400, clock: Callable[[], float] = time.time,
                 counts_path: Path | None = None) -> None:
        self.suppression = suppression
        self.transient_bounce_limit = transient_bounce_limit
        self.transient = TransientCounter(counts_path, window=transient_window, clock=clock)

    def close(self) -> None:
        self.transient.close()

    def process(self, event: Event) -> list[str]:
        """Apply *event*; return one short line per action, for the log."""
        if event.kind is Kind.BOUNCE:
            return self._bounce(event)
        if event.kind is Kind.COMPLAINT:
            return self._each(event, lambda a: self._suppress(event, a, "complaint",
                                                              _source(event)))
        return [_ignore(event, f"{event.kind} events change nothing")]

    def _bounce(self, event: Event) -> list[str]:
        if event.bounce_type == "Permanent":
            return self._each(event, lambda a: self._suppress(event, a, "bounce",
                                                              _source(event)))
        if event.bounce_type in _TRANSIENT:
            return self._each(event, lambda a: self._count(event, a))
        return [_ignore(event, f"bounce type {event.bounce_type!r} not understood")]

    def _each(self, event: Event, action: Callable[[str], str]) -> list[str]:
        if not event.recipients:
            return [_ignore(event, "no recipients")]
        actions = []
        for address in event.recipients:
            try:
                normalize(address)
            except AddressError as e:
                # Also keeps an "@domain" from SES from ever suppressing a whole domain.
                actions.append(_ignore(event, f"bad address: {e.reason}", address=address))
                continue
            actions.append(action(address))
        return actions

    def _suppress(self, event: Event, address: str, reason: str, source: str) -> str:
        self.suppression.add(address, reason, source=source)
        self.transient.reset(address)
        _log.info("feedback_suppressed", address=address, reason=reason, source=source,
                  kind=str(event.kind), ses_message_id=event.ses_message_id,
                  bounce_type=event.bounce_type, bounce_subtype=event.bounce_subtype,
                  diagnostic=_short(event.diagnostic))
        return f"suppressed {address} ({reason}, {source})"

    def _count(self, event: Event, address: str) -> str:
        feedback = event.feedback_id or event.ses_message_id
        count = self.transient.record(address, feedback)
        limit = self.transient_bounce_limit
        _log.info("feedback_counted", address=address, count=count, limit=limit,
                  ses_message_id=event.ses_message_id, bounce_type=event.bounce_type,
                  bounce_subtype=event.bounce_subtype, diagnostic=_short(event.diagnostic))
        if count > limit:
            return self._suppress(event, address, "bounce", f"ses:transient:{feedback}")
        return f"counted {address} ({count}/{limit})"


def _source(event: Event) -> str:
    feedback = event.feedback_id or event.ses_message_id
    # SES did not even try these: the address is on the account-level suppression list.
    if _ACCOUNT_LIST in (event.bounce_subtype, event.complaint_subtype):
        return f"ses:account-suppression-list:{feedback}"
    return f"ses:{feedback}"


def _ignore(event: Event, why: str, **extra: str) -> str:
    _log.info("feedback_ignored", kind=str(event.kind), ses_message_id=event.ses_message_id,
              reason=why, **extra)
    return f"ignored {event.kind}: {why}"


def _short(text: str | None) -> str | None:
    return text if text is None or len(text) <= _DIAGNOSTIC_MAX else \
        text[:_DIAGNOSTIC_MAX] + "..."
