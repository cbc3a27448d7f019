"""The doctor's AWS checks: credentials, account, sender identities, configuration sets.
A failed AWS call is one row, and the next check still runs."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import botocore.exceptions as bex

from relay import aws, users
from relay.doctor.report import (
    FAIL,
    OK,
    WARN,
    Context,
    Report,
    Row,
    aguarded,
    oneline,
)
from relay.errors import DeliveryError
from relay.transports.errors import classify

QUOTA_WARN_SHARE = 0.8

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
class _Clients:
    region: str
    sts: Any
    sesv2: Any
    ses: Any



# --- AWS: sessions, and one failed call → one row ----------------------------------------


async def aws_checks(ctx: Context, report: Report) -> None:
    delivery = ctx.config.delivery
    region = delivery.region or "(unset)"
    async with contextlib.AsyncExitStack() as stack:
        try:
            clients = await _open_clients(ctx, stack)
        except Exception as e:
            # Without a session the relay could not send either.
            report.add([_failure("AWS session", e, region, "create the AWS clients",
                                 blocking=True)])
            return
        for name, check in _AWS_CHECKS:
            report.add(await aguarded(name, functools.partial(check, ctx, clients)))


async def _open_clients(ctx: Context, stack: contextlib.AsyncExitStack) -> _Clients:
    delivery = ctx.config.delivery
    session = await aws.session(delivery)
    config = aws.client_config(delivery)

    async def client(service: str, endpoint_url: str | None) -> Any:
        return await stack.enter_async_context(session.client(
            service, region_name=delivery.region, endpoint_url=endpoint_url, config=config))

    # endpoint_url is SES's; STS keeps its own (botocore honours AWS_ENDPOINT_URL_STS).
    return _Clients(region=delivery.region or "(unset)",
                    sts=await client("sts", None),
                    sesv2=await client("sesv2", delivery.endpoint_url),
                    ses=await client("ses", delivery.endpoint_url))


def _failure(check: str, exc: BaseException, region: str, action: str,
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


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, bex.ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "")
    return ""


def _not_found(exc: BaseException) -> bool:
    return _error_code(exc) in ("NotFoundException", "ConfigurationSetDoesNotExist",
                                "ConfigurationSetDoesNotExistException")


def _not_implemented(exc: BaseException) -> bool:
    """An HTTP 404 that is not SES's own NotFound: the endpoint (moto) lacks the operation."""
    if not isinstance(exc, bex.ClientError) or _not_found(exc):
        return False
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0) == 404


# --- 5. credentials ----------------------------------------------------------------------


async def _check_credentials(ctx: Context, c: _Clients) -> list[Row]:
    try:
        ident = await c.sts.get_caller_identity()
    except Exception as e:
        row = _failure("AWS credentials", e, c.region, "sts:GetCallerIdentity")
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


# --- 6. account --------------------------------------------------------------------------


async def _check_account(ctx: Context, c: _Clients) -> list[Row]:
    try:
        account = await c.sesv2.get_account()
    except Exception as e:
        if _not_implemented(e):
            return await _account_v1(c)
        return [_failure("SES account", e, c.region, "sesv2:GetAccount", "ses:GetAccount")]
    return [_sending_row(account.get("SendingEnabled"), account.get("EnforcementStatus"),
                         c.region, ""),
            _production_row(account.get("ProductionAccessEnabled"), c.region),
            _quota_row(account.get("SendQuota") or {}, c.region, "")]


async def _account_v1(c: _Clients) -> list[Row]:
    """GetAccount is missing at this endpoint (moto_server): the same facts from SES v1."""
    source = " (from SES v1: GetAccount is not available at this endpoint)"
    rows = []
    try:
        enabled = await c.ses.get_account_sending_enabled()
        rows.append(_sending_row(enabled.get("Enabled"), None, c.region, source))
    except Exception as e:
        rows.append(_failure("SES sending", e, c.region, "ses:GetAccountSendingEnabled",
                             "ses:GetAccountSendingEnabled"))
    try:
        quota = await c.ses.get_send_quota()
    except Exception as e:
        return [*rows, _failure("SES quota", e, c.region, "ses:GetSendQuota",
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


# --- 7. sender identities ----------------------------------------------------------------


async def _check_identities(ctx: Context, c: _Clients) -> list[Row]:
    arn = ctx.config.delivery.from_arn or ctx.config.delivery.source_arn
    if arn:
        return [Row(OK, "sender identities", f"sent on behalf of {arn}: that account owns the "
                                             "identities; not checked here")]
    wanted = _identities_to_check(ctx)
    if not wanted:
        return [Row(WARN, "sender identities",
                    "no identities to check: no user has allowed_senders, so senders are not "
                    "restricted", fix=f"run `ses-relay send-test --from YOUR_SENDER --to "
                                      f"YOU` to check a sender is verified in region "
                                      f"{c.region}, or restrict users with "
                                      "`ses-relay user update NAME --allow-sender ...`")]
    lookup = _IdentityLookup(c)
    rows: list[Row] = []
    for done, (identity, sources) in enumerate(wanted.items(), 1):
        try:
            rows.append(await _identity_row(lookup, identity, sources))
        except Exception as e:
            row = _failure("sender identity", e, c.region,
                           f"{identity}: sesv2:GetEmailIdentity", "ses:GetEmailIdentity")
            if row.status == FAIL and done < len(wanted):
                # The network or the credentials: every other lookup would fail the same way.
                rows.append(replace(row, detail=f"{row.detail} ({len(wanted) - done} more "
                                                "identities not checked)"))
                break
            rows.append(row)
    return rows + _dkim_rows(lookup)


def _identities_to_check(ctx: Context) -> dict[str, list[str]]:
    """Each exact address or @domain that must be sendable, with where it comes from."""
    wanted: dict[str, list[str]] = {}
    db = ctx.db or users.UserDB({})
    for name in db:
        user = db.get(name)
        for pattern in user.allowed_senders if user else ():
            wanted.setdefault(pattern, []).append(f"user {name}")
    extra: tuple[tuple[str | None, str], ...] = (
        (ctx.config.policy.null_sender_rewrite, "policy.null_sender_rewrite"),
        (ctx.config.delivery.bounce_from, "delivery.bounce_from"))
    for address, source in extra:
        if address:
            wanted.setdefault(address, []).append(source)
    return wanted


class _IdentityLookup:
    """GetEmailIdentity with a cache: many addresses share one domain."""

    def __init__(self, c: _Clients) -> None:
        self.c = c
        self.found: dict[str, dict[str, Any] | None] = {}
        self.domains_used: list[str] = []

    async def get(self, identity: str) -> dict[str, Any] | None:
        if identity not in self.found:
            try:
                self.found[identity] = dict(await self.c.sesv2.get_email_identity(
                    EmailIdentity=identity))
            except Exception as e:
                if not _not_found(e):
                    raise
                self.found[identity] = None
        return self.found[identity]


def _verified(identity: dict[str, Any] | None) -> bool:
    # VerifiedForSendingStatus is the field SES documents for "may send"; a verified
    # identity also has VerificationStatus SUCCESS. moto_server reports the first as false
    # for every identity and only gets the second right, so either one counts.
    if identity is None:
        return False
    return bool(identity.get("VerifiedForSendingStatus")) \
        or identity.get("VerificationStatus") == "SUCCESS"


async def _identity_row(lookup: _IdentityLookup, identity: str, sources: list[str]) -> Row:
    local, _, domain = identity.rpartition("@")
    used_by = f" (used by {', '.join(sources)})"
    address = await lookup.get(identity) if local else None
    if _verified(address):
        return Row(OK, "sender identity", f"{identity}: verified address{used_by}")
    if _verified(await lookup.get(domain)):
        lookup.domains_used.append(domain)
        how = "verified domain" if not local else f"verified through the domain {domain}"
        return Row(OK, "sender identity", f"{identity}: {how}{used_by}")
    region = lookup.c.region
    state = f"address {address.get('VerificationStatus', 'not verified')}, " if address else ""
    target = f"{identity} or the domain {domain}" if local else f"the domain {domain}"
    which = (f"neither the address nor {domain} is a verified identity" if local
             else f"{domain} is not a verified identity")
    return Row(FAIL, "sender identity",
               f"{identity}: not verified in region {region} ({state}{which}){used_by}",
               fix=f"verify {target} in SES in region {region} (console → Identities, or "
                   f"`aws sesv2 create-email-identity --email-identity {domain} --region "
                   f"{region}`); identities are per region")


def _dkim_rows(lookup: _IdentityLookup) -> list[Row]:
    rows = []
    for domain in dict.fromkeys(lookup.domains_used):
        dkim = (lookup.found.get(domain) or {}).get("DkimAttributes") or {}
        status = dkim.get("Status", "NOT_STARTED")
        if status == "SUCCESS" and dkim.get("SigningEnabled", True):
            rows.append(Row(OK, "DKIM", f"{domain}: DKIM signing enabled ({status})"))
        else:
            rows.append(Row(WARN, "DKIM", f"{domain}: DKIM {status}, signing "
                                          f"{'on' if dkim.get('SigningEnabled') else 'off'}",
                            fix=f"set up Easy DKIM for {domain} in region {lookup.c.region} "
                                "(publish its three CNAME records): without it receivers' "
                                "DMARC checks can fail"))
    return rows


# --- 8. configuration sets ---------------------------------------------------------------

_FEEDBACK_EVENTS = frozenset({"BOUNCE", "COMPLAINT"})


async def _check_configuration_sets(ctx: Context, c: _Clients) -> list[Row]:
    rows: list[Row] = []
    for name, sources in _configuration_sets(ctx).items():
        rows += await _configuration_set_rows(c, name, sources)
    return rows


def _configuration_sets(ctx: Context) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    if ctx.config.policy.configuration_set:
        sets.setdefault(ctx.config.policy.configuration_set, []).append(
            "policy.configuration_set")
    db = ctx.db or users.UserDB({})
    for name in db:
        user = db.get(name)
        if user and user.configuration_set:
            sets.setdefault(user.configuration_set, []).append(f"user {name}")
    return sets


async def _configuration_set_rows(c: _Clients, name: str, sources: list[str]) -> list[Row]:
    used_by = f" (used by {', '.join(sources)})"
    try:
        await c.sesv2.get_configuration_set(ConfigurationSetName=name)
    except Exception as e:
        if _not_found(e):
            return [Row(FAIL, "configuration set", f"{name}: does not exist in region "
                                                   f"{c.region}{used_by}",
                        fix=f"create it (`aws sesv2 create-configuration-set "
                            f"--configuration-set-name {name} --region {c.region}`) or fix "
                            "the name: SES refuses mail that names a missing set")]
        return [_failure("configuration set", e, c.region, f"{name}: sesv2:GetConfigurationSet",
                         "ses:GetConfigurationSet")]
    rows = [Row(OK, "configuration set", f"{name}: exists in region {c.region}{used_by}")]
    try:
        destinations, source = await _event_destinations(c, name)
    except Exception as e:
        return [*rows, _failure("event destinations", e, c.region,
                                f"{name}: GetConfigurationSetEventDestinations",
                                "ses:GetConfigurationSetEventDestinations")]
    return [*rows, _destinations_row(name, destinations, source, c.region)]


async def _event_destinations(c: _Clients, name: str) -> tuple[list[dict[str, Any]], str]:
    try:
        answer = await c.sesv2.get_configuration_set_event_destinations(
            ConfigurationSetName=name)
    except Exception as e:
        if not _not_implemented(e):
            raise
        # moto_server lacks the v2 call; v1's DescribeConfigurationSet has the same list.
        answer = await c.ses.describe_configuration_set(
            ConfigurationSetName=name, ConfigurationSetAttributeNames=["eventDestinations"])
        return list(answer.get("EventDestinations") or []), " (from SES v1)"
    return list(answer.get("EventDestinations") or []), ""


def _destinations_row(name: str, destinations: list[dict[str, Any]], source: str,
                      region: str) -> Row:
    # Bounces and complaints may go to separate destinations (one SNS topic each), so
    # what counts is what the enabled destinations cover together.
    covered = {str(t).upper() for d in destinations if d and d.get("Enabled")
               for t in d.get("MatchingEventTypes") or ()}
    enabled = sum(1 for d in destinations if d and d.get("Enabled"))
    missing = sorted(_FEEDBACK_EVENTS - covered)
    if missing:
        return Row(WARN, "event destinations",
                   f"{name}: {enabled} enabled destination(s), none for "
                   f"{' and '.join(missing)}: those events are not reported to you{source}",
                   fix=f"add an event destination (SNS, EventBridge...) for BOUNCE and "
                       f"COMPLAINT to {name} in region {region}: repeated bounces and "
                       "complaints get the account paused")
    return Row(OK, "event destinations",
               f"{name}: bounces and complaints are published ({enabled} enabled "
               f"destination(s)){source}")


_AWS_CHECKS: tuple[tuple[str, Callable[[Context, _Clients], Awaitable[list[Row]]]], ...] = (
    ("AWS credentials", _check_credentials),
    ("SES account", _check_account),
    ("sender identities", _check_identities),
    ("configuration sets", _check_configuration_sets),
)

