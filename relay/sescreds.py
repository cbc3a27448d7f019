"""The SES SMTP password, derived from an IAM secret access key (version 4, per region).

AWS documents this derivation (SES developer guide, "Obtaining Amazon SES SMTP
credentials"): an HMAC-SHA256 chain in the style of SigV4 over fixed inputs, prefixed with
the version byte 0x04 and base64-encoded. The SMTP user name is the access key id. There is
no library for it in the AWS SDKs, hence these few lines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

_DATE, _SERVICE, _TERMINAL, _MESSAGE, _VERSION = (
    "11111111", "ses", "aws4_request", "SendRawEmail", 0x04)


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def smtp_password(secret_access_key: str, region: str) -> str:
    signature = _sign(("AWS4" + secret_access_key).encode(), _DATE)
    for part in (region, _SERVICE, _TERMINAL, _MESSAGE):
        signature = _sign(signature, part)
    return base64.b64encode(bytes([_VERSION]) + signature).decode()
