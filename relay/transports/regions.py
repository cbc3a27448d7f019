"""Region failover for the SES API transports (``delivery.failover``).

One transport per region, the primary (``delivery.region``) first. A send goes to the
first region that is up; a region goes down when it is unreachable, when SES says sending
is paused for the account there, or after ``delivery.failover_after`` consecutive 5xx or
throttling answers. A region that is down is tried again (with a real message, the
circuit breaker's half-open probe) ``delivery.failover_probe`` seconds later, and one
failure then puts it down again at once. Delivery comes back to the primary as soon as it
takes a message again.

No message is sent twice because of a switch: a message moves to the next region only
when its send surely did not succeed (no connection was made, or SES answered with an
error; DeliveryError.unsent). A send that may have reached SES (a read timeout, a
connection lost after the request went) is retried in that region only: the error carries
the region (``pin``), the scheduler keeps it in the message's delivery state, and the
retry comes back through ``send_pinned``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from relay import log, maillog
from relay.config import DeliveryConfig
from relay.errors import DeliveryError
from relay.spool import Envelope
from relay.transports.base import Quota, SendResult, Transport

_log = log.get("delivery")

# SES's "sending is paused for the account in this region" (SESv2 and SESv1 codes).
PAUSED = frozenset({"AccountSendingPausedException", "SendingPausedException"})
_UNREACHABLE = frozenset({"ConnectionError", "Timeout"})


@runtime_checkable
class Pinnable(Protocol):
    async def send_pinned(self, envelope: Envelope, data: bytes, region: str) -> SendResult:
        """Send in *region* only (a retry of a send that may have reached SES there)."""
        ...


@dataclass
class Region:
    name: str
    transport: Transport
    strikes: int = 0  # consecutive 5xx / throttling answers
    down_until: float = 0.0  # a monotonic time; up again (for a probe) from then on
    down_reason: str | None = None  # why it went down; None while it is healthy


def build(config: DeliveryConfig, single: Callable[[DeliveryConfig], Transport]
          ) -> RegionFailover:
    """The primary's transport and one per ``delivery.failover`` entry, same settings."""
    regions = [Region(config.region or "", single(replace(config, failover=())))]
    for f in config.failover:
        regions.append(Region(f.region, single(replace(
            config, region=f.region, endpoint_url=f.endpoint_url, failover=()))))
    return RegionFailover(regions, after=config.failover_after, probe=config.failover_probe)


class RegionFailover:
    def __init__(self, regions: Sequence[Region], *, after: int, probe: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert regions, "the primary region at least"
        self._regions = list(regions)
        self._by_name = {r.name: r for r in self._regions}
        self._after = after
        self._probe = probe
        self._clock = clock
        self._active = self._regions[0]
        transports = [r.transport for r in self._regions]
        self.name = transports[0].name
        # What every region's transport takes (they are all of one kind: the same).
        self.max_message_size = min(t.max_message_size for t in transports)
        self.max_recipients = min(t.max_recipients for t in transports)
        self.memory_per_byte = max(t.memory_per_byte for t in transports)

    @property
    def active(self) -> str:
        """The region the last message went to."""
        return self._active.name

    async def start(self) -> None:
        for r in self._regions:
            await r.transport.start()

    async def aclose(self) -> None:
        for r in self._regions:
            await r.transport.aclose()

    async def quota(self) -> Quota | None:
        """The quota of the region in use: each region has its own."""
        return await self._active.transport.quota()

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        last: DeliveryError | None = None
        for region in self._candidates():
            try:
                result = await region.transport.send(envelope, data)
            except DeliveryError as e:
                moving = self._failed(region, e)
                if e.permanent:
                    raise  # a verdict about the message, the same in every region
                if not e.unsent:
                    e.pin = region.name  # may have reached SES: retried there only
                    raise
                if not moving:
                    raise  # below the threshold: the scheduler's retry, in this region
                last = e
                continue  # surely not sent: the next region may take it
            self._succeeded(region)
            return replace(result, region=region.name)
        assert last is not None
        raise last

    async def send_pinned(self, envelope: Envelope, data: bytes, region: str) -> SendResult:
        r = self._by_name.get(region)
        if r is None:  # no longer configured: nowhere else to honour the pin
            _log.warning("region_pin_dropped", region=region,
                         hint="the region was removed from delivery.failover")
            return await self.send(envelope, data)
        try:
            result = await r.transport.send(envelope, data)
        except DeliveryError as e:
            self._failed(r, e)
            # Even when this send surely failed, the earlier one may have gone: stay.
            e.pin = r.name
            raise
        self._succeeded(r)
        return replace(result, region=r.name)

    def _candidates(self) -> list[Region]:
        """The regions that are up, in order; when none is, the one due back first."""
        now = self._clock()
        up = [r for r in self._regions if r.down_until <= now]
        return up or [min(self._regions, key=lambda r: r.down_until)]

    def _failed(self, region: Region, e: DeliveryError) -> bool:
        """Count a failure against *region*; True when it is down now."""
        if e.permanent:
            region.strikes = 0  # SES answered about the message: the region works
            return False
        if e.code in PAUSED:
            reason = "paused"
        elif e.code in _UNREACHABLE and e.unsent:
            reason = "unreachable"
        else:
            if e.throttle:
                reason = "throttled"
            elif e.status >= 500:
                reason = "5xx"
            elif e.code in _UNREACHABLE:
                reason = "timeout"  # may have been sent: counts, but does not move it
            else:
                return False  # credentials, permissions...: the same in every region
            region.strikes += 1
            # A region on probation (it was down) goes down again at its first failure.
            if region.strikes < self._after and region.down_reason is None:
                return False
        self._down(region, reason, e.code)
        return True

    def _down(self, region: Region, reason: str, code: str) -> None:
        now = self._clock()
        if region.down_until > now:
            return  # already down: concurrent sends that were under way as it went
        region.strikes = 0
        region.down_until = now + self._probe
        still = region.down_reason is not None
        region.down_reason = reason
        _log.warning("region_down", region=region.name, reason=reason, code=code,
                     still_down=still, probe_in=self._probe)

    def _succeeded(self, region: Region) -> None:
        region.strikes = 0
        region.down_until = 0.0
        region.down_reason = None
        if region is not self._active:
            previous = self._active
            maillog.region_failover(previous.name, region.name,
                                    previous.down_reason or "recovered")
            self._active = region
