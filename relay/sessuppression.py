"""SES's account-level suppression list, kept in step with the local one.

``ses-relay suppress sync --from-ses`` pages through ListSuppressedDestinations into the
local list; ``--to-ses`` puts local address entries into SES's list. With
``suppression.backend: ses`` the relay does both on its own: SES's list is the source of
truth shared by several relays, the local SQLite list is its cache for RCPT-time checks
(pulled every ``suppression.sync_interval``), and what a relay learns from feedback it
pushes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Callable, Iterable
from typing import Any

from relay import aws, log
from relay.config import DeliveryConfig
from relay.suppression import Entry, SuppressionList
from relay.transports.errors import classify

_log = log.get("suppression")
_REASONS = {"BOUNCE": "bounce", "COMPLAINT": "complaint"}


class SESSuppression:
    def __init__(self, config: DeliveryConfig) -> None:
        self.config = config
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def __aenter__(self) -> SESSuppression:
        session = await aws.session(self.config)
        self._client = await self._stack.enter_async_context(session.client(
            "sesv2", region_name=self.config.region, endpoint_url=self.config.endpoint_url,
            config=aws.client_config(self.config)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def pull(self, db: SuppressionList, *, since: datetime.datetime | None = None,
                   progress: Callable[[int], object] | None = None) -> int:
        """Copy SES's entries into *db*; return how many were new there."""
        added = 0
        params: dict[str, Any] = {"PageSize": 1000}
        if since is not None:
            params["StartDate"] = since
        while True:
            try:
                page = await self._client.list_suppressed_destinations(**params)
            except Exception as e:
                raise classify(e, region=self.config.region) from e
            entries = [self._entry(s) for s in page.get("SuppressedDestinationSummaries", [])]
            added += await asyncio.to_thread(db.import_entries, [e for e in entries if e])
            if progress:
                progress(len(entries))
            token = page.get("NextToken")
            if not token:
                return added
            params["NextToken"] = token

    @staticmethod
    def _entry(summary: dict[str, Any]) -> Entry | None:
        address = str(summary.get("EmailAddress", "")).lower()
        if "@" not in address:
            return None
        when = summary.get("LastUpdateTime")
        at = when.timestamp() if isinstance(when, datetime.datetime) else 0.0
        return Entry(address, _REASONS.get(str(summary.get("Reason")), "bounce"),
                     "ses-account", at)

    async def push(self, addresses: Iterable[tuple[str, str]],
                   progress: Callable[[int], object] | None = None) -> int:
        """Put (address, reason) pairs into SES's list; @domain entries have no SES form."""
        pushed = 0
        for address, reason in addresses:
            if address.startswith("@"):
                continue
            try:
                await self._client.put_suppressed_destination(
                    EmailAddress=address,
                    Reason="COMPLAINT" if reason == "complaint" else "BOUNCE")
            except Exception as e:
                raise classify(e, region=self.config.region) from e
            pushed += 1
            if progress:
                progress(1)
        return pushed


async def keep_in_step(config: DeliveryConfig, db: SuppressionList, interval: float) -> None:
    """backend: ses. Pull SES's list now and then every *interval*, incrementally."""
    since: datetime.datetime | None = None
    while True:
        started = datetime.datetime.now(datetime.UTC)
        try:
            async with SESSuppression(config) as ses:
                added = await ses.pull(db, since=since)
            _log.info("suppression_synced", added=added, incremental=since is not None)
            since = started - datetime.timedelta(minutes=5)  # overlap: clocks and pages
        except Exception as e:  # keep the cache we have; try again next time
            _log.warning("suppression_sync_failed", error=str(e),
                         hint=getattr(e, "hint", "") or "check ses:ListSuppressedDestinations")
        await asyncio.sleep(interval)
