"""The doctor's AWS calls: the clients of one region, and one failed call as one row (FAIL
when mail could not go at all, else WARN), with the fix the error table gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import botocore.exceptions as bex

from relay.doctor.report import FAIL, WARN, Row, oneline
from relay.errors import DeliveryError
from relay.transports.errors import classify

# Codes after which nothing could be sent at all (no network, no valid credentials, a
# suspended account): those make a failed call a FAIL. Anything else (AccessDenied on a
# read-only call, throttling, an odd answer) only means the doctor could not look: a WARN.
_BLOCKING_CODES = frozenset({
    "ConnectionError", "Timeout", "NoCredentials", "InvalidClientTokenId",
    "UnrecognizedClientException", "SignatureDoesNotMatch", "ExpiredToken",
    "ExpiredTokenException", "RequestExpired", "AccountSuspendedException",
})
_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException"})
# classify's hint for errors it does not know ends in "retrying", which suits the queue but
# not a one-shot report; such rows get this fix instead.
_UNKNOWN_HINT = classify(Exception(), region=None).hint
_UNEXPECTED = ("unexpected error or answer: check delivery.region, delivery.profile, "
               "delivery.endpoint_url and any proxy, then run the doctor again")


@dataclass(frozen=True)
class Clients:
    """One region's clients (identities, quotas and configuration sets are per region)."""

    region: str
    sts: Any
    sesv2: Any
    ses: Any


def failure(check: str, exc: BaseException, region: str, action: str,
             permission: str = "", *, blocking: bool = False) -> Row:
    """A failed AWS call as a row: FAIL if it means mail cannot go, else WARN."""
    err = exc if isinstance(exc, DeliveryError) else classify(exc, region=region)
    detail = oneline(f"{action}: {err.code}: {err}")
    unknown = err.hint == _UNKNOWN_HINT
    if blocking or err.code in _BLOCKING_CODES:
        return Row(FAIL, check, detail, fix=_UNEXPECTED if unknown else err.hint)
    if err.code in _DENIED_CODES and permission:
        return Row(WARN, check, detail,
                   fix=f"the doctor needs {permission} to check this (sending may still work): "
                       "allow it to the relay's IAM principal, or check in the SES console")
    return Row(WARN, check, detail, fix=_UNEXPECTED if unknown else err.hint)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, bex.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return ""


def not_found(exc: BaseException) -> bool:
    return error_code(exc) in ("NotFoundException", "ConfigurationSetDoesNotExist",
                                "ConfigurationSetDoesNotExistException")


def not_implemented(exc: BaseException) -> bool:
    """An HTTP 404 that is not SES's own NotFound: the endpoint (moto) lacks the operation."""
    if not isinstance(exc, bex.ClientError) or not_found(exc):
        return False
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) == 404
