"""SESv2 ``SendEmail`` on the delivery hot path: a keep-alive connection pool (``http1``;
aiohttp behind a proxy), a SigV4 signer for this one request shape, and errors handed back
as botocore ``ClientError`` for the one error table.

Why not the SDK client for this one call: profiled under load (bench/RESULTS.md), a
botocore ``send_email`` spent about 0.54 ms of CPU per call on work a relay sending the
same request shape thousands of times does not need (parameter validation, the event
hook chain, endpoint ruleset resolution, user-agent assembly, response model parsing);
with the relay's GIL shared by the SMTP side, that was over half of delivery's CPU. The
request itself is a small JSON document, so this builds it directly.
The parts that are subtle stay botocore's: credentials (the standard chain, refresh of
assumed roles) and the endpoint URL (resolved by the SDK client built at start). Every
other SES call (quota, templates, bulk, suppression) still goes through the SDK.

SigV4 is signed here, not by botocore's ``SigV4Auth``: that one is general (any method,
query, header set, S3's exceptions) and costs 47 us per call on the event loop. For one
POST of one JSON body to one URL, the canonical request is a fixed template and the
signing key changes once a day: 9 us (both by bench/micro.py). Tests hold it to
botocore's exact headers (tests/test_sesv2.py).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import io
import json
import os
import ssl
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import botocore.exceptions as bex
import pybase64
from botocore.httpsession import DEFAULT_CA_BUNDLE

from relay import __version__
from relay.queueentry import FileBlob
from relay.transports import http1
from relay.transports.httpbody import Base64Document

SIGNING_NAME = "ses"  # SESv2 signs as "ses", like SESv1
OPERATION = "SendEmail"
PATH = "/v2/email/outbound-emails"


class SendEmailClient:
    def __init__(self, endpoint_url: str, region: str, credentials: Any, *,
                 pool_size: int, connect_timeout: float, read_timeout: float) -> None:
        self._url = endpoint_url.rstrip("/") + PATH
        self._signer = Signer(self._url, region, SIGNING_NAME)
        self._credentials = credentials  # botocore (refreshable) credentials, or None
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._pool: http1.Pool | None = None  # direct to the endpoint
        self._http: aiohttp.ClientSession | None = None  # through a proxy
        self._proxy: str | None = None
        self._post: Callable[[http1.Body, dict[str, str]], Awaitable[http1.Response]] | None = None

    async def start(self) -> None:
        # The CA bundle botocore would use, so AWS_CA_BUNDLE means the same thing here.
        context = ssl.create_default_context(
            cafile=os.environ.get("AWS_CA_BUNDLE") or DEFAULT_CA_BUNDLE)
        user_agent = f"ses-relay/{__version__}"
        self._proxy = _env_proxy(self._url)
        if self._proxy is None:
            self._pool = http1.Pool(self._url, ssl_context=context, size=self._pool_size,
                                    connect_timeout=self._connect_timeout,
                                    read_timeout=self._read_timeout, user_agent=user_agent)
            self._post = self._pool.post
            return
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._pool_size, ssl=context),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout,
                                          sock_read=self._read_timeout),
            headers={"User-Agent": user_agent},
            skip_auto_headers=("Accept-Encoding",))
        self._post = self._post_via_proxy

    async def aclose(self) -> None:
        self._post = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send_email(self, params: dict[str, Any]) -> dict[str, Any]:
        """POST one SendEmail; the parsed JSON answer, or a botocore exception."""
        if self._post is None:
            raise RuntimeError("SendEmailClient: start() first")
        raw = params["Content"]["Raw"]["Data"]
        # A message in its queue file is read in the thread too: one queued for hours may
        # no longer be in the page cache, and a disk read must not stall the loop. The
        # send then reads it again from the cache this pass filled.
        if isinstance(raw, FileBlob) or len(raw) > _BUILD_IN_THREAD:
            body, digest = await asyncio.to_thread(_document, params)
        else:
            body, digest = _document(params)
        response = await self._post(body, await self._sign(digest))
        if response.status == 200:
            answer: dict[str, Any] = json.loads(response.body)
            return answer
        error_type = response.headers.get("x-amzn-errortype", "")
        raise bex.ClientError(_error_response(response.status, error_type,  # type: ignore[arg-type]
                                              response.body), OPERATION)

    async def _post_via_proxy(self, body: http1.Body, headers: dict[str, str]) -> http1.Response:
        assert self._http is not None
        # aiohttp warns about bytes over 1 MiB and streams a BytesIO in chunks instead.
        whole = body if isinstance(body, bytes) else body.join()  # aiohttp wants bytes
        data = io.BytesIO(whole) if len(whole) > _AIOHTTP_BYTES_MAX else whole
        async with self._http.post(self._url, data=data, headers=headers,
                                   proxy=self._proxy) as response:
            return http1.Response(response.status,
                                  {k.lower(): v for k, v in response.headers.items()},
                                  await response.read())

    async def _sign(self, payload_hash: str) -> dict[str, str]:
        if self._credentials is None:
            raise bex.NoCredentialsError()
        frozen = await self._credentials.get_frozen_credentials()
        return self._signer.headers(frozen.access_key, frozen.secret_key, frozen.token,
                                    payload_hash)


class Signer:
    """AWS Signature Version 4 for ``POST <url>`` with a JSON body and no query string."""

    def __init__(self, url: str, region: str, service: str) -> None:
        self._host = http1.host_header(url)
        self._path = http1.request_target(url)
        self._region = region
        self._service = service
        self._keys: dict[tuple[str, str], bytes] = {}  # (secret, day) -> signing key

    def headers(self, access_key: str, secret_key: str, token: str | None,
                payload_hash: str, now: str | None = None) -> dict[str, str]:
        """The request's headers, Authorization included, for a body whose SHA-256 is
        *payload_hash* (hex); ``now`` as ``20261122T153000Z`` (the current UTC time when
        not given)."""
        if now is None:
            now = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        day = now[:8]
        headers = {"Content-Type": "application/json", "X-Amz-Date": now}
        canonical = [f"content-type:application/json\nhost:{self._host}\nx-amz-date:{now}\n"]
        signed = "content-type;host;x-amz-date"
        if token:
            headers["X-Amz-Security-Token"] = token
            canonical.append(f"x-amz-security-token:{' '.join(token.split())}\n")
            signed += ";x-amz-security-token"
        request = (f"POST\n{self._path}\n\n{''.join(canonical)}\n{signed}\n"
                   f"{payload_hash}")
        scope = f"{day}/{self._region}/{self._service}/aws4_request"
        to_sign = (f"AWS4-HMAC-SHA256\n{now}\n{scope}\n"
                   f"{hashlib.sha256(request.encode()).hexdigest()}")
        signature = hmac.new(self._key(secret_key, day), to_sign.encode(),
                             hashlib.sha256).hexdigest()
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={signature}")
        return headers

    def _key(self, secret_key: str, day: str) -> bytes:
        key = self._keys.get((secret_key, day))
        if key is None:
            key = f"AWS4{secret_key}".encode()
            for part in (day, self._region, self._service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret_key, day): key}  # one live key: no growth over the years
        return key


def _env_proxy(url: str) -> str | None:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as botocore reads them, once: aiohttp's
    trust_env would re-read the environment (and ~/.netrc) on every request."""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies_environment().get(parts.scheme)


# Above this size (bytes of message) the document is built and hashed in a thread: the
# SHA-256 alone is about 0.6 ms per MB of document (bench/micro.py), tens of ms for a
# message near SES's 40 MB limit, that every session would wait.
_BUILD_IN_THREAD = 1024 * 1024
# Above this the document is streamed (relay.transports.httpbody); below, one write.
_STREAM = 256 * 1024
# aiohttp warns about a bytes body larger than this and wants a file-like one instead.
_AIOHTTP_BYTES_MAX = 1024 * 1024


def _document(params: dict[str, Any]) -> tuple[bytes | Base64Document, str]:
    """The request body, and its SHA-256 for the signature."""
    body = _wire(params)
    if isinstance(body, bytes):
        return body, hashlib.sha256(body).hexdigest()
    return body, body.sha256()


def _wire(params: dict[str, Any]) -> bytes | Base64Document:
    """The request document as SES reads it: the raw message base64-encoded (the SDK does
    the same for blob members); above _STREAM bytes of message, one that is encoded as
    it is sent (relay.transports.httpbody).

    The message goes in as bytes, not through json.dumps: the base64 alphabet needs no
    JSON escaping, and scanning (then re-encoding) a string of the message's size cost the
    event loop 3 ms per MB (bench/micro.py).

    pybase64, not the standard library's base64: the same output, from SIMD code. The
    document for a 1 MB message took 0.70 ms with the standard one and takes 0.06 ms
    (bench/micro.py); binascii was the relay's largest single CPU cost under 1 MB messages
    (perf), and holds the GIL all the while.
    """
    raw = params["Content"]["Raw"]["Data"]
    rest = {k: v for k, v in params.items() if k != "Content"}
    others = json.dumps(rest, separators=(",", ":")).encode()[1:]  # '"...":...}' or '}'
    prefix, suffix = b'{"Content":{"Raw":{"Data":"', b'"}}' + (b"," if rest else b"") + others
    if len(raw) > _STREAM or isinstance(raw, FileBlob):
        return Base64Document(prefix, raw, suffix)
    # One copy of the message, not one per "+".
    return b"".join((prefix, pybase64.b64encode(raw), suffix))


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
