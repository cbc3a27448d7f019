"""Delivery through the SESv1 ``SendRawEmail`` API.

Kept for accounts and IAM policies that grant only ``ses:SendRawEmail``. Its limits are
tighter than SESv2's (10 MB after base64), and it is the one API that honours the
cross-account ``SourceArn``/``FromArn``/``ReturnPathArn`` parameters directly.
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

MAX_RAW_SIZE = 10 * 1000 * 1000 * 3 // 4


class SESv1Transport:
    name = "sesv1"
    max_message_size = MAX_RAW_SIZE
    max_recipients = 50

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        session = await aws.session(self.config)
        self._client = await self._stack.enter_async_context(session.client(
            "ses", region_name=self.config.region, endpoint_url=self.config.endpoint_url,
            config=aws.client_config(self.config)))

    def params(self, envelope: Envelope, data: bytes) -> dict[str, Any]:
        params: dict[str, Any] = {
            "Source": envelope.mail_from,
            "Destinations": list(envelope.rcpt_tos),
            "RawMessage": {"Data": data},
        }
        if envelope.configuration_set:
            params["ConfigurationSetName"] = envelope.configuration_set
        if envelope.tags:
            params["Tags"] = [{"Name": n, "Value": v} for n, v in envelope.tags]
        for key, value in (("SourceArn", self.config.source_arn),
                           ("FromArn", self.config.from_arn),
                           ("ReturnPathArn", self.config.return_path_arn)):
            if value:
                params[key] = value
        return params

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        assert self._client is not None, "start() first"
        try:
            response = await self._client.send_raw_email(**self.params(envelope, data))
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
            q = await self._client.get_send_quota()
        except Exception as e:
            raise classify(e, region=self.config.region) from e
        if not q.get("MaxSendRate"):
            return None  # nothing to go by: no limit but SES's own throttling answers
        return Quota(max_send_rate=float(q["MaxSendRate"]),
                     max_24_hour_send=float(q.get("Max24HourSend", 0)),
                     sent_last_24_hours=float(q.get("SentLast24Hours", 0)))

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None
