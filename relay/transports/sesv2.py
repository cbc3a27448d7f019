"""Delivery through the SESv2 ``SendEmail`` API with ``Content.Raw`` (the default)."""

from __future__ import annotations

from typing import Any

from relay import aws
from relay.queueentry import FileBlob
from relay.spool import Envelope
from relay.transports.base import SendResult
from relay.transports.sesapi import SESAPITransport
from relay.transports.sesv2http import SendEmailClient

# SES limits the message to 40 MB *after* base64 encoding, which inflates by 4/3.
MAX_RAW_SIZE = 40 * 1000 * 1000 * 3 // 4


class SESv2Transport(SESAPITransport):
    name = "sesv2"
    service = "sesv2"
    max_message_size = MAX_RAW_SIZE
    # The message, and a slice of its base64 at a time (relay.transports.httpbody), plus
    # what the claim and the header fixes hold beside it; was 3.7 while the document was
    # built whole. With 1.5, four 10 MB sends run at once in the 64 MiB budget, and
    # bench/upload_memory.py --transport sesv2 peaked at 144-161 MB, as with one at a
    # time before (bench/RESULTS.md, "Streamed SendEmail"). A large message is now read
    # from its queue file as it is sent (send_file) and holds far less; the charge stays,
    # because through a proxy the document is still built whole (sesv2http).
    memory_per_byte = 1.5
    _sender: SendEmailClient | None = None

    def params(self, envelope: Envelope, data: bytes | FileBlob) -> dict[str, Any]:
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

    async def send_file(self, envelope: Envelope, message: FileBlob) -> SendResult:
        """``send``, with the message read from its queue file as it is encoded (a large
        one: relay.attempt)."""
        return await self._send_params(self.params(envelope, message))

    async def start(self) -> None:
        await super().start()
        # SendEmail skips the SDK's request machinery (see sesv2http); the endpoint and the
        # credentials are the SDK client's own, so both paths go to the same place.
        self._sender = SendEmailClient(
            self._client.meta.endpoint_url, self.config.region or "",
            await self._session.get_credentials(),
            pool_size=aws.pool_size(self.config), connect_timeout=aws.connect_timeout(
                self.config), read_timeout=self.config.timeout)
        await self._sender.start()

    async def aclose(self) -> None:
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None
        await super().aclose()

    async def _send(self, params: dict[str, Any]) -> dict[str, Any]:
        assert self._sender is not None, "start() first"
        return await self._sender.send_email(params)

    async def _send_quota(self) -> dict[str, Any]:
        return dict((await self._client.get_account()).get("SendQuota") or {})
