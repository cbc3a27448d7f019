"""The reputation guard: stop a broken application from getting the SES account suspended.

AWS reviews an account at a 5% bounce rate or a 0.1% complaint rate, and may suspend it
at 10% / 0.5%, judged over a representative volume. The guard computes both rates over
the relay's own recent sends (from the event store), warns past the warning thresholds,
and past the pause thresholds pauses delivery: mail stays queued, nothing is lost, until
an operator runs `ses-relay resume`.

Our own counts are a small sample, so they decide only with enough of it: at least
``min_volume`` delivered recipients AND at least ``min_bounces`` / ``min_complaints``
events. The defaults, from AWS's thresholds: a healthy account at the 0.1% complaint
review level, over the 200-recipient ``min_volume``, expects 0.2 complaints; it gets one
about one time in five (a pause on one complaint is mostly noise), three about one time in
a thousand (Poisson), so ``min_complaints`` is 3. At the 5% bounce review level 200
recipients give 10 bounces, and an account at the 2.5% warning level gets 10 or more only
about three times in a hundred, so ``min_bounces`` is 10.

With ``reputation_source: cloudwatch`` (or ``both``) it also judges SES's own rates for
the account (relay.reputationcw), and a resume holds (relay.reputationhold).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay import log, metrics
from relay import reputationhold as holds
from relay.config import FeedbackConfig
from relay.events import EventStore

if TYPE_CHECKING:
    from relay.reputationcw import CloudWatchReputation, Rate
    from relay.spool import Spool

_log = log.get("reputation")


@dataclass(frozen=True)
class Reading:
    """One rate from one source, and whether it is enough evidence to act on."""

    source: str  # "own" (the event store) or "cloudwatch" (SES's own Reputation.*)
    kind: str  # "bounce" or "complaint"
    rate: float
    decisive: bool
    detail: str  # for the log: the counts behind the rate

    @property
    def key(self) -> str:
        return f"{self.source}:{self.kind}"


class ReputationGuard:
    def __init__(self, store: EventStore, config: FeedbackConfig,
                 pause: Callable[[str], None], clock: Callable[[], float] = time.time,
                 spool: Spool | None = None,
                 cloudwatch: CloudWatchReputation | None = None) -> None:
        self._store = store
        self._config = config
        self._pause = pause
        self._clock = clock
        # The queue: whether delivery is paused, and the hold file beside it (no spool,
        # as in a bare guard: no hold, every check judges the plain thresholds).
        self._spool = spool
        self._warned: set[str] = set()
        self._held: set[str] = set()  # keys whose hold has been logged
        self._last: list[Reading] = []
        # One check at a time: an event's check and the CloudWatch round's, in threads,
        # would otherwise both write the hold file and both pause.
        self._checking = threading.Lock()
        # SES's own rates (feedback.reputation_source: cloudwatch/both): the last known
        # ones, kept through an outage (a failure to read is never a reason to pause).
        self._cloudwatch = cloudwatch
        self._cw_rates: dict[str, Rate] = {}
        self._cw_down = False
        self.refreshes = 0  # CloudWatch reads tried (answered or not)

    def own_readings(self) -> list[Reading]:
        c = self._config
        rates = self._store.rates(self._clock() - c.window)
        metrics.BOUNCE_RATE.set(rates.bounce_rate)
        metrics.COMPLAINT_RATE.set(rates.complaint_rate)
        enough = rates.delivered >= c.min_volume
        hours = f"{c.window / 3600:.0f} h"
        return [
            Reading("own", "bounce", rates.bounce_rate,
                    enough and rates.bounces >= c.min_bounces,
                    f"{rates.bounces} bounces, {rates.delivered} recipients in {hours}"),
            Reading("own", "complaint", rates.complaint_rate,
                    enough and rates.complaints >= c.min_complaints,
                    f"{rates.complaints} complaints, {rates.delivered} recipients in "
                    f"{hours}"),
        ]

    async def refresh(self) -> None:
        """Read SES's rates from CloudWatch (with feedback.reputation_source cloudwatch or
        both); then check() judges them. A failure is logged once per outage."""
        from relay.reputationcw import ReputationUnavailable

        if self._cloudwatch is None:
            return
        self.refreshes += 1
        try:
            rates = await self._cloudwatch.fetch()
        except ReputationUnavailable as e:
            if not self._cw_down:
                self._cw_down = True
                _log.warning("reputation_cloudwatch_unavailable", error=str(e),
                             region=self._cloudwatch.region,
                             kept={k: round(r.rate, 5) for k, r in self._cw_rates.items()},
                             hint="the guard keeps the last rates it read (or our own "
                                  "counts) and never pauses for this; needs "
                                  "cloudwatch:GetMetricData")
            return
        if self._cw_down:
            self._cw_down = False
            _log.info("reputation_cloudwatch_back", region=self._cloudwatch.region)
        # A new dict, not an update: check() may be reading the old one in a thread.
        self._cw_rates = {**self._cw_rates, **rates}

    def cloudwatch_readings(self) -> list[Reading]:
        # SES computes these over a representative volume of the whole account's mail, as
        # AWS judges it: the rate alone decides (a minimum count of our own would only
        # delay what AWS itself acts on, and our counts are one relay's share of it).
        return [Reading("cloudwatch", r.kind, r.rate, True,
                        f"SES {r.metric} at {r.at.isoformat(timespec='minutes')}")
                for r in self._cw_rates.values()]

    def readings(self) -> list[Reading]:
        source = self._config.reputation_source
        if source == "own" or self._cloudwatch is None:
            return self.own_readings()
        cloudwatch = self.cloudwatch_readings()
        if source == "both":
            return self.own_readings() + cloudwatch
        # cloudwatch: our own counts stand in for a rate SES has not given us (yet).
        known = {r.kind for r in cloudwatch}
        return cloudwatch + [r for r in self.own_readings() if r.kind not in known]

    def check(self) -> None:
        """Blocking (SQLite, files): call from a thread."""
        with self._checking:
            readings = self._last = self.readings()
            hold = self._hold(readings)
            if hold is not None and hold.state == holds.PAUSED:
                return  # paused by us, and still: nothing to add until a resume
            for r in readings:
                if self._judge(r, hold):
                    break

    def _hold(self, readings: list[Reading]) -> holds.Hold | None:
        """The hold file, brought up to date with *readings*."""
        if self._spool is None:
            return None
        directory, now = self._spool.directory, self._clock()
        hold = holds.load(directory)
        if hold is None:
            return None
        rates = {r.key: r.rate for r in readings}
        if hold.state == holds.PAUSED:
            if self._spool.paused() is not None:
                # Kept current, so a resume holds at the rate the operator last saw.
                if rates != hold.rates:
                    holds.save(directory, holds.Hold(holds.PAUSED, rates, hold.since))
                return hold
            # Resumed by other means than `ses-relay resume` (the file deleted): the same.
            hold = holds.resumed(directory, now)
            assert hold is not None
        if all(r.rate < (self._thresholds(r.kind)[1] or 1.0) for r in readings):
            holds.clear(directory)
            self._held.clear()
            _log.info("reputation_hold_ended", rates={k: round(v, 5) for k, v in
                                                      rates.items()})
            return None
        return hold

    def _thresholds(self, kind: str) -> tuple[float, float | None]:
        c = self._config
        if kind == "bounce":
            return c.warn_bounce_rate, c.pause_bounce_rate
        return c.warn_complaint_rate, c.pause_complaint_rate

    def _judge(self, r: Reading, hold: holds.Hold | None) -> bool:
        """Warn or pause for *r*; whether it paused."""
        warn, pause = self._thresholds(r.kind)
        if not r.decisive:
            return False
        again = pause if pause is None or hold is None else hold.pauses_at(
            r.key, pause, self._config.resume_margin)
        if again is not None and r.rate >= again:
            self._pause_for(r, again)
            return True
        if pause is not None and r.rate >= pause:  # past it, but held since a resume
            if hold is not None and again is not None and r.key not in self._held:
                self._held.add(r.key)
                _log.warning("reputation_held", source=r.source, kind=r.kind,
                             rate=round(r.rate, 5),
                             at_resume=round(hold.rates.get(r.key, 0.0), 5),
                             pauses_again_at=round(again, 5), detail=r.detail,
                             hint="delivery was resumed at this level; it pauses again "
                                  "only if the rate rises further (or `ses-relay pause`)")
        elif r.rate >= warn and r.key not in self._warned:
            self._warned.add(r.key)
            _log.warning("reputation_warning", kind=r.kind, source=r.source,
                         rate=round(r.rate, 5), threshold=warn, detail=r.detail)
        elif r.rate < warn:
            self._warned.discard(r.key)
        return False

    def _pause_for(self, r: Reading, threshold: float) -> None:
        reason = f"{r.kind} rate {r.rate:.2%} over {threshold:.2%} ({r.source}: {r.detail})"
        if self._spool is not None:
            # Both files now, not when the loop gets to the pause: a check in between
            # would take a hold without a pause file for a resume.
            holds.save(self._spool.directory, holds.Hold(
                holds.PAUSED, {x.key: x.rate for x in self._last}, self._clock()))
            if self._spool.paused() is None:  # an operator's own pause keeps its reason
                self._spool.set_paused(reason)
        self._held.clear()
        self._pause(reason)
        # Logged once the pause is on disk: whoever reads the line finds the pause file.
        _log.error("delivery_paused", reason=reason, source=r.source, kind=r.kind,
                   rate=round(r.rate, 5),
                   hint="find the application sending to bad addresses, then run "
                        "`ses-relay resume`")
