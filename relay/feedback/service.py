"""Feedback, running: SNS webhook and/or SQS poller in, suppression and history out.

Every SES event is stored against its MessageId (so ``ses-relay trace`` can tell a
message's whole story), applied to the suppression list (permanent bounces, complaints,
repeated transient bounces), and fed to the reputation guard.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from relay import log
from relay.config import DeliveryConfig, FeedbackConfig
from relay.eventstore import EventStore, EventStoreError
from relay.feedback import sns
from relay.feedback.notifications import Event
from relay.feedback.processor import FeedbackProcessor
from relay.feedback.sqs import SQSPoller
from relay.reputation import ReputationGuard
from relay.suppression import SuppressionList
from relay.web.server import WebServer

_log = log.get("feedback")


class FeedbackService:
    def __init__(self, config: FeedbackConfig, store: EventStore,
                 suppression: SuppressionList, guard: ReputationGuard, *,
                 region: str | None,
                 share: Callable[[list[tuple[str, str]]], Awaitable[None]] | None = None,
                 identity: DeliveryConfig | None = None, state: Path | None = None) -> None:
        self.config = config
        self._share = share
        self._suppression = suppression
        self._store = store
        self._guard = guard
        self._processor = FeedbackProcessor(
            suppression, transient_bounce_limit=config.transient_bounce_limit,
            transient_window=config.transient_window,
            counts_path=_counts_path(config, state))
        self._verifier = sns.Verifier(config.topic_arns)
        self._region = region
        self._identity = identity  # the AWS credentials (delivery.profile / role_arn)
        self._poller: SQSPoller | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def add_routes(self, server: WebServer, path: str) -> None:
        """The SNS webhook at *path* (``feedback.http.path``) on *server*, which should
        take bodies of sns.MAX_POST_BYTES."""
        server.add_route("POST", path, self._post)

    async def start(self) -> None:
        c = self.config
        if c.sqs_queue_url:
            self._poller = SQSPoller(c.sqs_queue_url, self.handle, region=self._region,
                                     endpoint_url=c.sqs_endpoint_url,
                                     identity=self._identity)
            self._tasks.append(asyncio.create_task(self._poller.run(), name="sqs"))
        await self._check_reputation()
        if c.reputation_source != "own":  # read in the background: never delays a start
            self._tasks.append(asyncio.create_task(self._watch_reputation(),
                                                   name="reputation"))

    async def _watch_reputation(self) -> None:
        """SES's rates change with no event reaching this relay (the fleet's mail):
        read them every reputation_interval."""
        while True:
            try:
                await self._guard.refresh()
                await asyncio.to_thread(self._guard.check)
            except Exception as e:  # the event store's trouble: the next round may do
                _log.warning("reputation_check_failed", error=f"{type(e).__name__}: {e}")
            await asyncio.sleep(self.config.reputation_interval)

    async def stop(self) -> None:
        for task in self._tasks:
            if task.get_name() == "reputation":
                task.cancel()
        if self._poller is not None:
            self._poller.stop()
        for task in self._tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        self._processor.close()

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()  # 413 past the server's max_body
        status = await sns.handle_post(body, self._verifier,
                                       confirm=self._verifier.confirm_subscription,
                                       on_notification=self.handle)
        return web.Response(status=status)

    async def handle(self, event: Event) -> None:
        """One SES event: remember it, act on it, re-check the account's reputation."""
        # Stored once however often it comes (an SNS retry, an SQS redelivery, the same
        # event by both). Its consequences are drawn again all the same: they are
        # idempotent (suppression by address, transient bounces counted by feedback id),
        # and a delivery that failed half-way is completed by the next one.
        new = await asyncio.to_thread(self._store.event, event)
        actions = await asyncio.to_thread(self._processor.process, event)
        _log.info("feedback" if new else "feedback_duplicate", kind=str(event.kind),
                  ses_message_id=event.ses_message_id, recipients=list(event.recipients),
                  actions=actions)
        if self._share is not None:
            found = [await self._suppression.check(r) for r in event.recipients]
            shared = [(e.address, e.reason) for e in found
                      if e is not None and e.source.startswith("ses:")]
            if shared:
                await self._share(shared)
        await self._check_reputation()

    async def _check_reputation(self) -> None:
        try:
            await asyncio.to_thread(self._guard.check)
        except EventStoreError as e:  # a shared store that is down: checked at the next one
            _log.warning("reputation_check_failed", error=str(e))


def _counts_path(config: FeedbackConfig, state: Path | None) -> Path:
    """Transient bounce counts: beside a SQLite event store, else in the state folder."""
    if isinstance(config.database, Path):
        return config.database.with_name("transient-bounces.sqlite3")
    return (state or Path("/var/lib/ses-relay")) / "transient-bounces.sqlite3"
