"""What the console shows, gathered from the parts the CLI reads too: the queue
(relay.queueadmin), the event store (relay.events), the suppression list, the scheduler's
rate and quota, the reputation guard's settings. No HTML here; blocking reads run in
threads.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from relay import queueadmin, reputationhold, running
from relay.config import Config
from relay.delivery import Scheduler
from relay.events import EventStore, Rates
from relay.spool import Spool
from relay.suppression import SuppressionList
from relay.users import UserDB

# Where AWS acts on an account's rates (SES developer guide, "Sending review process"):
# a review at 5% bounces or 0.1% complaints, sending paused at 10% / 0.5%.
AWS_REVIEW = {"bounce": 0.05, "complaint": 0.001}
AWS_PAUSE = {"bounce": 0.10, "complaint": 0.005}
HOURS = 24

Readiness = Callable[[], Awaitable[tuple[bool, str]]]
Drift = tuple[list[str], list[str]] | None  # see relay.running.pending


class DriftCache:
    """relay.running.pending, again only when the file (or the running configuration)
    changed: the overview refreshes every few seconds, and parsing and validating the
    whole file each time would be work for nothing. The file is known by its stat (an
    editor's atomic replace gives a new inode; an edit in place a new mtime or size); it
    is all that ``config.load`` reads besides the environment, which a running process's
    outside cannot change."""

    def __init__(self) -> None:
        self._config: Config | None = None  # the running configuration compared
        self._stat: tuple[int, ...] = ()
        self._drift: Drift = None

    def get(self, current: Config) -> Drift:
        """Blocking (a stat, and a parse when something changed): call off the loop."""
        if current.source is None:
            return None
        try:
            st = os.stat(current.source)
        except OSError:
            return None  # as running.pending says of a file it cannot read
        stat = (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if current is not self._config or stat != self._stat:
            self._drift = running.pending(current)
            self._config, self._stat = current, stat
        return self._drift


@dataclass
class Sources:
    """The running relay's parts the console reads and acts on (wired by relay.app)."""

    config: Callable[[], Config]
    users: Callable[[], UserDB]
    spool: Spool  # opened as the queue commands open it (relay.queueadmin.open_spool)
    scheduler: Scheduler
    events: EventStore
    suppression: SuppressionList
    readiness: Readiness
    drift: DriftCache = field(default_factory=DriftCache)


@dataclass(frozen=True)
class RateView:
    kind: str
    rate: float
    warn: float
    pause: float | None
    aws_review: float
    aws_pause: float


def guard_state(rates: Rates, config: Config, paused: str | None,
                hold: reputationhold.Hold | None = None) -> tuple[str, str]:
    """(level, text): the reputation guard's state as the overview says it."""
    fb = config.feedback
    if paused is not None:
        return "bad", f"delivery paused: {paused}"
    if hold is not None and hold.state == reputationhold.HELD and (
            held := reputationhold.describe(hold, fb)):
        return "warn", f"resumed, held: {'; '.join(held)}"
    if rates.delivered < fb.min_volume:
        return "ok", (f"watching: {rates.delivered} recipients in the window, fewer than "
                      f"the {fb.min_volume} needed to judge a rate")
    over = [k for k, r, w in (("bounce", rates.bounce_rate, fb.warn_bounce_rate),
                              ("complaint", rates.complaint_rate, fb.warn_complaint_rate))
            if r >= w]
    if over:
        return "warn", f"warning: {' and '.join(over)} rate over the warning threshold"
    return "ok", "sending: rates below the warning thresholds"


def rate_views(rates: Rates, config: Config) -> list[RateView]:
    fb = config.feedback
    return [RateView("bounce", rates.bounce_rate, fb.warn_bounce_rate, fb.pause_bounce_rate,
                     AWS_REVIEW["bounce"], AWS_PAUSE["bounce"]),
            RateView("complaint", rates.complaint_rate, fb.warn_complaint_rate,
                     fb.pause_complaint_rate, AWS_REVIEW["complaint"],
                     AWS_PAUSE["complaint"])]


async def overview(src: Sources, *, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    cfg = src.config()
    start = (now // 3600 - (HOURS - 1)) * 3600  # whole hours, the current one last

    def read() -> tuple[dict[str, int], Rates, dict[str, list[int]], str | None, Drift]:
        # Every blocking read in one trip to a thread. The drift: whether the file still
        # says what runs (a SIGHUP would apply some keys; others wait for a restart),
        # read again when the file changed; relay.running decides which.
        return (queueadmin.counts(src.spool), src.events.rates(now - cfg.feedback.window),
                src.events.hourly(start, HOURS), src.spool.paused(), src.drift.get(cfg))

    counts, rates, hourly, paused, drift = await asyncio.to_thread(read)
    ready, detail = await src.readiness()
    quota = src.scheduler.quota
    level, state = guard_state(rates, cfg, paused,
                               await asyncio.to_thread(reputationhold.load, src.spool.directory))
    return {
        "counts": counts,
        "oldest_age": src.scheduler.oldest_age(),
        "rate_in_force": src.scheduler.rate,
        "max_send_rate": quota.max_send_rate if quota else None,
        "sent_24h": quota.sent_last_24_hours if quota else None,
        "max_24h": quota.max_24_hour_send if quota else None,
        "delivered_window": rates.delivered,
        "window_hours": cfg.feedback.window / 3600,
        "rates": rate_views(rates, cfg),
        "guard_level": level,
        "guard_state": state,
        "paused": paused,
        "upstream_ok": ready,
        "upstream": detail,
        "transport": cfg.delivery.transport,
        "hourly": hourly,
        "hourly_start": start,
        "drift": drift,  # None: the file is unreadable or invalid
        "at": now,
    }


def json_overview(view: dict[str, Any]) -> dict[str, Any]:
    """The overview as JSON for scripts (the charts' series included)."""
    out = dict(view)
    out["rates"] = [r.__dict__ for r in view["rates"]]
    return out


async def queue_rows(src: Sources, state: str = "", text: str = "",
                     limit: int = 500) -> list[queueadmin.Row]:
    text = text.strip().lower()

    def read() -> list[queueadmin.Row]:
        out = []
        for row in queueadmin.rows(src.spool):
            if state and row.state != state:
                continue
            if text and text not in row.queue_id.lower() and text not in row.sender.lower() \
                    and not any(text in r.lower() for r in row.rcpts):
                continue
            out.append(row)
            if len(out) >= limit:
                break
        return out

    return await asyncio.to_thread(read)
