"""SESv1 and SESv2 request shapes, assumed roles, and SESv1 against moto_server."""

from __future__ import annotations

import asyncio

import pytest
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Moto, Setup

from relay import aws
from relay.config import DeliveryConfig
from relay.spool import Envelope
from relay.transports.sesv1 import SESv1Transport
from relay.transports.sesv2 import SESv2Transport

ARNS = {"from_arn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
        "source_arn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
        "return_path_arn": "arn:aws:ses:us-east-1:123456789012:identity/bounce.example.com"}
ENVELOPE = Envelope("a@example.com", ("b@example.net", "c@example.net"),
                    configuration_set="marketing", tags=(("campaign", "fall"),))


def test_sesv2_request_carries_envelope_options_and_cross_account_arns() -> None:
    params = SESv2Transport(DeliveryConfig(region="us-east-1", **ARNS)).params(ENVELOPE, b"x")
    assert params == {
        "FromEmailAddress": "a@example.com",
        "Destination": {"ToAddresses": ["b@example.net", "c@example.net"]},
        "Content": {"Raw": {"Data": b"x"}},
        "ConfigurationSetName": "marketing",
        "EmailTags": [{"Name": "campaign", "Value": "fall"}],
        "FromEmailAddressIdentityArn": ARNS["from_arn"],
        "FeedbackForwardingEmailAddressIdentityArn": ARNS["return_path_arn"],
    }


def test_sesv1_request_carries_envelope_options_and_cross_account_arns() -> None:
    params = SESv1Transport(DeliveryConfig(region="us-east-1", **ARNS)).params(ENVELOPE, b"x")
    assert params == {
        "Source": "a@example.com",
        "Destinations": ["b@example.net", "c@example.net"],
        "RawMessage": {"Data": b"x"},
        "ConfigurationSetName": "marketing",
        "Tags": [{"Name": "campaign", "Value": "fall"}],
        "SourceArn": ARNS["source_arn"],
        "FromArn": ARNS["from_arn"],
        "ReturnPathArn": ARNS["return_path_arn"],
    }


def test_sesv1_delivers_the_exact_bytes(make_setup, start_process, moto: Moto) -> None:
    setup: Setup = make_setup("sesv1", region="us-east-1", endpoint_url=moto.url)
    relay = start_process(setup)
    message = (b"From: sender@example.com\r\nSubject: v1\r\nDate: Sun, 22 Nov 2026 10:00:00 "
               b"+0000\r\nMessage-ID: <v1@example.com>\r\n\r\nvia SendRawEmail\r\n")
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["to@example.net", "bcc@example.org"], message)
    [sent] = moto.wait_sent(1)
    assert sent["raw_data"].encode() == message
    assert sent["destinations"][:2] == ["to@example.net", "bcc@example.org"]
    assert relay.wait_event("delivered")["ses_message_id"] == sent["id"]


def test_sesv1_reads_the_send_quota(moto: Moto) -> None:
    async def main() -> float:
        t = SESv1Transport(DeliveryConfig(region="us-east-1", endpoint_url=moto.url))
        await t.start()
        try:
            quota = await t.quota()
        finally:
            await t.aclose()
        assert quota is not None
        return quota.max_24_hour_send

    assert asyncio.run(main()) > 0


def test_a_configured_role_is_assumed_with_the_chain_credentials(
        moto: Moto, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto.url)
    role = "arn:aws:iam::123456789012:role/ses-sender"

    async def main() -> tuple[str, str]:
        session = await aws.session(DeliveryConfig(region="us-east-1", role_arn=role,
                                                   external_id="ext-1"))
        creds = await session.get_credentials()
        frozen = await creds.get_frozen_credentials()
        return creds.method, frozen.access_key

    method, access_key = asyncio.run(main())
    assert method == "assume-role"
    assert access_key != "testing"  # the chain's key was exchanged for temporary ones
