"""Delivery through the SESv1 ``SendRawEmail`` API.

Kept for accounts and IAM policies that grant only ``ses:SendRawEmail``. Its limits are
tighter than SESv2's (10 MB after base64), and it is the one API that honours the
cross-account ``SourceArn``/``FromArn``/``ReturnPathArn`` parameters directly.
"""

from __future__ import annotations

from typing import Any

from relay.spool import Envelope
from relay.transports.sesapi import SESAPITransport

MAX_RAW_SIZE = 10 * 1000 * 1000 * 3 // 4


class SESv1Transport(SESAPITransport):
    name = "sesv1"
    service = "ses"
    max_message_size = MAX_RAW_SIZE
    # botocore's query protocol: the base64, then the form-encoded body (as text, then as
    # bytes) built from it, beside the message itself.
    memory_per_byte = 5.0

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

    async def _send(self, params: dict[str, Any]) -> dict[str, Any]:
        return dict(await self._client.send_raw_email(**params))

    async def _send_quota(self) -> dict[str, Any]:
        return dict(await self._client.get_send_quota())
