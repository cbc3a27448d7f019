"""The delivery contract every transport keeps, and the factory that picks one.

A transport delivers one message to its envelope recipients and returns the upstream's
message id, or raises DeliveryError saying whether a retry can help. It knows its own
limits, so policy asks it instead of scattering per-transport ifs.
"""

from __future__ import annotations

from typing import Protocol

from relay.config import DeliveryConfig
from relay.spool import Envelope


class Transport(Protocol):
    name: str
    # Largest raw message (before any base64 the API applies) the upstream accepts.
    max_message_size: int
    # Most envelope recipients one call may carry.
    max_recipients: int

    async def start(self) -> None: ...

    async def send(self, envelope: Envelope, data: bytes) -> str:
        """Deliver; return the upstream message id or raise DeliveryError."""
        ...

    async def aclose(self) -> None: ...


def build(config: DeliveryConfig) -> Transport:
    if config.transport == "outbox":
        from relay.transports.outbox import OutboxTransport

        return OutboxTransport(config.outbox_dir)
    from relay.transports.sesv2 import SESv2Transport

    return SESv2Transport(config)
