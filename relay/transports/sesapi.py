"""What the two SES API transports share: one long-lived client, the SDK's retries off,
every error mapped through the one table, and the account's quota read the same way.

One long-lived client (and its connection pool) serves the whole process: building a
client costs milliseconds and a TLS handshake, which would dominate a small message.
The scheduler owns retry policy, so a throttled message is retried on our schedule and
counted once.
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


class SESAPITransport:
    name = ""
    service = ""  # the botocore service name
    max_message_size = 0
    max_recipients = 50
    # The message, its base64 and the request document holding that base64: 1 + 4/3 + 4/3
    # at the peak (SESv1's SDK request; SESv2 streams: its own). Charged as raw bytes, ten 10 MB
    # sends fitted a 64 MiB budget six at a time and held 220 MB: bench/upload_memory.py
    # --transport sesv2, 274 MB peak RSS against 172 MB on the outbox (bench/RESULTS.md).
    memory_per_byte = 3.7

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._session: Any = None

    async def start(self) -> None:
        session = self._session = await aws.session(self.config)
        self._client = await self._stack.enter_async_context(session.client(
            self.service, region_name=self.config.region,
            endpoint_url=self.config.endpoint_url, config=aws.client_config(self.config)))

    def params(self, envelope: Envelope, data: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def _send(self, params: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    async def _send_quota(self) -> dict[str, Any]:
        """SES's quota fields: MaxSendRate, Max24HourSend, SentLast24Hours."""
        raise NotImplementedError

    async def send(self, envelope: Envelope, data: bytes) -> SendResult:
        return await self._send_params(self.params(envelope, data))

    async def _send_params(self, params: dict[str, Any]) -> SendResult:
        assert self._client is not None, "start() first"
        try:
            response = await self._send(params)
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
            q = await self._send_quota()
        except Exception as e:
            raise classify(e, region=self.config.region) from e
        return Quota.from_ses(q)

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None
