"""Feedback, running: SNS webhook and/or SQS poller in, suppression and history out.

Every SES event is stored against its MessageId (so ``ses-relay trace`` can tell a
message's whole story), applied to the suppression list (permanent bounces, complaints,
repeated transient bounces), and fed to the reputation guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

from relay import httpd, log
from relay.config import FeedbackConfig
from relay.events import EventStore
from relay.feedback import sns
from relay.feedback.notifications import Event
from relay.feedback.processor import FeedbackProcessor
from relay.feedback.sqs import SQSPoller
from relay.reputation import ReputationGuard
from relay.suppression import SuppressionList

_log = log.get("feedback")


class FeedbackService:
    def __init__(self, config: FeedbackConfig, store: EventStore,
                 suppression: SuppressionList, guard: ReputationGuard, *,
                 region: str | None,
                 share: Callable[[list[tuple[str, str]]], Awaitable[None]] | None = None
                 ) -> None:
        self.config = config
        self._share = share
        self._suppression = suppression
        self._store = store
        self._guard = guard
        self._processor = FeedbackProcessor(
            suppression, transient_bounce_limit=config.transient_bounce_limit,
            transient_window=config.transient_window,
            counts_path=config.database.with_name("transient-bounces.sqlite3"))
        self._verifier = sns.Verifier(config.topic_arns)
        self._region = region
        self._http: httpd.Server | None = None
        self._poller: SQSPoller | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.http_port: int | None = None

    async def start(self) -> None:
        c = self.config
        if c.http is not None:
            tls = None
            if c.http.cert and c.http.key:
                tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                tls.minimum_version = ssl.TLSVersion.TLSv1_2
                tls.load_cert_chain(str(c.http.cert), str(c.http.key))
            self._http = httpd.Server(self._route, max_body=256 * 1024)
            self.http_port = await self._http.start(c.http.address, c.http.port, tls)
        if c.sqs_queue_url:
            self._poller = SQSPoller(c.sqs_queue_url, self.handle, region=self._region,
                                     endpoint_url=c.sqs_endpoint_url)
            self._tasks.append(asyncio.create_task(self._poller.run(), name="sqs"))
        await asyncio.to_thread(self._guard.check)

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
        if self._poller is not None:
            self._poller.stop()
        for task in self._tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        self._processor.close()

    async def _route(self, request: httpd.Request) -> httpd.Response:
        assert self.config.http is not None
        if request.path != self.config.http.path:
            return httpd.Response(404, b"not found\n")
        if request.method != "POST":
            return httpd.Response(405, b"POST only\n")
        status = await sns.handle_post(request.body, self._verifier,
                                       confirm=sns.confirm_subscription,
                                       on_notification=self.handle)
        return httpd.Response(status, b"")

    async def handle(self, event: Event) -> None:
        """One SES event: remember it, act on it, re-check the account's reputation."""
        await asyncio.to_thread(self._store.event, event)
        actions = await asyncio.to_thread(self._processor.process, event)
        _log.info("feedback", kind=str(event.kind), ses_message_id=event.ses_message_id,
                  recipients=list(event.recipients), actions=actions)
        if self._share is not None:
            found = [await self._suppression.check(r) for r in event.recipients]
            shared = [(e.address, e.reason) for e in found
                      if e is not None and e.source.startswith("ses:")]
            if shared:
                await self._share(shared)
        await asyncio.to_thread(self._guard.check)
