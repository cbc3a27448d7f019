"""A minimal HTTP/1.1 server for the relay's own small endpoints (metrics, SNS webhook).

One request per connection, a bounded body, a timeout on every read. The routes are few
and must await the relay's own coroutines, which a thread-based server or a web framework
would only make harder; hence these lines instead of a dependency.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[Request], Awaitable[Response]]
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class Server:
    def __init__(self, handler: Handler, *, max_body: int = 256 * 1024,
                 timeout: float = 10.0) -> None:
        self._handler = handler
        self._max_body = max_body
        self._timeout = timeout
        self._server: asyncio.Server | None = None

    async def start(self, address: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        self._server = await asyncio.start_server(self._client, address, port, ssl=tls)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read(reader)
            response = (Response(413, b"too large\n") if request is None
                        else await self._handler(request))
            reason = _REASONS.get(response.status, "Status")
            writer.write(f"HTTP/1.1 {response.status} {reason}\r\n"
                         f"Content-Type: {response.content_type}\r\n"
                         f"Content-Length: {len(response.body)}\r\n"
                         "Connection: close\r\n\r\n".encode() + response.body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, UnicodeDecodeError,
                asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass  # a broken client gets no answer; nothing of ours is at stake
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        line = await asyncio.wait_for(reader.readline(), self._timeout)
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            raw = await asyncio.wait_for(reader.readline(), self._timeout)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > self._max_body:
            return None
        body = await asyncio.wait_for(reader.readexactly(length), self._timeout) if length \
            else b""
        return Request(method, path.split("?", 1)[0], headers, body)
