"""A fast SESv2-compatible endpoint for benchmarks: SendEmail, GetAccount, and a rate limit.

moto_server manages ~250 sends/s here, too slow to be the upstream of a throughput test.
This answers in microseconds on persistent HTTP/1.1 connections, optionally enforces a
rate in recipients per second the way SES does (a token bucket holding one second; over
it: HTTP 429 TooManyRequestsException, the message is dropped), and on SIGTERM writes its
counters as JSON.

    python bench/fake_ses.py --port 8999 [--rate 100] [--stats out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any


class Endpoint:
    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.tokens = rate or 0.0
        self.stamp = time.monotonic()
        self.calls = 0
        self.throttled = 0
        self.accepted_rcpts = 0
        self.accepted_bytes = 0
        self.first: float | None = None
        self.last: float | None = None

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
        self.calls += 1
        if method == "GET" and path.endswith("/account"):
            rate = self.rate or 1000.0
            return 200, {}, json.dumps({"SendQuota": {
                "MaxSendRate": rate, "Max24HourSend": 1e9, "SentLast24Hours": 0},
                "ProductionAccessEnabled": True, "SendingEnabled": True}).encode()
        if method == "POST" and path.endswith("/outbound-emails"):
            request: dict[str, Any] = json.loads(body)
            rcpts = len(request["Destination"]["ToAddresses"])
            if not self.admit(rcpts):
                self.throttled += 1
                return 429, {"x-amzn-ErrorType": "TooManyRequestsException"}, \
                    b'{"message": "Maximum sending rate exceeded."}'
            size = len(base64.b64decode(request["Content"]["Raw"]["Data"]))
            now = time.monotonic()
            self.first = self.first if self.first is not None else now
            self.last = now
            self.accepted_rcpts += rcpts
            self.accepted_bytes += size
            return 200, {}, json.dumps({"MessageId": f"bench-{uuid.uuid4()}"}).encode()
        return 404, {}, b'{"message": "not here"}'

    def stats(self) -> dict[str, Any]:
        span = (self.last - self.first) if self.first is not None and self.last else 0.0
        return {"calls": self.calls, "throttled": self.throttled,
                "accepted_rcpts": self.accepted_rcpts, "accepted_bytes": self.accepted_bytes,
                "span": span, "rate_limit": self.rate}


async def serve_connection(endpoint: Endpoint, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _ = request_line.decode("latin-1").split(" ", 2)
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            status, headers, payload = endpoint.handle(method, path, body)
            head = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}",
                    "Content-Type: application/json", f"Content-Length: {len(payload)}",
                    *(f"{k}: {v}" for k, v in headers.items())]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=None, help="recipients per second")
    ap.add_argument("--stats", type=Path, default=None)
    args = ap.parse_args()
    endpoint = Endpoint(args.rate)
    server = await asyncio.start_server(lambda r, w: serve_connection(endpoint, r, w),
                                        "127.0.0.1", args.port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    if args.stats:
        args.stats.write_text(json.dumps(endpoint.stats()))


if __name__ == "__main__":
    asyncio.run(main())
