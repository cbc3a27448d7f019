"""The account's sending limits for the smtp transport, read over the SES API.

The SMTP interface has no quota command, but the relay usually holds IAM credentials too
(an instance role, or the IAM user whose keys the SMTP password is derived from). With
them it reads MaxSendRate and the 24-hour quota as the API transports do: SESv2
GetAccount, or SESv1 GetSendQuota where only that is allowed (or served), and the
scheduler follows them.

Reading is a bonus, never a condition: SES's own policy for SMTP users grants
ses:SendRawEmail and nothing else, and a network that allows only SMTP egress cannot reach
the API. Whatever stops the read (no credentials, no permission, no route) leaves the rate
where the configuration puts it, says so once in an info line, and never fails a send or
the readiness check.
"""

from __future__ import annotations

import contextlib
from typing import Any

from botocore.config import Config as BotoConfig

from relay import aws, log
from relay.config import DeliveryConfig
from relay.errors import DeliveryError
from relay.transports.base import Quota
from relay.transports.errors import classify

_log = log.get("transport.smtp")
# The API may be out of reach where only SMTP egress is allowed: the scheduler waits for
# the first read before it sends (up to 10 s), so a dropped connection, or a middlebox
# that accepts and stalls, must not hold it for long. GetAccount answers in well under
# a second. (Measured with an endpoint that accepts and never answers: start took
# 10.15 s with a 10 s read timeout, 3.17 s with these.)
_CONNECT_TIMEOUT = 3.0
_READ_TIMEOUT = 3.0
# The API answered, but not this call: try the other API version (moto serves only v1's).
_NOT_THIS_CALL = frozenset({"AccessDenied", "AccessDeniedException", "NotFound",
                            "NotFoundException", "404", "UnknownOperationException",
                            "InvalidAction"})
_OFF_HINT = ("the send rate is delivery.max_send_rate alone (unset: no limit but SES's "
             "throttling answers) and the 24-hour quota is not watched; allow ses:GetAccount "
             "or ses:GetSendQuota to the relay's IAM credentials to follow the account")


class Account:
    """GetAccount / GetSendQuota with the standard credential chain, if it yields any."""

    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        # The calls to try, the one that last answered first; empty: reading is off.
        self._calls: list[str] = []
        self._clients: dict[str, Any] = {}
        self._said: str | None = None  # the reason last logged, so each is said once

    async def start(self) -> None:
        reason = await self._open()
        if reason is not None:
            self._off(reason)

    async def quota(self) -> Quota | None:
        """The account's quota, or None (logged once per reason) if it cannot be read."""
        refusals: list[str] = []
        for call in list(self._calls):
            try:
                fields = await self._read(call)
            except Exception as e:  # botocore's, mapped where botocore is known
                error = classify(e, region=self.config.region)
                if error.code not in _NOT_THIS_CALL:
                    self._off(f"{call}: {error.code}")
                    return None
                refusals.append(f"{call}: {error.code}")
                continue
            self._calls.remove(call)
            self._calls.insert(0, call)  # ask this one first from now on
            self._said = None
            return Quota.from_ses(fields)
        if refusals:
            self._off("; ".join(refusals))
        return None

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._clients.clear()
        self._calls.clear()

    async def _open(self) -> str | None:
        """Open the API clients; the reason reading is off, or None."""
        if self.config.smtp.tls == "none":
            return "a plain-text upstream (delivery.smtp.tls: none) is not SES"
        try:
            session = await aws.session(self.config)
            credentials = await session.get_credentials()
        except DeliveryError as e:
            return e.code
        except Exception as e:  # a missing profile, say: named by its class, no details
            return type(e).__name__
        if credentials is None:
            return "no AWS credentials in the standard chain"
        client_config = aws.client_config(self.config).merge(BotoConfig(
            connect_timeout=min(_CONNECT_TIMEOUT, self.config.timeout),
            read_timeout=min(_READ_TIMEOUT, self.config.timeout), max_pool_connections=1))
        for call, service in (("GetAccount", "sesv2"), ("GetSendQuota", "ses")):
            self._clients[call] = await self._stack.enter_async_context(session.client(
                service, region_name=self.config.region,
                endpoint_url=self.config.endpoint_url, config=client_config))
            self._calls.append(call)
        return None

    async def _read(self, call: str) -> dict[str, Any]:
        client = self._clients[call]
        if call == "GetAccount":
            return dict((await client.get_account()).get("SendQuota") or {})
        return dict(await client.get_send_quota())

    def _off(self, reason: str) -> None:
        if reason != self._said:
            self._said = reason
            _log.info("smtp_account_limits_unread", reason=reason,
                      max_send_rate=self.config.max_send_rate, hint=_OFF_HINT)
