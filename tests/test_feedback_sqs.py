"""The SQS long-poll loop against a real moto_server queue."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import boto3
from conftest import Moto, events

from relay.feedback.notifications import Event, Kind
from relay.feedback.sqs import SQSPoller

FIXTURES = Path(__file__).parent / "feedback"
REGION = "us-east-1"


def sqs(moto: Moto) -> Any:
    return boto3.client("sqs", region_name=REGION, endpoint_url=moto.url)


def make_queue(moto: Moto) -> str:
    # A short visibility timeout, so a message left behind comes back within the test.
    return str(sqs(moto).create_queue(QueueName=f"feedback-{uuid.uuid4().hex[:12]}",
                                      Attributes={"VisibilityTimeout": "1"})["QueueUrl"])


def sns_wrapped(ses_json: str) -> str:
    return json.dumps({
        "Type": "Notification", "MessageId": str(uuid.uuid4()),
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-feedback", "Message": ses_json,
        "Timestamp": "2026-11-22T10:00:06.000Z", "SignatureVersion": "1", "Signature": "x",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem"})


def queue_size(moto: Moto, url: str) -> int:
    attrs = sqs(moto).get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + \
        int(attrs["ApproximateNumberOfMessagesNotVisible"])


async def run_until(poller: SQSPoller, done: Callable[[], bool], timeout: float = 15) -> None:
    """Run *poller* until *done()*, then stop it; fail if either takes too long."""
    task = asyncio.create_task(poller.run())
    try:
        deadline = time.monotonic() + timeout
        while not done():
            assert not task.done(), "the poller ended by itself"
            assert time.monotonic() < deadline, "timed out waiting for the poller"
            await asyncio.sleep(0.02)
    finally:
        poller.stop()
        await asyncio.wait_for(task, 5)


def recorder() -> tuple[list[Event], Callable[[Event], Awaitable[None]]]:
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    return seen, handler


def test_raw_and_sns_wrapped_events_are_handled_and_every_message_deleted(
        moto_server: Moto, logs: list[dict[str, Any]]) -> None:
    url = make_queue(moto_server)
    client = sqs(moto_server)
    client.send_message(QueueUrl=url, MessageBody=(FIXTURES / "complaint.json").read_text())
    client.send_message(QueueUrl=url, MessageBody=sns_wrapped(
        (FIXTURES / "bounce-permanent.json").read_text()))
    client.send_message(QueueUrl=url, MessageBody="this will never parse")
    seen, handler = recorder()
    poller = SQSPoller(url, handler, region=REGION, endpoint_url=moto_server.url, wait_time=1)

    asyncio.run(run_until(poller, lambda: len(seen) == 2
                          and bool(events(logs, "feedback_unparseable"))))

    assert sorted(e.kind for e in seen) == [Kind.BOUNCE, Kind.COMPLAINT]
    assert events(logs, "feedback_unparseable")[0]["reason"] == "body is not JSON"
    deadline = time.monotonic() + 10
    while queue_size(moto_server, url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert queue_size(moto_server, url) == 0


def test_a_failing_handler_leaves_the_message_for_redelivery(
        moto_server: Moto, logs: list[dict[str, Any]]) -> None:
    url = make_queue(moto_server)
    body = (FIXTURES / "bounce-transient.json").read_text()
    sqs(moto_server).send_message(QueueUrl=url, MessageBody=body)
    calls: list[Event] = []

    async def failing(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("database is locked")

    poller = SQSPoller(url, failing, region=REGION, endpoint_url=moto_server.url, wait_time=1)
    asyncio.run(run_until(poller, lambda: len(calls) >= 1))

    assert events(logs, "feedback_handler_failed")[0]["error"] == \
        "RuntimeError: database is locked"
    again = sqs(moto_server).receive_message(QueueUrl=url, WaitTimeSeconds=5)
    assert [m["Body"] for m in again.get("Messages", [])] == [body]


def test_stop_ends_a_long_poll_promptly(moto_server: Moto) -> None:
    url = make_queue(moto_server)
    _, handler = recorder()
    poller = SQSPoller(url, handler, region=REGION, endpoint_url=moto_server.url,
                       wait_time=20)

    async def main() -> float:
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(1)  # well inside the 20-second ReceiveMessage
        started = time.monotonic()
        poller.stop()
        await asyncio.wait_for(task, 5)
        return time.monotonic() - started

    assert asyncio.run(main()) < 1


def test_receive_errors_are_logged_and_retried_until_stopped(
        moto_server: Moto, logs: list[dict[str, Any]]) -> None:
    missing = f"{moto_server.url}/123456789012/no-such-queue-{uuid.uuid4().hex[:8]}"
    _, handler = recorder()
    poller = SQSPoller(missing, handler, region=REGION, endpoint_url=moto_server.url,
                       wait_time=1, error_backoff=0.1)
    asyncio.run(run_until(poller, lambda: len(events(logs, "feedback_receive_failed")) >= 2))
    assert "QueueDoesNotExist" in events(logs, "feedback_receive_failed")[0]["error"]
