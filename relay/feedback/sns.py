"""Verification of SNS HTTP(S) deliveries: signatures, signing certificates, topics, retries.

Anyone can POST to a public webhook, so nothing in a message is believed until its RSA
signature checks out against the certificate SNS names in ``SigningCertURL``, and that URL
is only fetched from an SNS host over verified TLS: otherwise a forger would simply point
us at a certificate of their own. The topic allowlist is checked before any fetch, so
messages for foreign topics cost no outbound request. SNS retries reuse the MessageId,
which a small LRU set turns into no-ops.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import http.client
import json
import re
import ssl
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from relay import log
from relay.errors import RelayError
from relay.feedback.notifications import Event, NotificationError, parse_event

_log = log.get("feedback")

# What the authority (host, and port if any) of a signing-certificate or subscribe URL must
# be: the SNS endpoint of some region, in the global or the China partition, without port.
SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")

# The signed fields per message type, in signing order; Subject is signed only if present.
_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                        "TopicArn", "Type")
_SIGNED_FIELDS = {
    "Notification": _NOTIFICATION_FIELDS,
    "SubscriptionConfirmation": _CONFIRMATION_FIELDS,
    "UnsubscribeConfirmation": _CONFIRMATION_FIELDS,
}
_OPTIONAL_FIELDS = frozenset({"Subject"})
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# A PEM certificate is about 2 kB and a ConfirmSubscription answer less than 1 kB.
MAX_FETCH_BYTES = 64 * 1024
FETCH_TIMEOUT = 10.0


class SNSError(RelayError):
    """An SNS message we do not accept; ``status`` is the HTTP answer, ``reason`` a short
    phrase for the log."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MalformedMessage(SNSError):
    """Not an SNS message at all (bad JSON, missing or mistyped fields)."""

    status = 400


class RejectedMessage(SNSError):
    """Possibly forged, or not for us: bad signature, unsupported signature version, a
    certificate or subscribe URL outside SNS, or a topic outside the allowlist."""

    status = 403


class FetchError(SNSError):
    """An SNS URL (signing certificate, subscription confirmation) could not be fetched;
    answering 503 makes SNS try again later."""

    status = 503


@dataclass(frozen=True)
class SNSMessage:
    """A verified SNS message; ``message`` is the payload (SES JSON for notifications)."""

    type: str
    message_id: str
    topic_arn: str
    message: str
    timestamp: str
    subject: str | None = None
    subscribe_url: str | None = None


CertFetcher = Callable[[str], Awaitable[bytes]]


class SeenMessages:
    """A bounded set of MessageIds already handled, forgetting the oldest first.

    SNS retries within minutes to hours, so a few thousand recent ids are plenty; an
    unbounded set would grow for the life of the process.
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        self.maxsize = maxsize
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, message_id: str) -> None:
        self._ids[message_id] = None
        self._ids.move_to_end(message_id)
        while len(self._ids) > self.maxsize:
            self._ids.popitem(last=False)


class Verifier:
    """Checks SNS messages for one set of allowed topics.

    *fetch_cert* returns the PEM bytes at a URL (default: HTTPS with the system trust
    store); *cert_host_pattern* must fully match the URL authority (lower-cased host, plus
    ``:port`` if there is one). Both exist so tests can use a private CA on loopback.
    """

    def __init__(self, topic_arns: Iterable[str], *, fetch_cert: CertFetcher | None = None,
                 cert_host_pattern: re.Pattern[str] = SNS_HOST, cert_cache_size: int = 32,
                 seen_size: int = 10_000) -> None:
        self.topic_arns = frozenset(topic_arns)
        self.cert_host_pattern = cert_host_pattern
        self.seen = SeenMessages(seen_size)
        self._fetch = fetch_cert or fetch_https
        self._cache_size = cert_cache_size
        self._keys: OrderedDict[str, RSAPublicKey] = OrderedDict()

    async def verify(self, doc: Mapping[str, Any]) -> SNSMessage:
        """The verified message, or SNSError saying why not."""
        signed = string_to_sign(doc)  # first: a non-SNS body is malformed (400), not forged
        algorithm = _algorithm(doc.get("SignatureVersion"))
        if doc["TopicArn"] not in self.topic_arns:
            raise RejectedMessage("topic not allowed")
        signature = _signature(doc.get("Signature"))
        cert_url = doc.get("SigningCertURL")
        if not isinstance(cert_url, str):
            raise RejectedMessage("SigningCertURL missing")
        check_url(cert_url, self.cert_host_pattern, pem=True)
        key = await self._public_key(cert_url)
        try:
            key.verify(signature, signed, PKCS1v15(), algorithm())
        except InvalidSignature:
            raise RejectedMessage("bad signature") from None
        message = _message(doc)
        if message.subscribe_url is not None:
            check_url(message.subscribe_url, self.cert_host_pattern, pem=False)
        return message

    async def _public_key(self, url: str) -> RSAPublicKey:
        key = self._keys.get(url)
        if key is None:
            key = _rsa_key(await self._fetch_pem(url))
            self._keys[url] = key
            while len(self._keys) > self._cache_size:
                self._keys.popitem(last=False)
        return key

    async def _fetch_pem(self, url: str) -> bytes:
        try:
            return await self._fetch(url)
        except SNSError:
            raise
        except Exception as e:  # an injected fetcher's own errors, mapped to ours here
            raise FetchError(f"cannot fetch signing certificate: {e}") from e


def string_to_sign(doc: Mapping[str, Any]) -> bytes:
    """``Key\\nValue\\n`` for each signed field of the message's Type, in SNS's order."""
    kind = doc.get("Type")
    fields = _SIGNED_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise MalformedMessage("unknown or missing Type")
    parts = []
    for key in fields:
        value = doc.get(key)
        if value is None and key in _OPTIONAL_FIELDS:
            continue
        if not isinstance(value, str):
            raise MalformedMessage(f"{key} missing or not a string")
        parts.append(f"{key}\n{value}\n")
    return "".join(parts).encode()


def check_url(url: str, host_pattern: re.Pattern[str] = SNS_HOST, *, pem: bool) -> None:
    """Raise RejectedMessage unless *url* is https on an SNS host, without userinfo or
    port (as *host_pattern* decides), and, for a certificate (*pem*), ends in ``.pem``."""
    # urlsplit silently drops tabs and newlines; refuse them rather than guess.
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise RejectedMessage("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise RejectedMessage("URL does not parse") from None
    if parts.scheme != "https":
        raise RejectedMessage("URL is not https")
    if "@" in parts.netloc:
        raise RejectedMessage("URL has userinfo")
    if not host_pattern.fullmatch(parts.netloc.lower()):
        raise RejectedMessage("URL has a port" if port is not None else "URL host is not SNS")
    if pem and not parts.path.endswith(".pem"):
        raise RejectedMessage("certificate URL does not end in .pem")


async def fetch_https(url: str) -> bytes:
    """GET *url* over TLS verified against the system trust store (``SSL_CERT_FILE`` is
    honoured), without following redirects, within FETCH_TIMEOUT; FetchError on failure."""
    # The socket timeout bounds the thread; asyncio.timeout could not stop it.
    return await asyncio.to_thread(_get, url, FETCH_TIMEOUT)


async def confirm_subscription(url: str) -> None:
    """Confirm an SNS subscription by GETting its (already checked) SubscribeURL."""
    await fetch_https(url)


async def handle_post(body: bytes, verifier: Verifier, *,
                      confirm: Callable[[str], Awaitable[None]],
                      on_notification: Callable[[Event], Awaitable[None]]) -> int:
    """Handle one SNS POST and return the HTTP status to answer.

    200: accepted, or a retry of a message already handled. 400: not an SNS message or
    not an SES notification. 403: forged or not for our topics. 500/503: our handler or
    an SNS URL failed; SNS retries those later, and the MessageId is not marked as seen.
    """
    try:
        message = await verifier.verify(_json_object(body))
    except SNSError as e:
        _log.warning("sns_rejected", reason=e.reason, status=e.status)
        return e.status
    if message.message_id in verifier.seen:
        _log.info("sns_duplicate", sns_message_id=message.message_id)
        return 200
    status = await _dispatch(message, confirm, on_notification)
    if status == 200:
        verifier.seen.add(message.message_id)
    return status


async def _dispatch(message: SNSMessage, confirm: Callable[[str], Awaitable[None]],
                    on_notification: Callable[[Event], Awaitable[None]]) -> int:
    if message.type == "SubscriptionConfirmation":
        return await _confirm(message, confirm)
    if message.type == "UnsubscribeConfirmation":
        # Resubscribing on our own would undo an operator's deliberate unsubscribe.
        _log.warning("sns_unsubscribed", topic=message.topic_arn)
        return 200
    try:
        event = parse_event(message.message)
    except NotificationError as e:
        _log.warning("sns_bad_notification", sns_message_id=message.message_id,
                     reason=e.reason)
        return 400
    try:
        await on_notification(event)
    except Exception as e:  # the handler's failure must become a retry, not a crash
        _log.error("sns_handler_failed", sns_message_id=message.message_id,
                   error=f"{type(e).__name__}: {e}")
        return 500
    return 200


async def _confirm(message: SNSMessage, confirm: Callable[[str], Awaitable[None]]) -> int:
    assert message.subscribe_url is not None  # required and checked by Verifier.verify
    try:
        await confirm(message.subscribe_url)
    except Exception as e:  # a failed GET is retried by SNS on 503
        _log.error("sns_confirm_failed", topic=message.topic_arn,
                   error=f"{type(e).__name__}: {e}")
        return 503
    _log.info("sns_subscription_confirmed", topic=message.topic_arn)
    return 200


def _json_object(body: bytes) -> Mapping[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedMessage("body is not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedMessage("body is not a JSON object")
    return doc


def _algorithm(version: object) -> type[hashes.HashAlgorithm]:
    algorithm = _HASHES.get(version) if isinstance(version, str) else None
    if algorithm is None:
        raise RejectedMessage("unsupported SignatureVersion")
    return algorithm


def _signature(value: object) -> bytes:
    if not isinstance(value, str):
        raise RejectedMessage("Signature missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RejectedMessage("Signature is not base64") from None


def _rsa_key(pem: bytes) -> RSAPublicKey:
    try:
        key = x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        raise RejectedMessage("signing certificate does not parse") from None
    if not isinstance(key, RSAPublicKey):
        raise RejectedMessage("signing certificate key is not RSA")
    return key


def _message(doc: Mapping[str, Any]) -> SNSMessage:
    # string_to_sign has already checked that every signed field present is a string.
    return SNSMessage(type=doc["Type"], message_id=doc["MessageId"],
                      topic_arn=doc["TopicArn"], message=doc["Message"],
                      timestamp=doc["Timestamp"], subject=doc.get("Subject"),
                      subscribe_url=doc.get("SubscribeURL"))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # SNS serves certificates and confirmations directly; a redirect would lead away from
    # the host we checked.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get(url: str, timeout: float) -> bytes:
    # A fresh context per fetch reads the trust store (and SSL_CERT_FILE) as it is now;
    # fetches are rare because certificates are cached.
    context = ssl.create_default_context()
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                         _NoRedirect())
    try:
        with opener.open(url, timeout=timeout) as response:
            body: bytes = response.read(MAX_FETCH_BYTES + 1)
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response, and with it the connection
        raise FetchError(f"GET {urlsplit(url).netloc} failed: HTTP {e.code}") from None
    except (OSError, ValueError, http.client.HTTPException) as e:
        raise FetchError(f"GET {urlsplit(url).netloc} failed: {e}") from None
    if len(body) > MAX_FETCH_BYTES:
        raise FetchError(f"GET {urlsplit(url).netloc}: answer too large")
    return body
