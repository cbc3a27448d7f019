"""Every AWS call signs with the configured identity (delivery.profile), the SQS poller too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import Setup, wait_until

REGION = "us-east-1"


class _RecordingSQS(BaseHTTPRequestHandler):
    """SQS's JSON protocol, reduced to an empty ReceiveMessage; records who signed."""

    signers: list[str]

    def do_POST(self) -> None:  # http.server's name for it
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        auth = self.headers.get("Authorization", "")
        # "AWS4-HMAC-SHA256 Credential=AKID/date/region/sqs/aws4_request, ..."
        self.signers.append(auth.partition("Credential=")[2].partition("/")[0])
        threading.Event().wait(0.05)  # a (very) short long poll
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recording_sqs() -> Iterator[tuple[str, list[str]]]:
    signers: list[str] = []
    handler = type("Handler", (_RecordingSQS,), {"signers": signers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", signers
    finally:
        server.shutdown()
        server.server_close()


def test_the_sqs_poller_signs_with_the_configured_profile(
        setup: Setup, start_relay: Any, recording_sqs: tuple[str, list[str]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment's keys ("testing", from conftest) are not the profile's: a poller
    # that ignores delivery.profile signs with them.
    credentials = tmp_path / "aws-credentials"
    credentials.write_text("[fleet]\naws_access_key_id = AKIAFLEETPROFILE\n"
                           "aws_secret_access_key = fleet-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    endpoint, signers = recording_sqs
    setup.doc["delivery"].update({"region": REGION, "profile": "fleet"})
    setup.doc["feedback"].update({"sqs_queue_url": f"{endpoint}/123456789012/ses-feedback",
                                  "sqs_endpoint_url": endpoint})
    setup.write()
    start_relay(setup)
    wait_until(lambda: signers, timeout=20)
    assert set(signers) == {"AKIAFLEETPROFILE"}


def test_aws_sessions_are_made_in_relay_aws_only() -> None:
    # Each AWS client gets its session from relay.aws.session (profile, role); a module
    # that builds one of its own ignores them, as the SQS poller did.
    relay_dir = Path(__file__).resolve().parent.parent / "relay"
    makers = ("import aioboto3", "from aioboto3", "AioSession", "import boto3",
              "get_session(")
    offenders = [f"{path.relative_to(relay_dir)}: {maker}"
                 for path in relay_dir.rglob("*.py") if path != relay_dir / "aws.py"
                 for maker in makers if maker in path.read_text()]
    assert offenders == []
