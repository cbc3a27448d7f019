"""SNS signature verification, certificate URLs and fetching, and the POST handler.

Messages are signed here exactly as SNS signs them, with a private test CA's certificate;
the string to sign is rebuilt independently of the code under test.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.server
import json
import re
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import Certs, events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.feedback.notifications import Event, Kind
from relay.feedback.sns import (
    FetchError,
    MalformedMessage,
    RejectedMessage,
    SeenMessages,
    SNSError,
    Verifier,
    check_url,
    handle_post,
)

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-feedback"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000.pem"
SUBSCRIBE_URL = ("https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription"
                 f"&TopicArn={TOPIC}&Token=2336412f37")
LOOPBACK = re.compile(r"127\.0\.0\.1:\d+")
FIXTURES = Path(__file__).parent / "feedback"
SES_BOUNCE = (FIXTURES / "bounce-permanent.json").read_text()

# --- a test CA, a signing certificate, and SNS's signing procedure -----------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: rsa.RSAPrivateKey, issuer: str,
          issuer_key: rsa.RSAPrivateKey, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def now_stamp(offset: float = 0.0) -> str:
    """A Timestamp as SNS writes it (milliseconds, Z), *offset* seconds from now."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sns_string_to_sign(doc: dict[str, Any]) -> bytes:
    keys = (["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
            if doc["Type"] == "Notification" else
            ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"])
    return "".join(f"{k}\n{doc[k]}\n" for k in keys if k in doc).encode()


@dataclass
class Signer:
    key: rsa.RSAPrivateKey
    pem: bytes

    def sign(self, doc: dict[str, Any], version: str = "1") -> dict[str, Any]:
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(sns_string_to_sign(doc), padding.PKCS1v15(), digest)
        return {**doc, "SignatureVersion": version,
                "Signature": base64.b64encode(signature).decode()}

    def notification(self, *, version: str = "1", message: str = SES_BOUNCE,
                     message_id: str = "a6a4a6f1-0001", topic: str = TOPIC,
                     cert_url: str = CERT_URL, timestamp: str | None = None,
                     **extra: str) -> dict[str, Any]:
        doc = {"Type": "Notification", "MessageId": message_id, "TopicArn": topic,
               "Message": message, "Timestamp": timestamp or now_stamp(),
               "SigningCertURL": cert_url, **extra}
        signed = self.sign(doc, version)
        # Not signed, but always present in real messages.
        signed["UnsubscribeURL"] = "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"
        return signed

    def confirmation(self, *, kind: str = "SubscriptionConfirmation",
                     subscribe_url: str = SUBSCRIBE_URL, version: str = "1",
                     message_id: str = "c0nf1rm-0001") -> dict[str, Any]:
        doc = {"Type": kind, "MessageId": message_id, "Token": "2336412f37",
               "TopicArn": TOPIC, "SubscribeURL": subscribe_url,
               "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
               "Timestamp": now_stamp(), "SigningCertURL": CERT_URL}
        return self.sign(doc, version)


def make_signer(ca_name: str) -> Signer:
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _cert("sns.amazonaws.com", key, ca_name, ca_key, ca=False)
    return Signer(key, cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer("Test SNS CA")


@pytest.fixture(scope="module")
def forger() -> Signer:
    return make_signer("Forger CA")


@dataclass
class FakeFetcher:
    """Serves one PEM for every URL and remembers what was asked."""

    pem: bytes
    urls: list[str] = field(default_factory=list)

    async def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        return self.pem


def verifier_for(signer: Signer) -> tuple[Verifier, FakeFetcher]:
    fetch = FakeFetcher(signer.pem)
    return Verifier([TOPIC], fetch_cert=fetch), fetch


def verify(verifier: Verifier, doc: dict[str, Any]) -> Any:
    return asyncio.run(verifier.verify(doc))


# --- verification --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
def test_notification_signed_as_sns_does_is_accepted(signer: Signer, version: str) -> None:
    verifier, _ = verifier_for(signer)
    message = verify(verifier, signer.notification(version=version))
    assert (message.type, message.topic_arn, message.message) == (
        "Notification", TOPIC, SES_BOUNCE)


def test_subject_is_signed_when_present(signer: Signer) -> None:
    verifier, _ = verifier_for(signer)
    assert verify(verifier, signer.notification(Subject="Amazon SES Email Event")).subject \
        == "Amazon SES Email Event"


@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
@pytest.mark.parametrize("version", ["1", "2"])
def test_confirmations_sign_token_and_subscribe_url(signer: Signer, kind: str,
                                                    version: str) -> None:
    verifier, _ = verifier_for(signer)
    message = verify(verifier, signer.confirmation(kind=kind, version=version))
    assert (message.type, message.subscribe_url) == (kind, SUBSCRIBE_URL)


@pytest.mark.parametrize("url", [
    "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem",
    "https://sns.cn-northwest-1.amazonaws.com.cn/SimpleNotificationService-1.pem",
    "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.ap-southeast-2.amazonaws.com/SimpleNotificationService-"
    "9c6465fa7f48f5cacd23014631ec1136.pem",
])
def test_certificate_hosts_of_every_partition_are_accepted(signer: Signer, url: str) -> None:
    verifier, fetch = verifier_for(signer)
    verify(verifier, signer.notification(cert_url=url))
    assert fetch.urls == [url]


def _tamper(doc: dict[str, Any], **changes: str) -> dict[str, Any]:
    return {**doc, **changes}


@pytest.mark.parametrize(("case", "reason"), [
    ("forged", "bad signature"),
    ("message_changed", "bad signature"),
    ("subject_added", "bad signature"),
    ("topic_changed", "topic not allowed"),
    ("version_3", "unsupported SignatureVersion"),
    ("version_missing", "unsupported SignatureVersion"),
    ("v1_labelled_v2", "bad signature"),
    ("signature_missing", "Signature missing"),
    ("signature_not_base64", "not base64"),
])
def test_tampered_or_forged_notification_is_rejected(signer: Signer, forger: Signer,
                                                     case: str, reason: str) -> None:
    good = signer.notification()
    doc = {
        "forged": forger.notification(),
        "message_changed": _tamper(good, Message=SES_BOUNCE.replace("jane", "john")),
        "subject_added": _tamper(good, Subject="hello"),
        "topic_changed": signer.notification(topic=TOPIC + "-other"),
        "version_3": signer.sign({k: v for k, v in good.items() if k != "Signature"}, "3"),
        "version_missing": {k: v for k, v in good.items() if k != "SignatureVersion"},
        "v1_labelled_v2": _tamper(good, SignatureVersion="2"),
        "signature_missing": {k: v for k, v in good.items() if k != "Signature"},
        "signature_not_base64": _tamper(good, Signature="!!not base64!!"),
    }[case]
    verifier, _ = verifier_for(signer)
    with pytest.raises(RejectedMessage, match=reason) as info:
        verify(verifier, doc)
    assert info.value.status == 403


PEM = "/SimpleNotificationService-0123abcd.pem"


@pytest.mark.parametrize(("url", "reason"), [
    ("http://sns.us-east-1.amazonaws.com" + PEM, "not https"),
    ("https://attacker.example" + PEM, "not SNS"),
    ("https://sns.us-east-1.amazonaws.com.attacker.example" + PEM, "not SNS"),
    ("https://sns.us-east-1.amazonaws.com.evil.example" + PEM, "not SNS"),
    ("https://sns.us-east-1.amazonaws.com@evil" + PEM, "userinfo"),
    ("https://sns.us-east-1.amazonaws.com@attacker.example" + PEM, "userinfo"),
    ("https://user:pw@sns.us-east-1.amazonaws.com" + PEM, "userinfo"),
    ("https://attacker.example\\@sns.us-east-1.amazonaws.com" + PEM, "userinfo"),
    # Hosts that match "sns.<anything>.amazonaws.com" but are S3 buckets, or not SNS.
    ("https://bucket.s3.amazonaws.com" + PEM, "not SNS"),
    ("https://sns.s3.amazonaws.com" + PEM, "not SNS"),
    ("https://sns.s3-us-west-2.amazonaws.com" + PEM, "not SNS"),
    ("https://sns.s3-website-us-east-1.amazonaws.com" + PEM, "not SNS"),
    ("https://sns.s3.us-east-1.amazonaws.com" + PEM, "not SNS"),
    ("https://sns.execute-api.amazonaws.com" + PEM, "not SNS"),
    ("https://sns.us-east-1.amazonaws.com.cn" + PEM, "not SNS"),
    ("https://SNS.us-east-1.amazonaws.com:8443" + PEM, "port"),
    ("https://sns.us-east-1.amazonaws.com:8443" + PEM, "port"),
    ("https://sns.us-east-1.amazonaws.com:443" + PEM, "port"),
    ("https://sns.us-east-1.amazonaws.com/x.pem", "path"),
    ("https://sns.us-east-1.amazonaws.com/x.crt", "path"),
    ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-0000.pem.txt", "path"),
    ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-xyz.pem", "path"),
    ("https://sns.us-east-1.amazonaws.com/bucket/SimpleNotificationService-0000.pem",
     "path"),
    ("https://sns.us-east-1.amazonaws.com" + PEM + "?x=1", "path"),
    ("https://sns.us-east-1.amazonaws.com" + PEM + "#x", "path"),
    ("https://sns.us-east-1.amazon\taws.com" + PEM, "whitespace"),
    ("https://sns.us-east-1.amazonaws.com:99999" + PEM, "does not parse"),
])
def test_certificate_url_outside_sns_is_rejected_before_any_fetch(
        signer: Signer, url: str, reason: str) -> None:
    verifier, fetch = verifier_for(signer)
    with pytest.raises(RejectedMessage, match=reason):
        verify(verifier, signer.notification(cert_url=url))
    assert fetch.urls == []


@pytest.mark.parametrize(("offset", "reason"), [
    (-2 * 3600, "too old"),  # past SNS's longest retry policy (3,600 s)
    (-3 * 86400, "too old"),
    (+3600, "in the future"),
])
def test_a_notification_stamped_far_from_now_is_refused_before_any_fetch(
        signer: Signer, offset: float, reason: str) -> None:
    verifier, fetch = verifier_for(signer)
    with pytest.raises(RejectedMessage, match=reason):
        verify(verifier, signer.notification(timestamp=now_stamp(offset)))
    assert fetch.urls == []


@pytest.mark.parametrize("offset", [-50 * 60, -5, +60])
def test_a_notification_sns_may_still_be_retrying_is_accepted(signer: Signer,
                                                              offset: float) -> None:
    verifier, _ = verifier_for(signer)
    verify(verifier, signer.notification(timestamp=now_stamp(offset)))


@pytest.mark.parametrize("stamp", ["yesterday", "2026-11-22T10:00:06"])
def test_a_timestamp_without_a_time_or_zone_is_refused(signer: Signer, stamp: str) -> None:
    verifier, _ = verifier_for(signer)
    with pytest.raises(RejectedMessage, match="Timestamp"):
        verify(verifier, signer.notification(timestamp=stamp))


def test_an_old_subscription_confirmation_is_not_replayed(signer: Signer) -> None:
    doc = signer.confirmation()
    doc = signer.sign({**{k: v for k, v in doc.items()
                          if k not in ("Signature", "SignatureVersion")},
                       "Timestamp": now_stamp(-2 * 86400)})
    calls = Calls()
    assert post(verifier_for(signer)[0], calls, doc) == 403
    assert calls.confirmed == []


def test_concurrent_messages_share_one_certificate_fetch(signer: Signer) -> None:
    urls: list[str] = []

    async def slow(url: str) -> bytes:
        urls.append(url)
        await asyncio.sleep(0.05)
        return signer.pem

    verifier = Verifier([TOPIC], fetch_cert=slow)

    async def main() -> None:
        await asyncio.gather(*(verifier.verify(signer.notification(message_id=f"m-{n}"))
                               for n in range(8)))

    asyncio.run(main())
    assert urls == [CERT_URL]


def test_wrong_topic_costs_no_certificate_fetch(signer: Signer) -> None:
    verifier, fetch = verifier_for(signer)
    with pytest.raises(RejectedMessage):
        verify(verifier, signer.notification(topic="arn:aws:sns:us-east-1:999999999999:x"))
    assert fetch.urls == []


@pytest.mark.parametrize(("url", "reason"), [
    ("https://attacker.example/?x=1", "not SNS"),
    ("https://sns.s3.amazonaws.com/?Action=ConfirmSubscription", "not SNS"),
    ("https://bucket.s3.amazonaws.com/?Action=ConfirmSubscription", "not SNS"),
    ("https://sns.us-east-1.amazonaws.com.evil.example/?Action=ConfirmSubscription",
     "not SNS"),
    ("https://sns.us-east-1.amazonaws.com@evil/?Action=ConfirmSubscription", "userinfo"),
    ("http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription", "not https"),
])
def test_subscribe_url_must_be_on_an_sns_host(signer: Signer, url: str, reason: str) -> None:
    verifier, _ = verifier_for(signer)
    with pytest.raises(RejectedMessage, match=reason):
        verify(verifier, signer.confirmation(subscribe_url=url))


@pytest.mark.parametrize("doc", [
    {}, {"Type": "Notification"}, {"Type": "Bogus", "SignatureVersion": "1"},
    {"Type": ["Notification"], "SignatureVersion": "1"},
    {"Type": "Notification", "SignatureVersion": "1", "Message": 5, "MessageId": "x",
     "Timestamp": "t", "TopicArn": TOPIC},
])
def test_message_missing_signed_fields_is_malformed_or_rejected(signer: Signer,
                                                                doc: dict[str, Any]) -> None:
    verifier, fetch = verifier_for(signer)
    with pytest.raises(SNSError):
        verify(verifier, doc)
    assert fetch.urls == []


def test_signing_certificate_is_fetched_once_per_url(signer: Signer) -> None:
    verifier, fetch = verifier_for(signer)
    for n in range(3):
        verify(verifier, signer.notification(message_id=f"m-{n}"))
    verify(verifier, signer.confirmation())
    assert fetch.urls == [CERT_URL]


def test_unreadable_certificate_is_rejected(signer: Signer) -> None:
    verifier = Verifier([TOPIC], fetch_cert=FakeFetcher(b"<html>not a cert</html>"))
    with pytest.raises(RejectedMessage, match="does not parse"):
        verify(verifier, signer.notification())


def test_a_failing_fetcher_becomes_a_fetch_error(signer: Signer) -> None:
    async def broken(url: str) -> bytes:
        raise ConnectionResetError("peer went away")

    with pytest.raises(FetchError, match="peer went away") as info:
        verify(Verifier([TOPIC], fetch_cert=broken), signer.notification())
    assert info.value.status == 503


def test_check_url_accepts_an_sns_subscribe_url() -> None:
    check_url(SUBSCRIBE_URL, pem=False)
    with pytest.raises(RejectedMessage):
        check_url(SUBSCRIBE_URL, pem=True)


def test_seen_messages_forget_the_oldest_beyond_their_size() -> None:
    seen = SeenMessages(maxsize=2)
    for message_id in ("a", "b", "c"):
        seen.add(message_id)
    assert ("a" in seen, "b" in seen, "c" in seen, len(seen)) == (False, True, True, 2)


# --- the default HTTPS fetcher against a loopback server ---------------------------------


@dataclass
class PemServer:
    url: str
    requests: list[str]


def _serve(certs: Certs, pem: bytes) -> Iterator[PemServer]:
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path == "/SimpleNotificationService-0bad.pem":
                self.send_response(302)
                self.send_header("Location", "/SimpleNotificationService-7e57.pem")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-pem-file")
            self.send_header("Content-Length", str(len(pem)))
            self.end_headers()
            self.wfile.write(pem)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.cert, certs.key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield PemServer(f"https://127.0.0.1:{port}/SimpleNotificationService-7e57.pem",
                        requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def pem_server(certs: Certs, signer: Signer) -> Iterator[PemServer]:
    yield from _serve(certs, signer.pem)


def test_default_fetcher_gets_the_certificate_over_verified_tls_once(
        signer: Signer, pem_server: PemServer, certs: Certs,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    verifier = Verifier([TOPIC], cert_host_pattern=LOOPBACK)

    async def main() -> None:
        for n in range(2):
            await verifier.verify(signer.notification(cert_url=pem_server.url,
                                                      message_id=f"m-{n}"))

    asyncio.run(main())
    assert pem_server.requests == ["/SimpleNotificationService-7e57.pem"]


def test_default_fetcher_refuses_an_untrusted_server_certificate(
        signer: Signer, pem_server: PemServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))
    verifier = Verifier([TOPIC], cert_host_pattern=LOOPBACK)
    with pytest.raises(FetchError, match="CERTIFICATE_VERIFY_FAILED"):
        verify(verifier, signer.notification(cert_url=pem_server.url))
    assert pem_server.requests == []


def test_default_fetcher_does_not_follow_redirects(
        signer: Signer, pem_server: PemServer, certs: Certs,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    verifier = Verifier([TOPIC], cert_host_pattern=LOOPBACK)
    url = pem_server.url.replace("-7e57.pem", "-0bad.pem")
    with pytest.raises(FetchError, match="302"):
        verify(verifier, signer.notification(cert_url=url))
    assert pem_server.requests == ["/SimpleNotificationService-0bad.pem"]


def test_a_subscription_is_confirmed_over_verified_tls(
        signer: Signer, pem_server: PemServer, certs: Certs,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))
    verifier = Verifier([TOPIC], fetch_cert=FakeFetcher(signer.pem),
                        cert_host_pattern=LOOPBACK)
    url = pem_server.url.rsplit("/", 1)[0] + "/?Action=ConfirmSubscription&Token=2336412f37"
    doc = {**signer.confirmation(subscribe_url=url), "SigningCertURL": pem_server.url}
    status = asyncio.run(handle_post(json.dumps(doc).encode(), verifier,
                                     confirm=verifier.confirm_subscription,
                                     on_notification=Calls().on_notification))
    assert status == 200
    assert pem_server.requests == ["/?Action=ConfirmSubscription&Token=2336412f37"]


# --- handle_post ---------------------------------------------------------------------------


@dataclass
class Calls:
    confirmed: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    fail_handler: bool = False
    fail_confirm: bool = False

    async def confirm(self, url: str) -> None:
        if self.fail_confirm:
            raise OSError("network unreachable")
        self.confirmed.append(url)

    async def on_notification(self, event: Event) -> None:
        if self.fail_handler:
            raise RuntimeError("database is locked")
        self.events.append(event)


def post(verifier: Verifier, calls: Calls, doc: dict[str, Any] | bytes) -> int:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return asyncio.run(handle_post(body, verifier, confirm=calls.confirm,
                                   on_notification=calls.on_notification))


def test_verified_subscription_is_confirmed_at_its_subscribe_url(signer: Signer,
                                                                   logs: list[Any]) -> None:
    calls = Calls()
    assert post(verifier_for(signer)[0], calls, signer.confirmation()) == 200
    assert calls.confirmed == [SUBSCRIBE_URL]
    assert events(logs, "sns_subscription_confirmed")[0]["topic"] == TOPIC


def test_forged_subscription_is_not_confirmed(signer: Signer, forger: Signer) -> None:
    calls = Calls()
    assert post(verifier_for(signer)[0], calls, forger.confirmation()) == 403
    assert calls.confirmed == []


def test_subscription_to_a_foreign_url_is_not_confirmed(signer: Signer) -> None:
    calls = Calls()
    doc = signer.confirmation(subscribe_url="https://attacker.example/confirm")
    assert post(verifier_for(signer)[0], calls, doc) == 403
    assert calls.confirmed == []


def test_failed_confirmation_asks_sns_to_retry(signer: Signer) -> None:
    verifier, calls = verifier_for(signer)[0], Calls(fail_confirm=True)
    assert post(verifier, calls, signer.confirmation()) == 503
    calls.fail_confirm = False
    assert post(verifier, calls, signer.confirmation()) == 200
    assert calls.confirmed == [SUBSCRIBE_URL]


def test_unsubscribe_confirmation_is_acknowledged_without_resubscribing(
        signer: Signer) -> None:
    calls = Calls()
    doc = signer.confirmation(kind="UnsubscribeConfirmation")
    assert post(verifier_for(signer)[0], calls, doc) == 200
    assert calls.confirmed == []


def test_notification_reaches_the_handler_once_despite_sns_retries(signer: Signer,
                                                                   logs: list[Any]) -> None:
    verifier, calls = verifier_for(signer)[0], Calls()
    doc = signer.notification()
    assert [post(verifier, calls, doc) for _ in range(3)] == [200, 200, 200]
    [event] = calls.events
    assert (event.kind, event.recipients) == (
        Kind.BOUNCE, ("jane@example.com", "richard@example.com"))
    assert len(events(logs, "sns_duplicate")) == 2


def test_handler_failure_asks_sns_to_retry_and_the_retry_is_handled(signer: Signer) -> None:
    verifier, calls = verifier_for(signer)[0], Calls(fail_handler=True)
    assert post(verifier, calls, signer.notification()) == 500
    calls.fail_handler = False
    assert post(verifier, calls, signer.notification()) == 200
    assert len(calls.events) == 1


@pytest.mark.parametrize("body", [b"", b"not json", b"[1]", b'{"Type": "Notification"}',
                                  b"\xff" * 10])
def test_malformed_post_is_answered_400(signer: Signer, body: bytes) -> None:
    calls = Calls()
    assert post(verifier_for(signer)[0], calls, body) == 400
    assert calls.events == []


def test_message_without_signed_fields_is_malformed_not_forged(signer: Signer) -> None:
    with pytest.raises(MalformedMessage, match="Message missing"):
        verify(verifier_for(signer)[0], {"Type": "Notification"})


def test_forged_notification_is_answered_403_and_logged_without_the_body(
        signer: Signer, forger: Signer, logs: list[Any]) -> None:
    calls = Calls()
    assert post(verifier_for(signer)[0], calls, forger.notification()) == 403
    assert calls.events == []
    assert events(logs, "sns_rejected")[0]["reason"] == "bad signature"
    assert "jane@example.com" not in repr(logs)


def test_verified_notification_that_is_not_ses_json_is_answered_400(signer: Signer) -> None:
    calls = Calls()
    doc = signer.notification(message='{"notificationType": "AmazonSnsSubscriptionSucceeded"}')
    assert post(verifier_for(signer)[0], calls, doc) == 400
    assert calls.events == []


def test_unreachable_certificate_asks_sns_to_retry(signer: Signer) -> None:
    async def unreachable(url: str) -> bytes:
        raise FetchError("GET sns.us-east-1.amazonaws.com failed: timed out")

    calls = Calls()
    assert post(Verifier([TOPIC], fetch_cert=unreachable), calls, signer.notification()) == 503
    assert calls.events == []


_json_leaf = (st.none() | st.booleans() | st.integers() | st.text(max_size=12)
              | st.sampled_from(["Notification", "SubscriptionConfirmation", "1", "2", TOPIC,
                                 CERT_URL]))
_sns_keys = st.sampled_from(["Type", "MessageId", "TopicArn", "Message", "Timestamp",
                             "Subject", "SubscribeURL", "Token", "SignatureVersion",
                             "Signature", "SigningCertURL"])
sns_like = st.dictionaries(_sns_keys, st.recursive(
    _json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                    max_size=3),
    max_leaves=8))


@settings(database=None, max_examples=300, deadline=None)
@given(sns_like)
def test_arbitrary_posts_are_answered_400_or_403_never_raise(doc: dict[str, Any]) -> None:
    calls = Calls()
    verifier = Verifier([TOPIC], fetch_cert=FakeFetcher(b"not a certificate"))
    assert post(verifier, calls, doc) in (400, 403)
    assert calls.events == [] and calls.confirmed == []
