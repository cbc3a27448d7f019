"""A small HTTP/1.1 client for the SendEmail hot path: POST to one origin over keep-alive
connections, plain or TLS.

Why by hand, when aiohttp is already installed (aiobotocore needs it): under load an
aiohttp request was 16% of the event loop's time, the largest single cost left
(`bench/loadprofile.py`, A/B: loop user CPU 0.62 -> 0.50 ms per message with this
client). A general client does that work for what SES's API never uses:
redirects, cookies, compression, multipart and streaming bodies, URL building, tracing,
per-request timer and header merging machinery. What is left for one JSON POST is small
and fully specified (RFC 9112): write a head and a body, read a status line, header
fields, and a body framed by Content-Length, chunked coding, or the end of the
connection. That is all this module does. Behind an HTTP proxy, sesv2http still uses
aiohttp, which speaks CONNECT and proxy authentication.

Failures are ConnectionError (a broken or unreadable answer, a connection that closed
first) or TimeoutError, which the one error table (transports/errors.py) classifies as
transient, like aiohttp's own.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.parse
from collections.abc import Iterator, Mapping

from relay.transports.http1wire import HTTPError as HTTPError
from relay.transports.http1wire import Response as Response
from relay.transports.http1wire import host_header as host_header
from relay.transports.http1wire import parse_head
from relay.transports.http1wire import request_target as request_target
from relay.transports.httpbody import Base64Document

Body = bytes | Base64Document  # a large document is encoded as it is sent: see httpbody

_MAX_HEAD = 64 * 1024  # response status line and header fields
_MAX_BODY = 4 * 1024 * 1024  # SES answers with a few hundred bytes; a proxy page is more
_SMALL = 64 * 1024  # a request body up to this is written with its head in one go
_CHUNK = 256 * 1024  # larger ones a slice at a time, waiting while the socket is full
_KEEP_IDLE = 15.0  # seconds an unused connection is kept (aiohttp's default too): a NAT or
# firewall may drop an idle flow without a word, and a send on it would wait it out
_HEX = re.compile(rb"[0-9A-Fa-f]+")


class ConnectFailed(HTTPError):
    """No connection to the endpoint: the request surely did not leave (the error table
    lets only such failures, and SES's own error answers, move a message to another
    region)."""


class _Unanswered(HTTPError):
    """The connection ended before a single byte of the answer came.

    On a kept-alive connection that is the race every keep-alive client meets: the server
    closed the connection idle (SES's front end does after some seconds) while the request
    was on its way, and never read it. Pool.post retries such a request once on a new
    connection, as urllib3 and httpcore retry a request on a stale pooled connection."""


class Pool:
    """Keep-alive connections to the origin of *url*; ``post()`` sends to its path.

    *size* is how many idle connections are kept, not a cap on those in use: the callers
    (the delivery workers) bound how many requests run at once."""

    def __init__(self, url: str, *, ssl_context: ssl.SSLContext | None, size: int,
                 connect_timeout: float, read_timeout: float, user_agent: str,
                 keep_idle: float = _KEEP_IDLE) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" \
            else None
        self._head = (f"POST {request_target(url)} HTTP/1.1\r\nHost: {host_header(url)}\r\n"
                      f"User-Agent: {user_agent}\r\n")
        self._size = size
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keep_idle = keep_idle
        self._idle: list[tuple[_Connection, float]] = []  # oldest first, with when it went idle
        self._closed = False

    async def post(self, body: Body, headers: Mapping[str, str]) -> Response:
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header field {name!r} holds a line break")  # injection
        fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"{self._head}{fields}Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
        connection = await self._connection()
        reused = connection.answered > 0
        try:
            try:
                response = await connection.exchange(head, body, self._read_timeout)
            except _Unanswered:
                if not reused:
                    raise  # a new connection closed unanswered: that is the endpoint's say
                # The server closed this kept-alive connection as the request went (its
                # idle timeout): the request was not read. Once, at once, on a new one;
                # not counted as a failure, which would mark the upstream down.
                connection.abort()
                connection = await self._connect()
                response = await connection.exchange(head, body, self._read_timeout)
        except BaseException:
            connection.abort()  # not close(): that would wait to flush what is unsent
            raise
        if connection.reusable and len(self._idle) < self._size and not self._closed:
            self._idle.append((connection, asyncio.get_running_loop().time()))
        else:
            connection.abort()  # the answer is in; what may be left unsent is not wanted
        return response

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        while self._idle:
            connection, since = self._idle.pop()  # the most recently used: least likely stale
            if connection.reusable and loop.time() - since <= self._keep_idle:
                return connection
            connection.close()  # closed by the server, or idle too long
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        host, port = self._address
        try:
            async with asyncio.timeout(self._connect_timeout):
                # Happy Eyeballs (RFC 8305), as aiohttp connects: a dual-stack endpoint
                # with a broken IPv6 route falls back to IPv4 in 0.25 s, not after the
                # whole timeout.
                _, connection = await loop.create_connection(
                    _Connection, host, port, ssl=self._ssl,
                    server_hostname=host if self._ssl is not None else None,
                    happy_eyeballs_delay=0.25)
        except TimeoutError as e:
            raise ConnectFailed(f"cannot connect to {host}:{port}: timed out") from e
        except ssl.SSLError:
            raise  # the handshake's own error says more (a certificate not trusted)
        except OSError as e:  # refused, no route, DNS
            raise ConnectFailed(f"cannot connect to {host}:{port}: {e}") from e
        return connection

    def close(self) -> None:
        """Close the idle connections; those in use close when their answer is in."""
        self._closed = True
        for connection, _ in self._idle:
            connection.close()
        self._idle.clear()


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its answer parsed as the bytes arrive."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[Response] | None = None
        self._head: tuple[int, dict[str, str], bool] | None = None  # status, fields, keep
        self._length: int | None = None  # body bytes expected; None: chunked or to EOF
        self._chunked = False
        self._body = bytearray()
        self._writable: asyncio.Future[None] | None = None  # set while the socket is full
        self._replied = False  # a byte of the current answer has come
        self.answered = 0  # answers read whole: more than none, and this is a kept-alive one
        self.reusable = False

    # -- asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.reusable = True

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self._replied = True
        self._buffer += data
        try:
            response = self._parse()
        except (HTTPError, ValueError) as e:
            self._answer.set_exception(e if isinstance(e, HTTPError) else HTTPError(str(e)))
            self.abort()
            return
        if response is not None:
            self._answer.set_result(response)
            self._wake_writer()  # an answer before the whole body went: stop sending
    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._transport = None
        self._wake_writer()
        answer = self._answer
        if answer is None or answer.done():
            return
        if exc is None and self._head is not None and self._length is None \
                and not self._chunked:
            # Framed by the end of the connection, and that end was orderly: this is all.
            answer.set_result(Response(self._head[0], self._head[1], bytes(self._body)))
        else:
            error = HTTPError if self._replied else _Unanswered
            answer.set_exception(error("connection closed before the answer was complete"))

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # -- ours

    def _wake_writer(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def close(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Close at once, dropping whatever is still unsent."""
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()

    async def exchange(self, head: bytes, body: Body, wait: float) -> Response:
        """Send one request; its answer. *wait* bounds each wait, in seconds: each one
        for the socket to take more of a large body, then the one for the whole answer
        once the body is sent. (Not a bound on the whole exchange: a large body on a slow
        link takes as long as it takes while it moves.)"""
        transport = self._transport
        if transport is None or not self.reusable:
            raise _Unanswered("connection closed")
        self.reusable = False  # until this answer has been read whole
        self._answer = answer = asyncio.get_running_loop().create_future()
        self._head, self._length, self._chunked = None, None, False
        self._replied = False
        self._body = bytearray()
        try:
            sent_all = await self._send(transport, head, body, wait)
            async with asyncio.timeout(wait):
                response: Response = await answer
        except BaseException:
            # Given up on (a timeout, a cancellation): the answer may still fail when the
            # connection is aborted, and nobody would read that failure.
            if not answer.done():
                answer.cancel()
            elif not answer.cancelled():
                answer.exception()  # read: the error raised here is the one that counts
            raise
        self.answered += 1
        keep = self._head is not None and self._head[2]
        # A body cut short leaves the server reading the rest: never again on this one.
        self.reusable = keep and sent_all and not self._buffer and self._transport is not None
        return response

    async def _send(self, transport: asyncio.Transport, head: bytes, body: Body,
                    wait: float) -> bool:
        """Write the request, a slice at a time while the socket is full; False if an
        answer came, or the connection went, before the body was all sent."""
        if isinstance(body, bytes) and len(body) <= _SMALL:
            transport.write(head + body)
            return True
        transport.write(head)
        for piece in _slices(body):
            if self._transport is None or self._answer is None or self._answer.done():
                return False
            transport.write(piece)
            if self._writable is not None:
                async with asyncio.timeout(wait):
                    await self._writable
        return True

    def _parse(self) -> Response | None:
        """The answer, once all of it is in the buffer; None until then."""
        while self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    raise HTTPError("answer head too large")
                return None
            status, fields, keep = parse_head(bytes(self._buffer[:end]))
            del self._buffer[:end + 4]
            if 100 <= status < 200:
                continue  # an interim answer (100 Continue): the real one follows
            self._head = (status, fields, keep)
            self._frame(status, fields)
        if self._chunked:
            if not self._take_chunks():
                return None
        elif self._length is not None:
            if len(self._buffer) < self._length:
                return None
            self._body = self._buffer[:self._length]
            del self._buffer[:self._length]
        else:  # to the end of the connection (connection_lost completes it)
            self._body += self._buffer
            self._buffer.clear()
            if len(self._body) > _MAX_BODY:
                raise HTTPError("answer body too large")
            return None
        return Response(self._head[0], self._head[1], bytes(self._body))

    def _frame(self, status: int, fields: dict[str, str]) -> None:
        coding = fields.get("transfer-encoding")
        length = fields.get("content-length")
        if status in (204, 304):
            self._length = 0
        elif coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() != "chunked":
                raise HTTPError(f"unsupported transfer coding {coding!r}")
            self._chunked = True
        elif length is not None:
            if not (length.isascii() and length.isdigit()) or int(length) > _MAX_BODY:
                raise HTTPError(f"bad Content-Length {length!r}")
            self._length = int(length)

    def _take_chunks(self) -> bool:
        """Move whole chunks from the buffer to the body; True once the last is in."""
        buffer = self._buffer
        while True:
            eol = buffer.find(b"\r\n")
            if eol < 0:
                if len(buffer) > _MAX_HEAD:
                    raise HTTPError("chunk size line too long")
                return False
            size_field = bytes(buffer[:eol]).split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size_field):
                raise HTTPError(f"bad chunk size {size_field!r}")
            size = int(size_field, 16)
            if size == 0:
                # The last chunk, then trailer fields (ignored), then an empty line.
                rest = eol + 2
                if buffer[rest:rest + 2] == b"\r\n":
                    del buffer[:rest + 2]
                    return True
                end = buffer.find(b"\r\n\r\n", rest)
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        raise HTTPError("chunked trailer too large")
                    return False
                del buffer[:end + 4]
                return True
            if len(self._body) + size > _MAX_BODY:
                raise HTTPError("answer body too large")
            if len(buffer) < eol + 2 + size + 2:
                return False
            if buffer[eol + 2 + size:eol + 4 + size] != b"\r\n":
                raise HTTPError("chunk not followed by CRLF")
            self._body += buffer[eol + 2:eol + 2 + size]
            del buffer[:eol + 4 + size]


def _slices(body: Body) -> Iterator[bytes | memoryview]:
    if not isinstance(body, bytes):
        return body.chunks()
    view = memoryview(body)
    return (view[start:start + _CHUNK] for start in range(0, len(body), _CHUNK))
