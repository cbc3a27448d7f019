"""SESv2 ``SendEmail`` on the delivery hot path: one aiohttp keep-alive pool, botocore's
SigV4 signer, and errors handed back as botocore ``ClientError`` for the one error table.

Why not the SDK client for this one call: profiled under load (bench/RESULTS.md), a
botocore ``send_email`` spent about 0.54 ms of CPU per call on work a relay sending the
same request shape thousands of times does not need (parameter validation, the event
hook chain, endpoint ruleset resolution, user-agent assembly, response model parsing);
with the relay's GIL shared by the SMTP side, that was over half of delivery's CPU. The
request itself is a small JSON document, so this builds it directly (0.19 ms per call).
The parts that are subtle stay botocore's: credentials (the standard chain, refresh of
assumed roles), the endpoint URL (resolved by the SDK client built at start) and SigV4.
Every other SES call (quota, templates, bulk, suppression) still goes through the SDK.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.parse
import urllib.request
from typing import Any

import aiohttp
import botocore.exceptions as bex
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpsession import DEFAULT_CA_BUNDLE

from relay import __version__

SIGNING_NAME = "ses"  # SESv2 signs as "ses", like SESv1
OPERATION = "SendEmail"
PATH = "/v2/email/outbound-emails"


class SendEmailClient:
    def __init__(self, endpoint_url: str, region: str, credentials: Any, *,
                 pool_size: int, connect_timeout: float, read_timeout: float) -> None:
        self._url = endpoint_url.rstrip("/") + PATH
        self._region = region
        self._credentials = credentials  # botocore (refreshable) credentials, or None
        self._pool_size = pool_size
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._http: aiohttp.ClientSession | None = None
        self._proxy: str | None = None

    async def start(self) -> None:
        # The CA bundle botocore would use, so AWS_CA_BUNDLE means the same thing here.
        context = ssl.create_default_context(
            cafile=os.environ.get("AWS_CA_BUNDLE") or DEFAULT_CA_BUNDLE)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._pool_size, ssl=context),
            timeout=self._timeout, headers={"User-Agent": f"ses-relay/{__version__}"},
            skip_auto_headers=("Accept-Encoding",))
        self._proxy = _env_proxy(self._url)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send_email(self, params: dict[str, Any]) -> dict[str, Any]:
        """POST one SendEmail; the parsed JSON answer, or a botocore exception."""
        assert self._http is not None, "start() first"
        body = json.dumps(_wire(params), separators=(",", ":")).encode()
        headers = await self._sign(body)
        async with self._http.post(self._url, data=body, headers=headers,
                                   proxy=self._proxy) as response:
            payload = await response.read()
            status = response.status
            error_type = response.headers.get("x-amzn-ErrorType", "")
        if status == 200:
            answer: dict[str, Any] = json.loads(payload)
            return answer
        raise bex.ClientError(_error_response(status, error_type, payload),  # type: ignore[arg-type]
                              OPERATION)

    async def _sign(self, body: bytes) -> dict[str, str]:
        if self._credentials is None:
            raise bex.NoCredentialsError()
        frozen = await self._credentials.get_frozen_credentials()
        request = AWSRequest("POST", self._url, data=body,
                             headers={"Content-Type": "application/json"})
        SigV4Auth(frozen, SIGNING_NAME, self._region).add_auth(request)
        return dict(request.headers.items())


def _env_proxy(url: str) -> str | None:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as botocore reads them, once: aiohttp's
    trust_env would re-read the environment (and ~/.netrc) on every request."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


def _wire(params: dict[str, Any]) -> dict[str, Any]:
    """The request document as SES reads it: the raw message base64-encoded (the SDK does
    the same for blob members)."""
    content = params["Content"]["Raw"]["Data"]
    return {**params, "Content": {"Raw": {"Data": base64.b64encode(content).decode()}}}


def _error_response(status: int, error_type: str, payload: bytes) -> dict[str, Any]:
    """What botocore's REST-JSON parser would make of an error answer."""
    try:
        body = json.loads(payload) if payload else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = error_type or body.get("__type") or body.get("code") or body.get("Code") or ""
    # "aws.protocol#Name:http://..." or "Name:http://...": the name is what is looked up.
    code = str(code).split(":")[0].rsplit("#", 1)[-1]
    message = body.get("message") or body.get("Message") or ""
    return {"Error": {"Code": code, "Message": str(message)},
            "ResponseMetadata": {"HTTPStatusCode": status}}
