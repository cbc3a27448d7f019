"""Prometheus metrics (``ses_relay_*``) and the /metrics, /healthz, /readyz endpoints.

The counters are updated from the mail log (``relay.maillog``), the one place where every
event of a message's life is already reported, so metrics and logs cannot disagree. The
registry is this module's own, not prometheus_client's global one, so nothing else in the
process leaks into the relay's metrics.

The routes live on the relay's HTTP server (relay.web.metricsroutes): this module imports
no HTTP framework, so a process that only takes mail (delivery.process: separate) counts
without loading aiohttp (about 14 MB of RSS).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from relay import log

_log = log.get("metrics")
REGISTRY = CollectorRegistry(auto_describe=True)

CONNECTIONS = Counter("ses_relay_connections", "SMTP connections accepted",
                      ["listener"], registry=REGISTRY)
CONNECTIONS_REFUSED = Counter("ses_relay_connections_refused",
                              "SMTP connections refused by a limit", registry=REGISTRY)
AUTH_FAILURES = Counter("ses_relay_auth_failures", "Failed AUTH attempts", registry=REGISTRY)
AUTH_LOCKOUTS = Counter("ses_relay_auth_lockouts", "AUTH lockouts", registry=REGISTRY)
AUTH_CACHE = Counter("ses_relay_auth_cache", "AUTH answers from remembered successes (hit) "
                     "or from a password check (miss)", ["result"], registry=REGISTRY)
REJECTED = Counter("ses_relay_rejected", "SMTP commands refused by policy",
                   ["step", "code"], registry=REGISTRY)
RECEIVED = Counter("ses_relay_messages_received", "Messages received (end of DATA)",
                   registry=REGISTRY)
QUEUED = Counter("ses_relay_messages_queued", "Messages committed to the queue (250)",
                 registry=REGISTRY)
DELIVERED = Counter("ses_relay_messages_delivered", "Deliveries accepted by the upstream",
                    ["transport"], registry=REGISTRY)
DELIVERED_RCPTS = Counter("ses_relay_recipients_delivered", "Recipients accepted upstream",
                          ["transport"], registry=REGISTRY)
DEFERRED = Counter("ses_relay_messages_deferred", "Delivery attempts deferred",
                   ["code"], registry=REGISTRY)
THROTTLED = Counter("ses_relay_messages_throttled", "Delivery attempts throttled by SES",
                    ["kind"], registry=REGISTRY)
FAILED = Counter("ses_relay_messages_failed", "Recipients failed for good", ["code"],
                 registry=REGISTRY)
SES_ERRORS = Counter("ses_relay_ses_errors", "Errors from the upstream by code", ["code"],
                     registry=REGISTRY)
QUARANTINED = Counter("ses_relay_queue_quarantined", "Corrupt queue entries moved aside",
                      registry=REGISTRY)
USER_LIMIT_REFUSALS = Counter("ses_relay_user_limit_refusals", "Recipients refused by a "
                              "user's max_rate (reason=rate) or max_per_day (reason=day)",
                              ["user", "reason"], registry=REGISTRY)
# multiprocess_mode: how the gauges of several relay processes (workers > 1) combine.
QUEUE_DEPTH = Gauge("ses_relay_queue_depth", "Messages waiting or being delivered",
                    registry=REGISTRY, multiprocess_mode="livesum")
QUEUE_OLDEST = Gauge("ses_relay_queue_oldest_age_seconds", "Age of the oldest queued message",
                     registry=REGISTRY, multiprocess_mode="livemax")
SEND_RATE_LIMIT = Gauge("ses_relay_send_rate_limit", "Recipients per second in force",
                        registry=REGISTRY, multiprocess_mode="livesum")
QUOTA_MAX_24H = Gauge("ses_relay_send_quota_max_24h", "SES Max24HourSend", registry=REGISTRY,
                      multiprocess_mode="livemax")
QUOTA_SENT_24H = Gauge("ses_relay_send_quota_sent_24h", "SES SentLast24Hours",
                       registry=REGISTRY, multiprocess_mode="livemax")
BOUNCE_RATE = Gauge("ses_relay_bounce_rate", "Bounces per delivered recipient (window)",
                    registry=REGISTRY, multiprocess_mode="livemax")
COMPLAINT_RATE = Gauge("ses_relay_complaint_rate", "Complaints per delivered recipient "
                       "(window)", registry=REGISTRY, multiprocess_mode="livemax")
ACCEPT_LATENCY = Histogram("ses_relay_accept_seconds", "From connect to the 250 after DATA",
                           buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                           registry=REGISTRY)
DELIVERY_LATENCY = Histogram("ses_relay_delivery_seconds", "One upstream call",
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                             registry=REGISTRY)
SUPPRESSED_AT_SEND = Counter("ses_relay_recipients_suppressed_at_send", "Recipients dropped "
                             "right before a send: suppressed since the message was queued",
                             ["reason"], registry=REGISTRY)
REGION_FAILOVERS = Counter("ses_relay_region_failovers", "Delivery moved away from a region "
                           "(from_region) to another (to_region)",
                           ["from_region", "to_region", "reason"], registry=REGISTRY)

Check = Callable[[], Awaitable[tuple[bool, str]]]


def exposition() -> bytes:
    """Every relay process's metrics: prometheus_client's multiprocess mode when the
    supervisor set PROMETHEUS_MULTIPROC_DIR (workers > 1), else this process's registry."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class CachedCheck:
    """A readiness check asked at most every *cache_seconds* (it may call the upstream),
    each time within *check_timeout*: below the request deadline (web.request_timeout),
    so a slow check is answered "not ready" with its reason, and cached, rather than cut.
    A check that breaks means: not ready. /readyz and the console's overview both read
    through one."""

    def __init__(self, check: Check, cache_seconds: float = 15.0,
                 check_timeout: float = 5.0) -> None:
        self._check = check
        self._cache_seconds = cache_seconds
        self._check_timeout = check_timeout
        self._cached: tuple[float, bool, str] | None = None

    async def __call__(self) -> tuple[bool, str]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._cache_seconds:
            try:
                ok, detail = await asyncio.wait_for(self._check(), self._check_timeout)
            except Exception as e:
                ok, detail = False, f"check failed: {type(e).__name__}"
            self._cached = (now, ok, detail)
        return self._cached[1], self._cached[2]
