"""The doctor's sender identity checks, per region: every address or domain users may
send from (and the relay's own senders) verified in SES, and DKIM on the domains used."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from relay import users
from relay.doctor.awscalls import Clients, failure, not_found
from relay.doctor.report import FAIL, OK, WARN, Context, Row


async def check_identities(ctx: Context, c: Clients) -> list[Row]:
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
            row = failure("sender identity", e, c.region,
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

    def __init__(self, c: Clients) -> None:
        self.c = c
        self.found: dict[str, dict[str, Any] | None] = {}
        self.domains_used: list[str] = []

    async def get(self, identity: str) -> dict[str, Any] | None:
        if identity not in self.found:
            try:
                self.found[identity] = dict(await self.c.sesv2.get_email_identity(
                    EmailIdentity=identity))
            except Exception as e:
                if not not_found(e):
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
