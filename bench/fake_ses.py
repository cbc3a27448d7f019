"""A fast SESv2-compatible endpoint for benchmarks: SendEmail, GetAccount, and a rate limit.

moto_server manages ~250 sends/s here, too slow to be the upstream of a throughput test.
This answers in microseconds on persistent HTTP/1.1 connections, optionally enforces a
rate in recipients per second the way SES does (a token bucket holding one second; over
it: HTTP 429 TooManyRequestsException, the message is dropped), and on SIGTERM writes its
counters as JSON.

Keep-alive as SES's front end does it: a connection idle for --idle-timeout seconds
(default 4; 0: never) is closed by the server, without a word, as load balancers do
(AWS's close idle keep-alive connections after some seconds); a request that crosses
that close on the wire is lost with the connection, and a client must send it again on a
new one. A request with "Connection: close" is answered with "Connection: close" and the
connection closed after the answer. --close-after N closes every connection after its
N-th answer without announcing it (as a server may at any time, RFC 9112 section 9.6): a
client that sends on it next finds it closed before any answer. --latency adds a fixed
wait before each SendEmail answer (real SES answers in tens of milliseconds; default 0,
the fastest upstream). --count-header NAME decodes each accepted message and counts the
values of its header NAME (Message-ID, say), served at GET /seen as {value: times}: what
a crash test needs to find the messages lost or sent twice (this costs the decoding the
hot path otherwise skips). --port 0 binds a free port and prints it as the first line of
stdout.

It runs on the same cores as the relay it measures, where real SES costs the relay's
machine nothing, so it does as little as it can, as smtp-sink does for Postfix in the same
comparison: requests are parsed from the protocol's data_received (no coroutine per
request), and a SendEmail's message is not decoded: its size is read off the base64
text's length, and only the rest of the document goes through the JSON parser. (Decoding
a 1 MB message's request cost this process 3.7 ms of CPU, half of what Postfix spends on
the whole message.)

    python bench/fake_ses.py --port 8999 [--rate 100] [--stats out.json]
                             [--idle-timeout 4] [--latency 0.02] [--close-after 100]
                             [--count-header Message-ID]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any


class Endpoint:
    def __init__(self, rate: float | None, count_header: str | None = None) -> None:
        self.rate = rate
        self.header = (re.compile(rb"^" + re.escape(count_header.encode()) +
                                  rb":[ \t]*(.*?)\r?$", re.I | re.M)
                       if count_header else None)
        self.seen: dict[str, int] = {}
        self.tokens = rate or 0.0
        self.stamp = time.monotonic()
        self.calls = 0
        self.throttled = 0
        self.accepted_rcpts = 0
        self.accepted_bytes = 0
        self.first: float | None = None
        self.last: float | None = None
        self.idle_closed = 0  # connections closed for being idle
        self.idle_closed_unused = 0  # of those: closed before their first request
        self.connections = 0

    def admit(self, rcpts: int) -> bool:
        if self.rate is None:
            return True
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < rcpts and self.tokens < self.rate:
            return False
        self.tokens -= rcpts
        return True

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if method == "GET" and path == "/stats":
            return 200, {}, json.dumps(self.stats()).encode()
        if method == "GET" and path == "/seen":
            return 200, {}, json.dumps(self.seen).encode()
        self.calls += 1
        if method == "GET" and path.endswith("/account"):
            rate = self.rate or 1000.0
            return 200, {}, json.dumps({"SendQuota": {
                "MaxSendRate": rate, "Max24HourSend": 1e9, "SentLast24Hours": 0},
                "ProductionAccessEnabled": True, "SendingEnabled": True}).encode()
        if method == "POST" and path.endswith("/outbound-emails"):
            request, size = _send_email(body)
            rcpts = len(request["Destination"]["ToAddresses"])
            if not self.admit(rcpts):
                self.throttled += 1
                return 429, {"x-amzn-ErrorType": "TooManyRequestsException"}, \
                    b'{"message": "Maximum sending rate exceeded."}'
            now = time.monotonic()
            self.first = self.first if self.first is not None else now
            self.last = now
            self.accepted_rcpts += rcpts
            self.accepted_bytes += size
            if self.header is not None:
                self._count(body)
            return 200, {}, json.dumps({"MessageId": f"bench-{uuid.uuid4()}"}).encode()
        return 404, {}, b'{"message": "not here"}'

    def _count(self, body: bytes) -> None:
        raw = base64.b64decode(json.loads(body)["Content"]["Raw"]["Data"])
        found = self.header.search(raw.split(b"\r\n\r\n", 1)[0]) if self.header else None
        if found:
            value = found.group(1).decode("latin-1")
            self.seen[value] = self.seen.get(value, 0) + 1

    def stats(self) -> dict[str, Any]:
        span = (self.last - self.first) if self.first is not None and self.last else 0.0
        return {"calls": self.calls, "throttled": self.throttled,
                "accepted_rcpts": self.accepted_rcpts, "accepted_bytes": self.accepted_bytes,
                "span": span, "rate_limit": self.rate, "connections": self.connections,
                "idle_closed": self.idle_closed, "idle_closed_unused": self.idle_closed_unused}


def _send_email(body: bytes) -> tuple[dict[str, Any], int]:
    """A SendEmail document without its message, and the message's size in bytes.

    The base64 text of Content.Raw.Data holds no quote or backslash, so it ends at the
    next quote; it is cut out before the JSON parser sees the document.
    """
    start = body.find(b'"Data":"')
    if start < 0:
        request = json.loads(body)
        return request, len(base64.b64decode(request["Content"]["Raw"]["Data"]))
    start += len(b'"Data":"')
    end = body.index(b'"', start)
    padding = body.count(b"=", max(start, end - 2), end)
    return json.loads(body[:start] + body[end:]), (end - start) // 4 * 3 - padding


class Connection(asyncio.Protocol):
    """One keep-alive connection: requests parsed as their bytes arrive, answered in order."""

    def __init__(self, endpoint: Endpoint, open_: set[Connection], latency: float,
                 close_after: int = 0) -> None:
        self.endpoint = endpoint
        self.open = open_
        self.latency = latency
        self.close_after = close_after
        self.buffer = bytearray()
        self.request: tuple[str, str, int, bool] | None = None  # method, path, length, close
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # answers still to write (with --latency)
        self.requests = 0
        self.last = time.monotonic()  # last byte in or out: the idle clock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.open.add(self)
        self.endpoint.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.open.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self.buffer += data
        while self._answer_one():
            pass

    def idle_for(self, now: float) -> float:
        return 0.0 if self.busy or self.buffer or self.request else now - self.last

    def _answer_one(self) -> bool:
        if self.request is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length, close = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    close = "close" in value.lower()
            del self.buffer[:end + 4]
            self.request = (method, path, length, close)
        method, path, length, close = self.request
        if len(self.buffer) < length:
            return False
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        self.request = None
        self.requests += 1
        status, headers, payload = self.endpoint.handle(method, path, body)
        if close:
            headers = {**headers, "Connection": "close"}
        close = close or self.requests == self.close_after  # unannounced after the N-th
        head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                "Content-Type: application/json", f"Content-Length: {len(payload)}",
                *(f"{k}: {v}" for k, v in headers.items())]
        answer = ("\r\n".join(head) + "\r\n\r\n").encode() + payload
        if self.latency and method == "POST":
            self.busy += 1
            asyncio.get_running_loop().call_later(self.latency, self._write, answer, close)
        else:
            self._write(answer, close)
        return True

    def _write(self, answer: bytes, close: bool) -> None:
        self.busy = max(0, self.busy - 1) if self.latency else 0
        self.last = time.monotonic()
        if self.transport is not None:
            self.transport.write(answer)
            if close:
                self.transport.close()


async def close_idle(open_: set[Connection], endpoint: Endpoint, idle: float) -> None:
    """Close connections idle for *idle* seconds: one sweep a tenth of it apart, not a
    timer per request, so the hot path stays as cheap as it was."""
    while True:
        await asyncio.sleep(idle / 10)
        now = time.monotonic()
        for connection in [c for c in open_ if c.idle_for(now) >= idle]:
            if connection.transport is not None:
                endpoint.idle_closed += 1
                endpoint.idle_closed_unused += connection.requests == 0
                connection.transport.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True, help="0: a free one, printed")
    ap.add_argument("--rate", type=float, default=None, help="recipients per second")
    ap.add_argument("--stats", type=Path, default=None)
    ap.add_argument("--idle-timeout", type=float, default=4.0,
                    help="seconds before an idle connection is closed (0: never)")
    ap.add_argument("--latency", type=float, default=0.0,
                    help="seconds before each SendEmail answer")
    ap.add_argument("--close-after", type=int, default=0,
                    help="close each connection after this many answers, unannounced")
    ap.add_argument("--count-header", default=None,
                    help="count each accepted message's value of this header (GET /seen)")
    args = ap.parse_args()
    endpoint = Endpoint(args.rate, args.count_header)
    open_: set[Connection] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: Connection(endpoint, open_, args.latency, args.close_after), "127.0.0.1",
        args.port)
    if args.port == 0:
        print(server.sockets[0].getsockname()[1], flush=True)
    sweepers = ([asyncio.create_task(close_idle(open_, endpoint, args.idle_timeout))]
                if args.idle_timeout > 0 else [])  # held here: the loop keeps weak references
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    for task in sweepers:
        task.cancel()
    if args.stats:
        args.stats.write_text(json.dumps(endpoint.stats()))


if __name__ == "__main__":
    asyncio.run(main())
