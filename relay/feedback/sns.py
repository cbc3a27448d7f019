"""Verification of SNS HTTP(S) deliveries: signatures, signing certificates, topics, retries.

Anyone can POST to a public webhook, so nothing in a message is believed until its RSA
signature checks out against the certificate SNS names in ``SigningCertURL``, and that URL
is only fetched from an SNS host over verified TLS: otherwise a forger would simply point
us at a certificate of their own. The topic allowlist is checked before any fetch, so
messages for foreign topics cost no outbound request. SNS retries reuse the MessageId,
which a small LRU set turns into no-ops, and a Timestamp older than SNS can still be
retrying is refused: it can only be a replay.

Certificates are cached, and fetched once per URL however many messages name it, by
relay.feedback.snsfetch: asynchronously, a few at a time, never in the thread pool that
AUTH's password checks use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import re
import time
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
from relay.feedback.snsfetch import Fetcher

_log = log.get("feedback")

# What the authority (host, and port if any) of a signing-certificate or subscribe URL must
# be: the SNS endpoint of a region (us-east-1, us-gov-west-1, cn-north-1 in the China
# partition), without port. A looser "sns.<anything>.amazonaws.com" admits hosts that
# others control: an S3 bucket named "sns" is sns.s3.amazonaws.com.
SNS_HOST = re.compile(r"sns\.(?:[a-z]{2}(?:-gov)?-[a-z]+-\d{1,2}\.amazonaws\.com"
                      r"|cn-[a-z]+-\d{1,2}\.amazonaws\.com\.cn)")
# The one path SNS serves its signing certificates at.
CERT_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]+\.pem")

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

# An SNS POST: a message of at most 256 KiB, in its JSON envelope.
MAX_POST_BYTES = 256 * 1024
# SNS retries an HTTP/S delivery for at most 3,600 s (a hard limit of its delivery
# policies) and every retry carries the first attempt's Timestamp; allow 5 minutes of
# clock difference either way. Anything older is a replay: an old, validly signed
# SubscriptionConfirmation could undo an operator's unsubscribe.
MAX_AGE = 3600.0 + 300.0
MAX_AHEAD = 300.0


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
    ``:port`` if there is one). Both exist so tests can use a private CA on loopback, as
    does *clock* (seconds since the epoch) for the Timestamp window.
    """

    def __init__(self, topic_arns: Iterable[str], *, fetch_cert: CertFetcher | None = None,
                 cert_host_pattern: re.Pattern[str] = SNS_HOST, cert_cache_size: int = 32,
                 seen_size: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.topic_arns = frozenset(topic_arns)
        self.cert_host_pattern = cert_host_pattern
        self.seen = SeenMessages(seen_size)
        self.fetcher = Fetcher()
        self._fetch = fetch_cert or self.fetcher.get
        self._clock = clock
        self._cache_size = cert_cache_size
        self._keys: OrderedDict[str, RSAPublicKey] = OrderedDict()
        self._loading: dict[str, asyncio.Future[RSAPublicKey]] = {}

    async def verify(self, doc: Mapping[str, Any]) -> SNSMessage:
        """The verified message, or SNSError saying why not."""
        signed = string_to_sign(doc)  # first: a non-SNS body is malformed (400), not forged
        algorithm = _algorithm(doc.get("SignatureVersion"))
        if doc["TopicArn"] not in self.topic_arns:
            raise RejectedMessage("topic not allowed")
        check_timestamp(doc["Timestamp"], self._clock())
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

    async def confirm_subscription(self, url: str) -> None:
        """Confirm an SNS subscription by GETting its (already checked) SubscribeURL."""
        await self.fetcher.get(url)

    async def _public_key(self, url: str) -> RSAPublicKey:
        key = self._keys.get(url)
        if key is not None:
            return key
        loading = self._loading.get(url)
        if loading is None:
            # One fetch per URL, however many messages wait for it; shielded, so a request
            # cut at its deadline does not cancel what the others (and the cache) await.
            loading = self._loading[url] = asyncio.ensure_future(self._load(url))
            loading.add_done_callback(lambda done: self._loaded(url, done))
        return await asyncio.shield(loading)

    async def _load(self, url: str) -> RSAPublicKey:
        key = _rsa_key(await self._fetch_pem(url))
        self._keys[url] = key
        while len(self._keys) > self._cache_size:
            self._keys.popitem(last=False)
        return key

    def _loaded(self, url: str, done: asyncio.Future[RSAPublicKey]) -> None:
        self._loading.pop(url, None)
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have given up already

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
    port (as *host_pattern* decides), and, for a certificate (*pem*), has SNS's
    certificate path and nothing after it."""
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
    if pem and not (CERT_PATH.fullmatch(parts.path) and not parts.query
                    and not parts.fragment):
        raise RejectedMessage("certificate URL path is not /SimpleNotificationService-"
                              "<hex>.pem")


def check_timestamp(value: str, now: float) -> None:
    """Raise RejectedMessage unless *value* (ISO 8601, as SNS writes it) is within MAX_AGE
    before *now* and MAX_AHEAD after it."""
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RejectedMessage("Timestamp does not parse") from None
    if stamp.tzinfo is None:
        raise RejectedMessage("Timestamp has no time zone")
    age = now - stamp.timestamp()
    if age > MAX_AGE:
        raise RejectedMessage("Timestamp too old (a replay, or retried past SNS's limit)")
    if age < -MAX_AHEAD:
        raise RejectedMessage("Timestamp in the future")


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
