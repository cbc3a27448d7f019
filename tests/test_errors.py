"""The error table: every SES error code and network failure, transient or permanent."""

from __future__ import annotations

import botocore.exceptions as bex
import pytest
from test_cli import run

from relay.sescreds import smtp_password
from relay.transports.errors import classify


def client_error(code: str, message: str = "msg", status: int = 400) -> bex.ClientError:
    return bex.ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "SendEmail")


# (code, HTTP status, message, permanent, throttle, words the hint must contain)
ROWS = [
    ("MessageRejected", 400, "Email address is not verified. The following identities failed "
     "the check in region US-EAST-1: a@example.com", True, None, ["sandbox", "eu-west-1"]),
    ("MailFromDomainNotVerifiedException", 400, "x", True, None, ["MAIL FROM", "eu-west-1"]),
    ("MailFromDomainNotVerified", 400, "x", True, None, ["MAIL FROM"]),
    ("BadRequestException", 400, "Duplicate header 'Subject'", True, None, ["duplicate"]),
    ("InvalidParameterValue", 400, "x", True, None, ["invalid"]),
    ("TooManyRequestsException", 429, "x", False, "rate", ["send rate"]),
    ("Throttling", 400, "Maximum sending rate exceeded.", False, "rate", ["send rate"]),
    ("Throttling", 400, "Daily message quota exceeded.", False, "daily", ["24-hour"]),
    ("ThrottlingException", 400, "Rate exceeded", False, "rate", ["throttled"]),
    ("LimitExceededException", 400, "Daily message quota exceeded", False, "daily", ["quota"]),
    ("SendingPausedException", 400, "x", False, None, ["paused", "eu-west-1"]),
    ("AccountSendingPausedException", 400, "x", False, None, ["paused"]),
    ("ConfigurationSetSendingPausedException", 400, "x", False, None, ["paused"]),
    ("AccountSuspendedException", 400, "x", False, None, ["suspended"]),
    ("NotFoundException", 404, "x", False, None, ["configuration set"]),
    ("ConfigurationSetDoesNotExistException", 400, "x", False, None, ["configuration set"]),
    ("AccessDenied", 403, "x", False, None, ["ses:SendEmail", "ses:SendRawEmail"]),
    ("AccessDeniedException", 403, "x", False, None, ["ses:SendEmail"]),
    ("InvalidClientTokenId", 403, "x", False, None, ["access key"]),
    ("UnrecognizedClientException", 403, "x", False, None, ["access key"]),
    ("SignatureDoesNotMatch", 403, "x", False, None, ["secret", "clock"]),
    ("ExpiredToken", 400, "x", False, None, ["expired"]),
    ("ExpiredTokenException", 400, "x", False, None, ["expired"]),
    ("RequestExpired", 400, "x", False, None, ["clock"]),
    ("InternalFailure", 500, "x", False, None, ["unexpected"]),
    ("ServiceUnavailable", 503, "x", False, None, ["unexpected"]),
    ("SomethingNew", 400, "x", False, None, ["unexpected"]),
]


@pytest.mark.parametrize(("code", "status", "message", "permanent", "throttle", "words"), ROWS,
                         ids=[f"{r[0]}-{r[4] or r[1]}" for r in ROWS])
def test_each_ses_error_code_is_classified(code: str, status: int, message: str,
                                           permanent: bool, throttle: str | None,
                                           words: list[str]) -> None:
    error = classify(client_error(code, message, status), region="eu-west-1")
    assert error.code == code
    assert error.permanent is permanent
    assert error.throttle == throttle
    for word in words:
        assert word.lower() in error.hint.lower(), (word, error.hint)
    assert str(error) == message


@pytest.mark.parametrize(("exc", "code", "word"), [
    (bex.EndpointConnectionError(endpoint_url="https://email.eu-west-1.amazonaws.com"),
     "ConnectionError", "endpoint"),
    (bex.ConnectionClosedError(endpoint_url="https://x"), "ConnectionError", "endpoint"),
    (bex.ReadTimeoutError(endpoint_url="https://x"), "Timeout", "in time"),
    (bex.ConnectTimeoutError(endpoint_url="https://x"), "Timeout", "in time"),
    (bex.NoCredentialsError(), "NoCredentials", "credentials"),
    (bex.PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
     "NoCredentials", "credentials"),
    (RuntimeError("surprise"), "Unknown", "unexpected"),
])
def test_network_and_credential_failures_are_transient(exc: Exception, code: str,
                                                       word: str) -> None:
    error = classify(exc, region="eu-west-1")
    assert (error.code, error.permanent) == (code, False)
    assert word in error.hint


def test_smtp_password_matches_the_v4_derivation() -> None:
    # AWS's documentation example key; the expected value was computed independently.
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert smtp_password(secret, "us-east-1") == "BLBM/9hSUELfq8Gw+rU1YcBjkOxGbhT2XG763xVLGWL9"
    assert smtp_password(secret, "eu-west-1") != smtp_password(secret, "us-east-1")


def test_smtp_password_command_reads_the_secret_from_stdin() -> None:
    result = run("smtp-password", "--region", "us-east-1",
                 stdin="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n")
    assert result.returncode == 0
    assert result.stdout.strip() == "BLBM/9hSUELfq8Gw+rU1YcBjkOxGbhT2XG763xVLGWL9"
    assert run("smtp-password", "--region", "nowhere", stdin="x\n").returncode == 2
