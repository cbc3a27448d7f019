"""The reputation guard: stop a broken application from getting the SES account suspended.

AWS reviews an account at a 5% bounce rate or a 0.1% complaint rate, and may suspend it
at 10% / 0.5%. The guard computes both rates over the relay's own recent sends (from the
event store), warns past the warning thresholds, and past the pause thresholds pauses
delivery: mail stays queued, nothing is lost, until an operator runs `ses-relay resume`.
Too few sends say nothing about a rate, so nothing happens below ``min_volume``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from relay import log, metrics
from relay.config import FeedbackConfig
from relay.events import EventStore

_log = log.get("reputation")


class ReputationGuard:
    def __init__(self, store: EventStore, config: FeedbackConfig,
                 pause: Callable[[str], None], clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._config = config
        self._pause = pause
        self._clock = clock
        self._warned: set[str] = set()

    def check(self) -> None:
        """Blocking (SQLite): call from a thread."""
        c = self._config
        rates = self._store.rates(self._clock() - c.window)
        metrics.BOUNCE_RATE.set(rates.bounce_rate)
        metrics.COMPLAINT_RATE.set(rates.complaint_rate)
        if rates.delivered < c.min_volume:
            return
        for kind, rate, warn, pause in (
                ("bounce", rates.bounce_rate, c.warn_bounce_rate, c.pause_bounce_rate),
                ("complaint", rates.complaint_rate, c.warn_complaint_rate,
                 c.pause_complaint_rate)):
            if pause is not None and rate >= pause:
                reason = (f"{kind} rate {rate:.2%} over {pause:.2%} in the last "
                          f"{c.window / 3600:.0f} h ({rates.delivered} recipients)")
                _log.error("delivery_paused", reason=reason,
                           hint="find the application sending to bad addresses, then run "
                                "`ses-relay resume`")
                self._pause(reason)
            elif rate >= warn and kind not in self._warned:
                self._warned.add(kind)
                _log.warning("reputation_warning", kind=kind, rate=round(rate, 5),
                             threshold=warn, delivered=rates.delivered)
            elif rate < warn:
                self._warned.discard(kind)
