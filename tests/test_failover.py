"""Region failover (delivery.failover): the real relay process against two SES endpoints on
loopback, the primary broken in each way SES breaks, and back to the primary once it is
healthy. Each message carries its own Message-ID, so "sent once" is counted in the bytes
the endpoints received."""

from __future__ import annotations

import re
import threading
import urllib.request
from typing import Any

import botocore.exceptions as bex
import pytest
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Moto, Process, Setup, port_of, wait_until
from fakeses import Failure, FakeSES

from relay.errors import CorruptEntry
from relay.queueentry import parse_state
from relay.transports import http1
from relay.transports.errors import classify

PRIMARY, SECONDARY = "us-east-1", "eu-west-1"


def message(n: int) -> bytes:
    return (f"From: sender@example.com\r\nTo: to@example.net\r\nSubject: failover {n}\r\n"
            f"Message-ID: <failover-{n}@example.com>\r\n\r\nbody {n}\r\n").encode()


def send(setup: Setup, n: int) -> None:
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, ["to@example.net"], message(n))


def ids(*endpoints: FakeSES) -> list[str]:
    """The Message-IDs of every message the endpoints took, in any order."""
    return sorted(re.search(rb"<failover-\d+@", m["raw"]).group(0).decode()  # type: ignore[union-attr]
                  for ses in endpoints for m in ses.accepted)


def failover_setup(make_setup: Any, primary_url: str, secondary_url: str,
                   transport: str = "sesv2", **delivery: Any) -> Setup:
    setup: Setup = make_setup(transport, region=PRIMARY, endpoint_url=primary_url,
                              failover=[{"region": SECONDARY, "endpoint_url": secondary_url}],
                              **{"failover_after": 2, "failover_probe": "1h", **delivery})
    setup.doc["metrics"] = {"address": "127.0.0.1", "port": 0}
    setup.write()
    return setup


def failovers(setup: Setup) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{setup.port('metrics')}/metrics",
                                  timeout=10).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^ses_relay_region_failovers_total\{(.*)\} (\S+)$", text, re.M)}


def switch(relay: Process, reason: str) -> dict[str, Any]:
    return relay.wait_event("region_failover", reason=reason)


def test_an_unreachable_primary_moves_delivery_and_it_comes_back_when_the_primary_does(
        make_setup, start_process, hold) -> None:
    down = hold()  # the primary's port: bound, not listening (connection refused)
    with FakeSES() as secondary:
        setup = failover_setup(make_setup, f"http://127.0.0.1:{port_of(down)}",
                               secondary.url, failover_probe="0.2s")
        relay = start_process(setup)
        send(setup, 1)
        moved = switch(relay, "unreachable")
        wait_until(lambda: secondary.accepted)
        assert (moved["from"], moved["to"]) == (PRIMARY, SECONDARY)
        assert failovers(setup) == {
            f'from_region="{PRIMARY}",reason="unreachable",to_region="{SECONDARY}"': 1.0}
        # The primary comes up where it was; the next messages go there once the probe
        # is due (each message waits for its delivery before the next is sent).
        with FakeSES(sock=down) as primary:
            for n in range(2, 40):
                send(setup, n)
                wait_until(lambda n=n: len(primary.accepted) + len(secondary.accepted) >= n)
                if primary.accepted:
                    break
            back = switch(relay, "recovered")
            assert (back["from"], back["to"]) == (SECONDARY, PRIMARY)
            assert primary.accepted
            sent = n
            both = ids(primary, secondary)
    # Every message exactly once, over both regions.
    assert both == sorted(f"<failover-{i}@" for i in range(1, sent + 1))


@pytest.mark.parametrize(("failure", "reason"), [
    (Failure(500, "InternalFailure"), "5xx"),
    (Failure(503, "ServiceUnavailable"), "5xx"),
    (Failure(429, "TooManyRequestsException", "Maximum sending rate exceeded."),
     "throttled"),
])
def test_5xx_or_throttling_past_the_threshold_moves_delivery(
        make_setup, start_process, failure: Failure, reason: str) -> None:
    with FakeSES() as primary, FakeSES() as secondary:
        primary.rule = lambda call: failure
        setup = failover_setup(make_setup, primary.url, secondary.url)  # failover_after 2
        relay = start_process(setup)
        send(setup, 1)
        moved = switch(relay, reason)
        wait_until(lambda: secondary.accepted)
        # One answer is not enough: the first attempt is deferred in the primary.
        deferred = relay.wait_event("deferred" if reason == "5xx" else "throttled")
        assert deferred["code"] == failure.code
        send(setup, 2)  # the primary is down now: straight to the secondary
        wait_until(lambda: len(secondary.accepted) == 2)
        assert primary.calls == 2
        assert (moved["from"], moved["to"]) == (PRIMARY, SECONDARY)
        assert ids(primary, secondary) == ["<failover-1@", "<failover-2@"]


@pytest.mark.parametrize("code", ["AccountSendingPausedException", "SendingPausedException"])
def test_sending_paused_in_the_primary_moves_delivery_at_once(
        make_setup, start_process, code: str) -> None:
    with FakeSES() as primary, FakeSES() as secondary:
        primary.rule = lambda call: Failure(400, code, "Sending is paused for this account.")
        setup = failover_setup(make_setup, primary.url, secondary.url)
        relay = start_process(setup)
        send(setup, 1)
        moved = switch(relay, "paused")
        wait_until(lambda: secondary.accepted)
        assert primary.calls == 1
        # The delivered line names the region whose MessageId it is.
        delivered = relay.wait_event("delivered")
        assert (delivered["region"], delivered["ses_message_id"]) == (
            SECONDARY, secondary.accepted[0]["id"])
        assert (moved["from"], moved["to"]) == (PRIMARY, SECONDARY)
        assert relay.wait_event("region_down", region=PRIMARY)["code"] == code
        assert ids(primary, secondary) == ["<failover-1@"]


def test_a_send_that_may_have_reached_ses_is_retried_in_its_region_only(
        make_setup, start_process) -> None:
    # The primary takes the message but answers after the relay stopped waiting: it may
    # have been sent. The primary goes down (failover_after 1: new mail would go to the
    # secondary), but this message is retried in the primary, never in the secondary.
    answered = threading.Event()

    def slow_first(call: int) -> Failure | None:
        if call == 1:
            answered.wait(10)  # held until the relay has given up on this answer
        return None

    with FakeSES() as primary, FakeSES() as secondary:
        primary.rule = slow_first
        setup = failover_setup(make_setup, primary.url, secondary.url, timeout="0.5s",
                               failover_after=1)
        relay = start_process(setup)
        send(setup, 1)
        deferred = relay.wait_event("deferred")
        answered.set()
        assert deferred["code"] == "Timeout"
        relay.wait_event("region_down", region=PRIMARY, reason="timeout")
        relay.wait_event("delivered")
        # The late answer's copy and the retry's: at-least-once, as without failover.
        assert ids(primary) == ["<failover-1@", "<failover-1@"]
        assert secondary.calls == 0


def test_sesv1_fails_over_to_a_region_served_by_moto(
        make_setup, start_process, moto: Moto, refused_url: str) -> None:
    setup: Setup = make_setup("sesv1", region=SECONDARY, endpoint_url=refused_url,
                              failover=[{"region": PRIMARY, "endpoint_url": moto.url}])
    relay = start_process(setup)
    send(setup, 1)
    [sent] = moto.wait_sent(1)
    assert b"<failover-1@example.com>" in sent["raw_data"].encode()
    moved = switch(relay, "unreachable")
    assert (moved["from"], moved["to"]) == (SECONDARY, PRIMARY)
    assert relay.wait_event("delivered")["ses_message_id"] == sent["id"]


@pytest.mark.parametrize(("exc", "unsent"), [
    # Nothing left, or SES said no: the message may move to another region.
    (http1.ConnectFailed("cannot connect"), True),
    (bex.EndpointConnectionError(endpoint_url="https://x"), True),
    (bex.ConnectTimeoutError(endpoint_url="https://x"), True),
    (bex.ClientError({"Error": {"Code": "InternalFailure"},
                      "ResponseMetadata": {"HTTPStatusCode": 500}}, "SendEmail"), True),
    (bex.NoCredentialsError(), True),
    # The request may have been read: it stays in its region.
    (TimeoutError(), False),
    (bex.ReadTimeoutError(endpoint_url="https://x"), False),
    (bex.ConnectionClosedError(endpoint_url="https://x"), False),
    (http1.HTTPError("connection closed before the answer was complete"), False),
    (ConnectionResetError(), False),
])
def test_only_a_send_that_surely_did_not_succeed_may_move(exc: BaseException,
                                                          unsent: bool) -> None:
    assert classify(exc, region=PRIMARY).unsent is unsent


def test_a_state_file_whose_pin_is_not_a_region_name_is_corrupt() -> None:
    # The pin decides where a message may go: a state file with a wrong one cannot be
    # trusted (its entry goes to corrupt/, like any other bad state).
    assert parse_state(b'{"attempts": 1, "pin": "us-east-1"}', "Q").pin == "us-east-1"
    with pytest.raises(CorruptEntry):
        parse_state(b'{"attempts": 1, "pin": 5}', "Q")
