"""The doctor's account checks, per region: sending enabled, production access, quota."""

from __future__ import annotations

from typing import Any

from relay.doctor.awscalls import Clients, failure, not_implemented
from relay.doctor.report import FAIL, OK, WARN, Context, Row

QUOTA_WARN_SHARE = 0.8


async def check_account(ctx: Context, c: Clients) -> list[Row]:
    try:
        account = await c.sesv2.get_account()
    except Exception as e:
        if not_implemented(e):
            return await _account_v1(c)
        return [failure("SES account", e, c.region, "sesv2:GetAccount", "ses:GetAccount")]
    return [_sending_row(account.get("SendingEnabled"), account.get("EnforcementStatus"),
                         c.region, ""),
            _production_row(account.get("ProductionAccessEnabled"), c.region),
            _quota_row(account.get("SendQuota") or {}, c.region, "")]


async def _account_v1(c: Clients) -> list[Row]:
    """GetAccount is missing at this endpoint (moto_server): the same facts from SES v1."""
    source = " (from SES v1: GetAccount is not available at this endpoint)"
    rows = []
    try:
        enabled = await c.ses.get_account_sending_enabled()
        rows.append(_sending_row(enabled.get("Enabled"), None, c.region, source))
    except Exception as e:
        rows.append(failure("SES sending", e, c.region, "ses:GetAccountSendingEnabled",
                             "ses:GetAccountSendingEnabled"))
    try:
        quota = await c.ses.get_send_quota()
    except Exception as e:
        return [*rows, failure("SES quota", e, c.region, "ses:GetSendQuota",
                                "ses:GetSendQuota")]
    return [*rows, _sandbox_guess_row(quota, c.region, source), _quota_row(quota, c.region,
                                                                             source)]


def _sending_row(enabled: object, enforcement: object, region: str, source: str) -> Row:
    status = f", enforcement status {enforcement}" if enforcement else ""
    review = "open the SES console's reputation dashboard (account dashboard) in region " \
             f"{region}: AWS pauses accounts for high bounce or complaint rates"
    if enabled is False:
        return Row(FAIL, "SES sending", f"sending is disabled in region {region}{status}"
                                        f"{source}", fix=review)
    if enforcement not in (None, "HEALTHY"):
        return Row(WARN, "SES sending", f"enabled{status}: the account is under review"
                                        f"{source}", fix=review)
    return Row(OK, "SES sending", f"enabled in region {region}{status}{source}")


def _production_row(production: object, region: str) -> Row:
    if production is False:
        return Row(WARN, "SES production access",
                   "sandbox: only verified recipients, 200/day, 1/s",
                   fix=f"request production access for region {region} (SES console → "
                       "Account dashboard → Request production access)")
    return Row(OK, "SES production access", f"production access in region {region}")


def _sandbox_guess_row(quota: dict[str, Any], region: str, source: str) -> Row:
    # SES v1 does not report sandbox status; the sandbox's fixed quota gives it away.
    if float(quota.get("Max24HourSend", 0)) == 200 and float(quota.get("MaxSendRate", 0)) == 1:
        return Row(WARN, "SES production access",
                   f"probably the sandbox (quota 200/day, 1/s): only verified recipients"
                   f"{source}",
                   fix=f"request production access for region {region} (SES console → "
                       "Account dashboard → Request production access)")
    return Row(OK, "SES production access", f"the quota is above the sandbox's{source}")


def _quota_row(quota: dict[str, Any], region: str, source: str) -> Row:
    limit = float(quota.get("Max24HourSend", 0))
    sent = float(quota.get("SentLast24Hours", 0))
    rate = float(quota.get("MaxSendRate", 0))
    if limit <= 0:  # -1: unlimited
        return Row(OK, "SES quota", f"no 24-hour limit, {rate:g}/s{source}")
    detail = f"{sent:g} of {limit:g} sent in the last 24 h ({sent / limit:.0%}), " \
             f"{rate:g}/s{source}"
    if sent > QUOTA_WARN_SHARE * limit:
        return Row(WARN, "SES quota", detail,
                   fix="mail over the quota waits in the queue until SES's window frees up: "
                       f"ask AWS for a higher sending quota in region {region}")
    return Row(OK, "SES quota", detail)
