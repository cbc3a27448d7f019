"""The account's quota as the scheduler follows it: SES's MaxSendRate (unless
``delivery.max_send_rate`` is set) and a pause short of the 24-hour quota."""

from __future__ import annotations

from relay import log, metrics
from relay.ratelimit import Limiter
from relay.transports.base import Quota, Transport

_log = log.get("delivery")

DAILY_QUOTA_PAUSE = 900.0


async def refresh(transport: Transport, limiter: Limiter, *,
                  configured_rate: float | None, rate_share: float) -> Quota | None:
    """Read the quota and apply it to *limiter*; the quota, or None when it is unknown."""
    try:
        quota = await transport.quota()
    except Exception as e:  # a quota we cannot read must not stop delivery
        _log.warning("quota_unavailable", error=str(e),
                     hint="set delivery.max_send_rate, or allow ses:GetAccount "
                          "(SESv2) / ses:GetSendQuota (SESv1)")
        return None
    if quota is None:
        return None
    if configured_rate is None:
        limiter.set_rate(quota.max_send_rate * rate_share)
    metrics.QUOTA_MAX_24H.set(quota.max_24_hour_send)
    metrics.QUOTA_SENT_24H.set(quota.sent_last_24_hours)
    if quota.max_24_hour_send > 0 and quota.sent_last_24_hours >= quota.max_24_hour_send:
        _log.warning("daily_quota_reached", max_24_hour_send=quota.max_24_hour_send,
                     sent_last_24_hours=quota.sent_last_24_hours,
                     hint="mail stays queued until SES's 24-hour window frees up; "
                          "ask AWS for a higher sending quota")
        limiter.pause(DAILY_QUOTA_PAUSE)
    _log.info("quota", max_send_rate=quota.max_send_rate,
              max_24_hour_send=quota.max_24_hour_send,
              sent_last_24_hours=quota.sent_last_24_hours, rate_in_force=limiter.rate)
    return quota
