"""Delivery through the SESv2 ``SendEmail`` API with ``Content.Raw``.

One long-lived client (and its connection pool) serves the whole process: building a
client costs milliseconds and a TLS handshake, which would dominate a small message.
The SDK's own retries are off; the scheduler owns retry policy, so a throttled message is
retried on our schedule and counted once.
"""

from __future__ import annotations

import contextlib
from typing import Any

from relay import aws
from relay.config import DeliveryConfig
from relay.errors import DeliveryError
from relay.spool import Envelope
from relay.transports.base import Quota, SendResult
from relay.transports.errors import classify

# SES limits the message to 40 MB *after* base64 encoding, which inflates by 4/3.
MAX_RAW_SIZE = 40 * 1000 * 1000 * 3 // 4


class SESv2Transport:
    name = "sesv2"
    max_message_size = MAX_RAW_SIZE
    max_recipients = 50

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        session = await aws.session(self.config)
        self._client = await self._stack.enter_async_context(session.client(
            "sesv2", region_name=self.config.region, endpoint_url=self.config.endpoint_url,
            config=aws.client_config(self.config)))

    def params(self, envelope: Envelope, data: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {
            "FromEmailAddress": envelope.mail_from,
            # All envelope recipients go in ToAddresses: with Raw content SES takes the
            # destinations from here and leaves the headers alone, so Bcc is kept.
            "Destination": {"ToAddresses": list(envelope.rcpt_tos)},
            "Content": {"Raw": {"Data": data}},
        }
        if envelope.configuration_set:
            params["ConfigurationSetName"] = envelope.configuration_set
        if envelope.tags:
            params["EmailTags"] = [{"Name": n, "Value": v} for n, v in envelope.tags]
        if self.config.from_arn or self.config.source_arn:
            params["FromEmailAddressIdentityArn"] = self.config.from_arn or self.config.source_arn
        if self.config.return_path_arn:
            params["FeedbackForwardingEmailAddressIdentityArn"] = self.config.return_path_arn
        return params

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        assert self._client is not None, "start() first"
        try:
            response = await self._client.send_email(**self.params(envelope, data))
        except Exception as e:  # mapped to ours at the one place that knows botocore
            raise classify(e, region=self.config.region) from e
        message_id = response.get("MessageId")
        if not isinstance(message_id, str):
            raise DeliveryError("SES answered without a MessageId", permanent=False,
                                code="BadResponse", hint="unexpected SES response; retrying")
        return SendResult(message_id)

    async def quota(self) -> Quota | None:
        assert self._client is not None, "start() first"
        try:
            account = await self._client.get_account()
        except Exception as e:
            raise classify(e, region=self.config.region) from e
        q = account.get("SendQuota") or {}
        if not q.get("MaxSendRate"):
            return None  # nothing to go by: no limit but SES's own throttling answers
        return Quota(max_send_rate=float(q["MaxSendRate"]),
                     max_24_hour_send=float(q.get("Max24HourSend", 0)),
                     sent_last_24_hours=float(q.get("SentLast24Hours", 0)))

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None
