"""A kept-alive connection to SES that the server closes as a request goes (its idle
timeout fired while the request was on the wire): the request was never read, so it is
sent again at once on a new connection; no failed send, no "upstream down".

The race is played exactly, not by timing: the scripted server (test_http1.Server)
answers the first request on each connection and hangs up without a word on the next,
which is what a client sees when its request crosses the server's idle close.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, wait_until
from test_http1 import HANG_UP, OK, Script, Server, pool, run

from relay.transports.http1 import HTTPError

MESSAGE = b"From: sender@example.com\r\nTo: to@example.net\r\nSubject: k\r\n\r\nHello.\r\n"


def first_only(n: int) -> list[bytes] | None:
    """Answer a connection's first request; hang up unanswered on its second."""
    return [OK] if n == 0 else None


def test_a_request_crossing_the_servers_idle_close_is_sent_again_on_a_new_connection() -> None:
    async def go() -> tuple[list[int], int, int]:
        async with Server(first_only) as server:
            client = pool(server.port)
            statuses = [(await client.post(b"{}", {})).status for _ in range(4)]
            client.close()
            return statuses, server.connections, len(server.requests)

    # Requests 2-4 each went out on the kept connection, found it closed, and again on a
    # new one: 4 connections, 7 requests read, 4 answers.
    assert run(go()) == ([200] * 4, 4, 7)


@pytest.mark.parametrize("script,answered", [
    (lambda n: None, 0),  # a new connection closed unanswered: the endpoint's own failure
    # a kept-alive one closed after part of the answer: SES may have sent the message
    (lambda n: [OK] if n == 0 else [OK[:40], HANG_UP], 1),
], ids=["new-connection", "part-of-an-answer"])
def test_no_second_try_when_the_request_may_have_been_read(script: Script,
                                                           answered: int) -> None:
    async def go() -> tuple[int, int]:
        async with Server(script) as server:
            client = pool(server.port)
            for _ in range(answered):
                assert (await client.post(b"{}", {})).status == 200
            with pytest.raises(HTTPError, match="closed before the answer"):
                await client.post(b"{}", {})
            client.close()
            return server.connections, len(server.requests)

    assert run(go()) == (1, answered + 1)


def test_the_second_try_is_the_only_one() -> None:
    # The first connection answers once, then every request goes unanswered: the request
    # is tried on one new connection and the failure is then the caller's.
    async def go() -> tuple[int, int]:
        server = Server(lambda n: [OK] if server.connections == 1 and n == 0 else None)
        async with server:
            client = pool(server.port)
            assert (await client.post(b"{}", {})).status == 200
            with pytest.raises(HTTPError, match="closed before the answer"):
                await client.post(b"{}", {})
            client.close()
            return server.connections, len(server.requests)

    assert run(go()) == (2, 3)


@contextmanager
def serving(script: Script) -> Iterator[Server]:
    """The scripted server on its own event loop in a thread, for a relay in another."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = Server(script)
    asyncio.run_coroutine_threadsafe(server.__aenter__(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(_shut(server), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _shut(server: Server) -> None:
    """Stop listening, and end the connections still being served."""
    await server.__aexit__()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_the_relay_delivers_through_idle_closes_without_deferring_or_pausing(
        make_setup: Any, start_relay: Any, logs: list[dict[str, Any]]) -> None:
    with serving(first_only) as server:
        setup: Setup = make_setup("sesv2", region="us-east-1",
                                  endpoint_url=f"http://127.0.0.1:{server.port}",
                                  max_send_rate=100)
        relay = start_relay(setup)
        with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
            for n in range(1, 5):
                s.sendmail(SENDER, ["to@example.net"], MESSAGE)
                wait_until(lambda n=n: sum(e["event"] == "delivered" for e in logs) == n)
        relay.stop()
    events = [e["event"] for e in logs]
    assert "deferred" not in events and "upstream_down" not in events
    assert [e["attempt"] for e in logs if e["event"] == "delivered"] == [1, 1, 1, 1]
    # Messages 2-4 each went out on the kept connection, found it closed, and again on a
    # new one: 7 SendEmail requests read, 4 answered.
    assert len(server.requests) == 7
