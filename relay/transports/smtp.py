"""Placeholder: the SES SMTP endpoint transport is being written (issue 4)."""

from __future__ import annotations

from relay.config import DeliveryConfig
from relay.errors import DeliveryError
from relay.spool import Envelope
from relay.transports.base import Quota, SendResult


class SMTPTransport:
    name = "smtp"
    max_message_size = 40 * 1000 * 1000 * 3 // 4
    max_recipients = 50

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config

    async def start(self) -> None:
        raise DeliveryError("the smtp transport is not available yet", permanent=False,
                            code="NotImplemented", hint="use transport sesv2 or sesv1")

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        raise DeliveryError("the smtp transport is not available yet", permanent=False,
                            code="NotImplemented", hint="use transport sesv2 or sesv1")

    async def quota(self) -> Quota | None:
        return None

    async def aclose(self) -> None:
        return None
