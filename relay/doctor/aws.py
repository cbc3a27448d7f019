"""The doctor's AWS checks: credentials, then in every region delivery may use (the primary
``delivery.region`` and each ``delivery.failover`` one) the account, the sender identities
and the configuration sets, since SES keeps all three per region. A failed AWS call is one
row, and the next check still runs.

By concern: ``awscalls`` (one region's clients, a failed call as a row), ``account``,
``identities``, ``configsets``; this module opens the sessions and runs them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from relay import aws
from relay.config import DeliveryConfig
from relay.doctor.account import QUOTA_WARN_SHARE, check_account
from relay.doctor.awscalls import Clients, failure
from relay.doctor.configsets import check_configuration_sets
from relay.doctor.identities import check_identities
from relay.doctor.report import FAIL, OK, WARN, Context, Report, Row, aguarded

__all__ = ["QUOTA_WARN_SHARE", "aws_checks"]

Check = Callable[[Context, Clients], Awaitable[list[Row]]]


async def aws_checks(ctx: Context, report: Report) -> None:
    delivery = ctx.config.delivery
    regions = [delivery, *(replace(delivery, region=f.region, endpoint_url=f.endpoint_url)
                           for f in delivery.failover)]
    async with contextlib.AsyncExitStack() as stack:
        for i, where in enumerate(regions):
            region = where.region or "(unset)"
            try:
                clients = await _open_clients(where, stack)
            except Exception as e:
                # Without a session the relay could not send either.
                report.add([_named(failure("AWS session", e, region,
                                           "create the AWS clients", blocking=True),
                                   region, delivery)])
                return
            # The credentials are the same in every region: checked once.
            for name, check in _AWS_CHECKS if i == 0 else _AWS_CHECKS[1:]:
                rows = await aguarded(name, functools.partial(check, ctx, clients))
                report.add([_named(row, region, delivery) for row in rows])


def _named(row: Row, region: str, delivery: DeliveryConfig) -> Row:
    """With failover regions, each row says which region it is about."""
    return replace(row, check=f"{row.check} [{region}]") if delivery.failover else row


async def _open_clients(delivery: DeliveryConfig, stack: contextlib.AsyncExitStack) -> Clients:
    session = await aws.session(delivery)
    config = aws.client_config(delivery)

    async def client(service: str, endpoint_url: str | None) -> Any:
        return await stack.enter_async_context(session.client(
            service, region_name=delivery.region, endpoint_url=endpoint_url, config=config))

    # endpoint_url is SES's; STS keeps its own (botocore honours AWS_ENDPOINT_URL_STS).
    return Clients(region=delivery.region or "(unset)",
                   sts=await client("sts", None),
                   sesv2=await client("sesv2", delivery.endpoint_url),
                   ses=await client("ses", delivery.endpoint_url))


async def _check_credentials(ctx: Context, c: Clients) -> list[Row]:
    try:
        ident = await c.sts.get_caller_identity()
    except Exception as e:
        row = failure("AWS credentials", e, c.region, "sts:GetCallerIdentity")
        if row.detail.startswith("sts:GetCallerIdentity: ConnectionError"):
            # classify speaks of SES; this call goes to STS, whose endpoint is separate.
            row = replace(row, fix=f"cannot reach AWS STS (sts.{c.region}.amazonaws.com): "
                                   "check network, DNS, proxy, and AWS_ENDPOINT_URL_STS if set")
        return [_smtp_credentials_suffice(ctx, row)]
    return [Row(OK, "AWS credentials", f"account {ident.get('Account')}, {ident.get('Arn')}")]


def _smtp_credentials_suffice(ctx: Context, row: Row) -> Row:
    # With explicit SMTP credentials the smtp transport needs no IAM identity to send;
    # only the doctor's own read calls below do.
    if row.status == FAIL and ctx.config.delivery.transport == "smtp" \
            and ctx.config.delivery.smtp.username:
        return Row(WARN, row.check, row.detail,
                   fix=f"{row.fix} (the smtp transport sends with delivery.smtp credentials; "
                       "IAM credentials are needed only for the checks below)")
    return row


_AWS_CHECKS: tuple[tuple[str, Check], ...] = (
    ("AWS credentials", _check_credentials),
    ("SES account", check_account),
    ("sender identities", check_identities),
    ("configuration sets", check_configuration_sets),
)
