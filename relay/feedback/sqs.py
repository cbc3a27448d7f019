"""Long-polling of an SQS queue of SES notifications (SES -> SNS -> SQS, or raw delivery).

Delivery is at least once: a message is deleted only after the handler returned, so a
handler failure (or a crash) leaves it to SQS to deliver again after the visibility
timeout, and handlers must be idempotent (suppression entries are). A body that does not
parse never will, so it is logged and deleted instead of coming back forever. SQS access
is authenticated by IAM, so SNS signatures are not checked on this path.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from botocore.config import Config as BotoConfig

from relay import aws, log
from relay.config import DeliveryConfig
from relay.errors import DeliveryError
from relay.feedback.notifications import Event, NotificationError, parse_body

_log = log.get("feedback")

Handler = Callable[[Event], Awaitable[None]]


class SQSPoller:
    """Receives from *queue_url* and passes each event to *handler* until ``stop()``.

    *wait_time* is the long-poll WaitTimeSeconds (0-20); *error_backoff* the pause after a
    failed ReceiveMessage, so an unreachable endpoint is not hammered. *identity* says
    which AWS credentials to use (``delivery.profile`` / ``role_arn``, read through
    relay.aws as every other AWS call is); the default is the standard chain.
    """

    def __init__(self, queue_url: str, handler: Handler, *, region: str | None = None,
                 endpoint_url: str | None = None, wait_time: int = 20,
                 max_messages: int = 10, error_backoff: float = 5.0,
                 identity: DeliveryConfig | None = None) -> None:
        self.queue_url = queue_url
        self.wait_time = wait_time
        self.max_messages = max_messages
        self.error_backoff = error_backoff
        self._handler = handler
        self._region = region
        self._endpoint_url = endpoint_url
        self._identity = identity or DeliveryConfig()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """End ``run()`` promptly, abandoning a long poll in progress. Call it from the
        loop's own thread (``loop.call_soon_threadsafe(poller.stop)`` from elsewhere)."""
        self._stop.set()

    async def run(self) -> None:
        session = await self._session()
        if session is None:
            return
        # The read timeout must outlast the long poll, or every empty poll is an error.
        config = BotoConfig(read_timeout=self.wait_time + 10,
                            retries={"mode": "standard", "total_max_attempts": 3})
        async with session.client("sqs", region_name=self._region,
                                  endpoint_url=self._endpoint_url, config=config) as client:
            _log.info("feedback_poller_started", queue=self.queue_url)
            while not self._stop.is_set():
                for message in await self._receive(client):
                    if self._stop.is_set():
                        break  # the rest come back after their visibility timeout
                    await self._handle(client, message)
            _log.info("feedback_poller_stopped", queue=self.queue_url)

    async def _session(self) -> Any:
        """The AWS session, or None once stopped: credentials that cannot be had yet (a
        role with no base credentials) are asked again after each backoff, not fatal."""
        while not self._stop.is_set():
            try:
                return await aws.session(self._identity)
            except DeliveryError as e:
                _log.warning("feedback_receive_failed", queue=self.queue_url,
                             error=f"{e.code}: {e}", hint=e.hint)
                await self._pause()
        return None

    async def _receive(self, client: Any) -> list[dict[str, Any]]:
        call = asyncio.ensure_future(client.receive_message(
            QueueUrl=self.queue_url, WaitTimeSeconds=self.wait_time,
            MaxNumberOfMessages=self.max_messages))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({call, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Whatever ended the wait (stop, cancellation), leave no task behind.
            call.cancel()
            stopping.cancel()
            await asyncio.gather(call, stopping, return_exceptions=True)
        if call.cancelled():
            return []
        if (error := call.exception()) is not None:
            _log.warning("feedback_receive_failed", queue=self.queue_url,
                         error=f"{type(error).__name__}: {error}")
            await self._pause()
            return []
        return list(call.result().get("Messages", []))

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.error_backoff)

    async def _handle(self, client: Any, message: dict[str, Any]) -> None:
        sqs_id = message.get("MessageId")
        try:
            event = parse_body(message.get("Body", ""))
        except NotificationError as e:
            _log.warning("feedback_unparseable", sqs_message_id=sqs_id, reason=e.reason)
            await self._delete(client, message)
            return
        try:
            await self._handler(event)
        except Exception as e:  # left in the queue: SQS delivers it again later
            _log.error("feedback_handler_failed", sqs_message_id=sqs_id,
                       ses_message_id=event.ses_message_id,
                       error=f"{type(e).__name__}: {e}")
            return
        await self._delete(client, message)

    async def _delete(self, client: Any, message: dict[str, Any]) -> None:
        try:
            await client.delete_message(QueueUrl=self.queue_url,
                                        ReceiptHandle=message["ReceiptHandle"])
        except Exception as e:  # redelivered later; handling is idempotent
            _log.warning("feedback_delete_failed", sqs_message_id=message.get("MessageId"),
                         error=f"{type(e).__name__}: {e}")
