"""The one place where foreign delivery errors become ours.

Every botocore/aiobotocore exception a transport can see is mapped here to a DeliveryError
that says transient or permanent and carries a hint an operator can act on. The rule of
thumb: only a verdict about *this message* is permanent. Anything about the account, the
credentials or the network is transient, so mail waits in the queue (until queue.max_age)
while a person fixes the cause, instead of being thrown away.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
import botocore.exceptions as bex

from relay.errors import DeliveryError
from relay.transports import http1


@dataclass(frozen=True)
class Verdict:
    permanent: bool
    hint: str
    throttle: str | None = None  # "rate" or "daily": see DeliveryError.throttle


# Error codes as they appear in SES responses (botocore's Error.Code), both API versions.
_TABLE: dict[str, Verdict] = {
    # -- about the message: permanent
    "MessageRejected": Verdict(True, "SES rejected the message: in the sandbox every recipient "
                               "must be a verified identity, and the sender must be verified "
                               "in region {region}"),
    "MailFromDomainNotVerifiedException": Verdict(True, "the sender's custom MAIL FROM domain "
                                                  "is not verified in region {region}"),
    "MailFromDomainNotVerified": Verdict(True, "the sender's custom MAIL FROM domain is not "
                                         "verified in region {region}"),
    "BadRequestException": Verdict(True, "SES refused the request as invalid (a malformed "
                                   "address, a duplicate header, or a message too large)"),
    "InvalidParameterValue": Verdict(True, "SES refused a parameter (address or message) "
                                     "as invalid"),
    # -- throttling and quotas: transient, SES drops the message and expects a retry
    "TooManyRequestsException": Verdict(False, "SES throttled the call: sending faster than "
                                        "the account's maximum send rate", "rate"),
    "Throttling": Verdict(False, "SES throttled the call: sending faster than the account's "
                          "maximum send rate", "rate"),
    "ThrottlingException": Verdict(False, "SES throttled the call", "rate"),
    "LimitExceededException": Verdict(False, "an SES limit was reached; mail stays queued "
                                      "and is retried", "rate"),
    # -- the account and its configuration: transient so a person can fix it in time
    "SendingPausedException": Verdict(False, "sending is paused for this account or "
                                      "configuration set in region {region}"),
    "AccountSendingPausedException": Verdict(False, "sending is paused for the account in "
                                             "region {region}"),
    "ConfigurationSetSendingPausedException": Verdict(False, "sending is paused for the "
                                                      "configuration set in region {region}"),
    "AccountSuspendedException": Verdict(False, "the SES account is suspended in region "
                                         "{region}; contact AWS"),
    "NotFoundException": Verdict(False, "a resource named in the request (configuration set?) "
                                 "does not exist in region {region}"),
    "ConfigurationSetDoesNotExistException": Verdict(False, "the configuration set does not "
                                                     "exist in region {region}"),
    "AccessDenied": Verdict(False, "the IAM principal lacks ses:SendEmail (SESv2) or "
                            "ses:SendRawEmail (SESv1/SMTP) permission"),
    "AccessDeniedException": Verdict(False, "the IAM principal lacks ses:SendEmail (SESv2) or "
                                     "ses:SendRawEmail (SESv1/SMTP) permission"),
    "InvalidClientTokenId": Verdict(False, "the AWS access key id is not valid (wrong account "
                                    "or deleted key?)"),
    "UnrecognizedClientException": Verdict(False, "the AWS access key id is not valid"),
    "SignatureDoesNotMatch": Verdict(False, "the AWS secret key is wrong, or the clock is "
                                     "skewed"),
    "ExpiredToken": Verdict(False, "the AWS session token has expired; check the credential "
                            "source refreshes"),
    "ExpiredTokenException": Verdict(False, "the AWS session token has expired"),
    "RequestExpired": Verdict(False, "the request signature expired: the clock is skewed"),
}

_UNKNOWN = Verdict(False, "unexpected SES error; retrying")


def classify(exc: BaseException, *, region: str | None) -> DeliveryError:
    """Map a botocore, aiohttp or network exception to a DeliveryError."""
    error = _classify(exc, region)
    error.unsent = _surely_unsent(exc)
    return error


def _surely_unsent(exc: BaseException) -> bool:
    """True when the request cannot have succeeded: SES answered with an error, or no
    connection was made (refused, no route, DNS, connect timeout, TLS handshake). A read
    timeout or a connection lost after the request went may have delivered the message."""
    return isinstance(exc, bex.ClientError | bex.NoCredentialsError
                      | bex.PartialCredentialsError | bex.CredentialRetrievalError
                      | http1.ConnectFailed | bex.EndpointConnectionError
                      | bex.ConnectTimeoutError | aiohttp.ClientConnectorError
                      | ssl.SSLCertVerificationError)  # only ever at the handshake


def _classify(exc: BaseException, region: str | None) -> DeliveryError:
    if isinstance(exc, bex.ClientError):
        return _from_client_error(exc, region)
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError
                  | bex.CredentialRetrievalError):
        return DeliveryError(str(exc), permanent=False, code="NoCredentials",
                             hint="no usable AWS credentials: set them in the environment, a "
                                  "profile (delivery.profile) or an instance/container role")
    # Timeouts first: botocore's timeout errors are also connection errors.
    if isinstance(exc, bex.ReadTimeoutError | bex.ConnectTimeoutError | TimeoutError) or (
            isinstance(exc, http1.ConnectFailed) and isinstance(exc.__cause__, TimeoutError)):
        return DeliveryError(str(exc) or "timed out", permanent=False, code="Timeout",
                             hint="SES did not answer in time")
    if isinstance(exc, bex.EndpointConnectionError | bex.ConnectionClosedError
                  | bex.HTTPClientError | bex.ConnectionError | OSError
                  | aiohttp.ClientError):  # the SESv2 SendEmail path (sesv2http)
        return DeliveryError(str(exc), permanent=False, code="ConnectionError",
                             hint="cannot reach the SES endpoint: check network, DNS, proxy "
                                  "and delivery.endpoint_url")
    return DeliveryError(f"{type(exc).__name__}: {exc}", permanent=False, code="Unknown",
                         hint=_UNKNOWN.hint)


def _from_client_error(exc: bex.ClientError, region: str | None) -> DeliveryError:
    err = exc.response.get("Error", {})
    code = str(err.get("Code") or "Unknown")
    message = str(err.get("Message") or exc)
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    verdict = _TABLE.get(code)
    if verdict is None:
        # Unknown codes: 4xx other than 429 are about the request, but we have not seen
        # them, so we still retry (mail is never discarded on a guess); 5xx are SES's.
        verdict = _UNKNOWN if status != 429 else _TABLE["TooManyRequestsException"]
    hint = verdict.hint.format(region=region or "(unset)")
    throttle = verdict.throttle
    if throttle and ("daily" in message.lower() or "quota" in message.lower()):
        throttle = "daily"  # "Daily message quota exceeded"
        hint = ("the account's 24-hour sending quota is used up; mail stays queued until "
                "SES's window frees up (ask AWS for a higher quota)")
    return DeliveryError(message, permanent=verdict.permanent, code=code, hint=hint,
                         throttle=throttle, status=status)
