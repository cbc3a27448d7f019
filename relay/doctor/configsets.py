"""The doctor's configuration set checks, per region: each set named exists, and its
event destinations publish bounces and complaints."""

from __future__ import annotations

from typing import Any

from relay import users
from relay.doctor.awscalls import Clients, failure, not_found, not_implemented
from relay.doctor.report import FAIL, OK, WARN, Context, Row

_FEEDBACK_EVENTS = frozenset({"BOUNCE", "COMPLAINT"})


async def check_configuration_sets(ctx: Context, c: Clients) -> list[Row]:
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


async def _configuration_set_rows(c: Clients, name: str, sources: list[str]) -> list[Row]:
    used_by = f" (used by {', '.join(sources)})"
    try:
        await c.sesv2.get_configuration_set(ConfigurationSetName=name)
    except Exception as e:
        if not_found(e):
            return [Row(FAIL, "configuration set", f"{name}: does not exist in region "
                                                   f"{c.region}{used_by}",
                        fix=f"create it (`aws sesv2 create-configuration-set "
                            f"--configuration-set-name {name} --region {c.region}`) or fix "
                            "the name: SES refuses mail that names a missing set")]
        return [failure("configuration set", e, c.region, f"{name}: sesv2:GetConfigurationSet",
                         "ses:GetConfigurationSet")]
    rows = [Row(OK, "configuration set", f"{name}: exists in region {c.region}{used_by}")]
    try:
        destinations, source = await _event_destinations(c, name)
    except Exception as e:
        return [*rows, failure("event destinations", e, c.region,
                                f"{name}: GetConfigurationSetEventDestinations",
                                "ses:GetConfigurationSetEventDestinations")]
    return [*rows, _destinations_row(name, destinations, source, c.region)]


async def _event_destinations(c: Clients, name: str) -> tuple[list[dict[str, Any]], str]:
    try:
        answer = await c.sesv2.get_configuration_set_event_destinations(
            ConfigurationSetName=name)
    except Exception as e:
        if not not_implemented(e):
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
