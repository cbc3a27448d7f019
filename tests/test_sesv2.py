"""Delivery through SESv2: the relay process against moto_server and a scripted endpoint."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import signal

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from clients import implicit, starttls
from conftest import PASSWORD, SENDER, USER, Moto, Setup, wait_until
from fakeses import Failure, FakeSES

from relay.errors import SpoolError
from relay.queueentry import FileBlob
from relay.transports.errors import classify
from relay.transports.httpbody import Base64Document
from relay.transports.sesv2http import PATH, Signer, _error_response, _wire

MESSAGE = (b"From: sender@example.com\r\nTo: to@example.net\r\nCc: cc@example.net\r\n"
           b"Subject: via SES\r\nMessage-ID: <1@example.com>\r\n"
           b"Date: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\nHello SES.\r\n")


def test_message_reaches_ses_byte_for_byte_with_bcc_kept_in_the_envelope(
        make_setup, start_process, moto: Moto) -> None:
    setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=moto.url)
    relay = start_process(setup)
    rcpts = ["to@example.net", "cc@example.net", "blind@example.org"]
    with starttls(setup.starttls_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, rcpts, MESSAGE)
    [sent] = moto.wait_sent(1)
    assert sent["raw_data"].encode() == MESSAGE
    assert sent["source"] == SENDER
    # moto appends header recipients to the destinations; the envelope ones come first.
    assert sent["destinations"][:3] == rcpts
    delivered = relay.wait_event("delivered")
    assert delivered["ses_message_id"] == sent["id"]
    assert delivered["transport"] == "sesv2"


def test_a_permanent_ses_error_fails_the_message_with_a_hint(
        make_setup, start_process, moto: Moto) -> None:
    setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=moto.url)
    relay = start_process(setup)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail("unverified@example.org", ["to@example.net"], MESSAGE)
    failed = relay.wait_event("failed")
    assert failed["code"] == "MessageRejected"
    assert "verified" in failed["hint"] and "us-east-1" in failed["hint"]
    assert failed["attempt"] == 1
    [record] = (setup.queue_dir / "failed").glob("*.json")
    assert json.loads(record.read_text())["code"] == "MessageRejected"
    assert (setup.queue_dir / "failed" / record.stem).exists()
    assert list((setup.queue_dir / "active").iterdir()) == []
    assert moto.sent() == []


def test_the_send_is_signed_sigv4_for_ses_in_the_region_with_the_chain_credentials(
        make_setup, start_relay) -> None:
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="eu-west-1", endpoint_url=ses.url)
        start_relay(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, ["to@example.net"], MESSAGE)
        wait_until(lambda: ses.accepted)
        [sent] = ses.accepted
    # AWS_ACCESS_KEY_ID=testing (conftest): the standard chain's key, SESv2's signing name.
    assert re.fullmatch(r"AWS4-HMAC-SHA256 Credential=testing/\d{8}/eu-west-1/ses/aws4_request, "
                        r"SignedHeaders=\S+, Signature=[0-9a-f]{64}", sent["authorization"])
    assert sent["raw"] == MESSAGE


@pytest.mark.parametrize("endpoint", [
    "https://email.eu-west-1.amazonaws.com", "http://127.0.0.1:8080", "http://[::1]:9000",
    "https://SES.Example.com:443/prefix/", "https://vpce.example.com:8443/a b~c"])
@pytest.mark.parametrize("token", [None, "FQoG  session/token=="])
def test_the_signature_is_botocores_to_the_byte(endpoint: str, token: str | None) -> None:
    # The hand-written signer must give the very headers botocore's SigV4Auth gives for
    # the same request and instant: host (default port dropped, IPv6 bracketed), the
    # quoted path, the token signed, the payload hash.
    url = endpoint.rstrip("/") + PATH
    body = b'{"Content":{"Raw":{"Data":"aGk="}}}'
    request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token), "ses",
              "eu-west-1").add_auth(request)
    want = dict(request.headers.items())
    got = Signer(url, "eu-west-1", "ses").headers("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG",
                                                 token, hashlib.sha256(body).hexdigest(),
                                                 now=want["X-Amz-Date"])
    assert got == want


def test_the_request_document_is_what_the_sdk_would_send() -> None:
    message = bytes(range(256)) * 40
    params = {"FromEmailAddress": "app@example.com",
              "Destination": {"ToAddresses": ["to@example.net", "zoë@example.net"]},
              "ConfigurationSetName": "cs \"quoted\"",
              "EmailTags": [{"Name": "campaign", "Value": "a/b"}],
              "Content": {"Raw": {"Data": message}}}
    document = json.loads(_wire(params))
    assert document == {**params, "Content": {"Raw": {
        "Data": base64.b64encode(message).decode()}}}
    assert json.loads(_wire({"Content": {"Raw": {"Data": b""}}})) == {
        "Content": {"Raw": {"Data": ""}}}


@pytest.mark.parametrize("size", [256 * 1024 + 1, 3 * 65536 * 4, 3 * 65536 * 4 + 2])
def test_a_large_document_streamed_is_the_same_document(size: int) -> None:
    # Above 256 KiB the base64 is made a slice at a time as it is sent: the bytes, their
    # length (Content-Length) and their digest (the signature) must be those of the
    # document built whole. Sizes: just over, whole slices, a padded last slice.
    message = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    params = {"FromEmailAddress": "app@example.com", "Content": {"Raw": {"Data": message}},
              "Destination": {"ToAddresses": ["to@example.net"]}}
    body = _wire(params)
    assert isinstance(body, Base64Document)
    whole = body.join()
    assert json.loads(whole) == {**params, "Content": {"Raw": {
        "Data": base64.b64encode(message).decode()}}}
    assert len(body) == len(whole)
    assert body.sha256() == hashlib.sha256(whole).hexdigest()
    assert b"".join(body.chunks()) == whole  # again: a retry sends the same bytes


def test_a_message_read_from_its_queue_file_makes_the_same_document(tmp_path) -> None:
    # A large message is left in its queue file and read a slice at a time as it is sent
    # (relay.attempt, FileSender): the document, its length and its digest are those of
    # the message held in memory. The entry's envelope and trailer after it are not sent.
    message = bytes(range(256)) * 3000 + b"tail"
    entry = tmp_path / "entry"
    entry.write_bytes(message + b"\n{envelope and trailer}")
    params = {"FromEmailAddress": "app@example.com",
              "Destination": {"ToAddresses": ["to@example.net"]}}
    with entry.open("rb") as f:
        from_file = _wire({**params, "Content": {"Raw": {"Data": FileBlob(f.fileno(),
                                                                          len(message))}}})
        in_memory = _wire({**params, "Content": {"Raw": {"Data": message}}})
        assert isinstance(from_file, Base64Document) and isinstance(in_memory, Base64Document)
        assert from_file.join() == in_memory.join()
        assert len(from_file) == len(in_memory)
        assert from_file.sha256() == in_memory.sha256()


def test_a_queue_file_that_cannot_be_read_is_not_a_network_failure(tmp_path) -> None:
    # Read as the request is sent: a short file (or an I/O error) must not look like an
    # unreachable SES, which would count against the region and pause delivery.
    entry = tmp_path / "entry"
    entry.write_bytes(b"x" * 1000)
    with entry.open("rb") as f:
        body = _wire({"Content": {"Raw": {"Data": FileBlob(f.fileno(), 300_000)}}})
        assert isinstance(body, Base64Document)
        with pytest.raises(SpoolError) as caught:
            body.sha256()
    verdict = classify(caught.value, region="eu-west-1")
    assert not verdict.permanent and verdict.code not in ("ConnectionError", "Timeout")


def test_a_large_message_arrives_whole_and_signed(make_setup, start_relay) -> None:
    # Over 1 MiB the request is built and hashed in a thread: same bytes, same signature.
    line = b"x" * 76 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (3 * 1024 * 1024 // len(line))
    with FakeSES() as ses:
        setup: Setup = make_setup("sesv2", region="eu-west-1", endpoint_url=ses.url)
        start_relay(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, ["to@example.net"], big)
        wait_until(lambda: ses.accepted, timeout=15)
        [sent] = ses.accepted
    assert sent["raw"].endswith(big.partition(b"\r\n\r\n")[2])  # the whole body
    assert len(sent["raw"]) > len(big)  # our Message-ID and Date headers were added
    # Signed for the bytes that were sent: the digest computed on the thread is theirs.
    expected = Signer(ses.url + PATH, "eu-west-1", "ses").headers(
        "testing", "testing", None, hashlib.sha256(sent["body"]).hexdigest(),
        now=sent["amz_date"])
    assert sent["authorization"] == expected["Authorization"]


def test_an_error_answer_is_read_as_the_sdk_reads_it() -> None:
    # The header wins; a body's namespaced __type and a proxy's HTML page are read too.
    assert _error_response(400, "MessageRejected:http://internal.amazon.com/", b"{}")[
        "Error"]["Code"] == "MessageRejected"
    body = b'{"__type": "com.amazonaws.ses#AccountSuspendedException", "message": "no"}'
    assert _error_response(400, "", body) == {
        "Error": {"Code": "AccountSuspendedException", "Message": "no"},
        "ResponseMetadata": {"HTTPStatusCode": 400}}
    gateway = _error_response(502, "", b"<html>Bad Gateway</html>")
    assert gateway["Error"]["Code"] == ""
    assert gateway["ResponseMetadata"]["HTTPStatusCode"] == 502
    verdict = classify(ClientError(gateway, "SendEmail"), region="eu-west-1")  # type: ignore[arg-type]
    assert not verdict.permanent and verdict.code == "Unknown"


@pytest.mark.parametrize(("status", "code", "event"), [
    (429, "TooManyRequestsException", "throttled"),
    (500, "InternalFailure", "deferred"),
    (503, "ServiceUnavailable", "deferred"),
    (400, "LimitExceededException", "throttled"),
])
def test_transient_ses_errors_are_retried_until_delivered(
        make_setup, start_relay, logs, status: int, code: str, event: str) -> None:
    with FakeSES() as ses:
        ses.fail_next(Failure(status, code), Failure(status, code))
        setup: Setup = make_setup("sesv2", region="us-east-1", endpoint_url=ses.url)
        start_relay(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            s.sendmail(SENDER, ["to@example.net"], MESSAGE)
        wait_until(lambda: ses.accepted, timeout=15)
        assert [m["raw"] for m in ses.accepted] == [MESSAGE]
        assert ses.calls == 3
        # The relay logs "delivered" once it has read SES's answer: after ses.accepted.
        wait_until(lambda: any(e["event"] == "delivered" for e in logs))
    retries = [e for e in logs if e["event"] == event]
    assert [e["code"] for e in retries] == [code, code]
    assert all(e["next_attempt_in"] > 0 for e in retries)
    if event == "throttled":  # retried after a short pause, not at the next backoff step
        assert all(e["next_attempt_in"] <= 2.0 for e in retries)
    [delivered] = [e for e in logs if e["event"] == "delivered"]
    assert delivered["attempt"] == 3


def test_an_unreachable_endpoint_defers_and_keeps_the_message(
        make_setup, start_relay, logs, refused_url: str) -> None:
    setup: Setup = make_setup("sesv2", region="us-east-1",
                              endpoint_url=refused_url)
    start_relay(setup)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        assert s.sendmail(SENDER, ["to@example.net"], MESSAGE) == {}
    wait_until(lambda: any(e["event"] == "deferred" for e in logs))
    deferred = next(e for e in logs if e["event"] == "deferred")
    assert deferred["code"] == "ConnectionError"
    assert "endpoint" in deferred["hint"]
    # The relay stops trying the rest of the queue for a while, instead of every message.
    assert next(e for e in logs if e["event"] == "upstream_down")["pause"] == 1.0
    assert len(list((setup.queue_dir / "active").iterdir())) == 1


def test_sigterm_while_the_upstream_is_down_stops_at_once_and_keeps_the_queue(
        make_setup, start_process, refused_url: str) -> None:
    setup: Setup = make_setup("sesv2", region="us-east-1",
                              endpoint_url=refused_url)
    relay = start_process(setup)
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        for _ in range(8):
            s.sendmail(SENDER, ["to@example.net"], MESSAGE)
    # Eight failures in a row: the next attempts wait a minute for the upstream.
    relay.wait_event("upstream_down", pause=60.0)
    relay.proc.send_signal(signal.SIGTERM)
    # Workers waiting out the pause give their messages back instead of holding the
    # shutdown for the 30 s allowed to sends under way.
    assert relay.proc.wait(10) == 0
    assert len(list((setup.queue_dir / "active").iterdir())) == 8


def test_a_message_that_got_250_survives_kill_9_and_is_delivered_after_restart(
        make_setup, start_process, moto: Moto, refused_url: str) -> None:
    # First life: SES unreachable, so the message can only be in the queue when we kill.
    setup: Setup = make_setup("sesv2", region="us-east-1",
                              endpoint_url=refused_url)
    relay = start_process(setup)
    with starttls(setup.starttls_port, setup.certs.ca, USER, PASSWORD) as s:
        s.mail(SENDER)
        s.rcpt("to@example.net")
        code, text = s.data(MESSAGE)
    assert code == 250
    queue_id = text.split()[-1].decode()
    relay.kill()  # SIGKILL right after the 250: no shutdown code runs
    # Second life: SES is back.
    setup.doc["delivery"]["endpoint_url"] = moto.url
    setup.write()
    relay = start_process(setup)
    [sent] = moto.wait_sent(1)
    assert sent["raw_data"].encode() == MESSAGE
    relay.wait_event("delivered", queue_id=queue_id, ses_message_id=sent["id"])
    assert relay.terminate() == 0
