"""The delivery contract every transport keeps, and the factory that picks one.

A transport delivers one message to a list of envelope recipients and returns the
upstream's message id plus the recipients it refused (an SMTP upstream answers per
recipient), or raises DeliveryError saying whether a retry can help. It knows its own
limits, so policy and the scheduler ask it instead of scattering per-transport ifs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from relay.config import DeliveryConfig
from relay.errors import DeliveryError
from relay.queueentry import FileBlob
from relay.spool import Envelope


@dataclass(frozen=True)
class SendResult:
    message_id: str
    # Recipients the upstream refused while accepting the message for the others.
    refused: dict[str, DeliveryError] = field(default_factory=dict)
    # The region that took it, with delivery.failover (relay/transports/regions.py).
    region: str | None = None


@dataclass(frozen=True)
class Quota:
    """The account's sending limits, as SES reports them (recipients, not messages)."""

    max_send_rate: float
    max_24_hour_send: float
    sent_last_24_hours: float

    @classmethod
    def from_ses(cls, fields: dict[str, Any]) -> Quota | None:
        """From SES's MaxSendRate, Max24HourSend, SentLast24Hours (GetAccount's SendQuota,
        or GetSendQuota); None without a MaxSendRate: no limit but SES's throttling."""
        if not fields.get("MaxSendRate"):
            return None
        return cls(max_send_rate=float(fields["MaxSendRate"]),
                   max_24_hour_send=float(fields.get("Max24HourSend", 0)),
                   sent_last_24_hours=float(fields.get("SentLast24Hours", 0)))


@runtime_checkable
class FileSender(Protocol):
    """A transport that can read a large message from its queue file as it sends it, so
    that the message is never whole in memory (SESv2, through relay.transports.httpbody;
    the outbox). Not yet delivery.failover's RegionFailover, nor SESv1 or SMTP. Peak RSS
    of the delivery process under 50 x 10 MB uploads: 118 MB holding the messages, 80 MB
    streaming them (bench/upload_memory.py, bench/RESULTS.md)."""

    async def send_file(self, envelope: Envelope, message: FileBlob) -> SendResult: ...


class Transport(Protocol):
    name: str
    # Largest raw message (before any base64 the API applies) the upstream accepts.
    max_message_size: int
    # Most envelope recipients one call may carry.
    max_recipients: int
    # Bytes of memory one send holds at its peak, per byte of message: the scheduler
    # charges its in-flight budget this much (relay/delivery.py, ByteBudget), so that the
    # budget bounds memory, not raw message bytes.
    memory_per_byte: float

    async def start(self) -> None: ...

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        """Deliver to ``envelope.rcpt_tos``; raise DeliveryError if nobody got it."""
        ...

    async def quota(self) -> Quota | None:
        """The account's send quota, or None where the transport cannot tell."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Probed(Protocol):
    """A transport with a readiness probe of its own (the smtp endpoint, the outbox)."""

    async def probe(self) -> None:
        """Raise DeliveryError if the upstream cannot take mail now."""
        ...


async def probe(transport: Transport) -> None:
    """Readiness: the transport's own probe, else its quota call (an API transport: the
    endpoint answers with our credentials). Raises DeliveryError."""
    if isinstance(transport, Probed):
        await transport.probe()
    else:
        await transport.quota()


def build(config: DeliveryConfig) -> Transport:
    if config.failover and config.transport in ("sesv2", "sesv1"):
        from relay.transports import regions

        return regions.build(config, _single)
    return _single(config)


def _single(config: DeliveryConfig) -> Transport:
    if config.transport == "outbox":
        from relay.transports.outbox import OutboxTransport

        return OutboxTransport(config.outbox_dir)
    if config.transport == "sesv1":
        from relay.transports.sesv1 import SESv1Transport

        return SESv1Transport(config)
    if config.transport == "smtp":
        from relay.transports.smtp import SMTPTransport

        return SMTPTransport(config)
    from relay.transports.sesv2 import SESv2Transport

    return SESv2Transport(config)


# Each transport's max_message_size, for a process that takes mail without delivering it
# (delivery.process: separate): it advertises the limit in EHLO SIZE without importing
# the transport (the AWS SDK, for the API ones). tests/test_workers.py ties the two.
MAX_MESSAGE_SIZE = {"sesv2": 30_000_000, "sesv1": 7_500_000, "smtp": 30_000_000,
                    "outbox": 30_000_000}
