"""A session's edge: from the TCP accept to the greeting, and hanging up.

- Each connection is counted (limits per client and in all) when it is accepted, before
  any PROXY header or TLS handshake, so that connections stuck there count too.
- A connection from one of the listener's balancers (``proxy_from``) must start with a
  PROXY header, which names the client (relay/smtp/proxy.py); any other connection is its
  own client, and one that starts with a PROXY header anyway gets 421 and is closed.
- On implicit-TLS listeners TLS starts here, after the PROXY header
  (relay/smtp/tlsstart.py), within a deadline.
- A finished session's reference cycles are broken, so it is freed without the garbage
  collector (see ``_session_over``).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, Session

from relay.limits import LOCKED_OUT
from relay.smtp import proxy, tlsstart


class RelaySession(Session):
    """aiosmtpd's session, plus the client's address (from PROXY when behind a balancer)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.client_ip = ""


class EdgeSMTP(SMTP):
    _greeted: bool  # RelaySMTP's: whether the greeting (or what stands for it) went out

    def __init__(self, handler: Any, *, proxy_from: proxy.Networks = (),
                 implicit_tls_context: ssl.SSLContext | None = None,
                 opening_timeout: float = 30.0, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._proxy_from = proxy_from
        self._implicit_context = implicit_tls_context
        # For the PROXY header and for the implicit TLS handshake, each.
        self._opening_timeout = opening_timeout
        self.via_balancer = False
        self._counted = False
        self._lost = False
        self._refusal: str | None = None
        self._first_bytes: bytearray | None = None  # while telling a PROXY header apart
        self._told: asyncio.Future[None] | None = None  # ... done when it is told

    def _close(self) -> None:
        """Hang up now, and make sure nothing the client already sent is acted upon.

        Closing the transport is not enough: aiosmtpd's loop would go on reading commands
        that are already buffered (that is how a smuggled second message would get in).
        With the buffer emptied the next read must wait, and the cancellation lands there.
        """
        self._reader._buffer.clear()  # type: ignore[attr-defined]  # as aiosmtpd does
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self.transport is not None:
            self.transport.close()

    @property
    def client_ip(self) -> str:
        # Read before the first session exists too (connection accounting): "" then.
        return self.session.client_ip if isinstance(self.session, RelaySession) else ""

    # -- connection accounting (limits per client and in all)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        previous = self.session
        task = self._handler_coroutine
        super().connection_made(transport)
        if self._handler_coroutine is not None and self._handler_coroutine is not task:
            self._handler_coroutine.add_done_callback(self._session_over)  # not STARTTLS
        if isinstance(previous, RelaySession) and isinstance(self.session, RelaySession):
            # TLS starts a new session (RFC 3207) for the same client.
            self.session.client_ip = previous.client_ip
            self.session.peer = previous.peer
        if not self._counted:  # not again after STARTTLS
            assert self.session is not None
            self._counted = True
            self.via_balancer = proxy.from_balancer(self.session.peer, self._proxy_from)
            if not self.via_balancer:
                self._first_bytes = bytearray()
                if self._implicit_context is not None:
                    self._told = self.loop.create_future()
            self._refusal = self.event_handler.connection_opened(self.session, self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._lost:  # see _start_tls
            return
        self._lost = True
        if self._counted:
            self._counted = False
            self.event_handler.connection_closed(self.session, self)
        super().connection_lost(error)
        self._session_over()

    def _session_over(self, task: object = None) -> None:
        """Break the reference cycles aiosmtpd leaves, once the connection is gone and
        the session's task is done (in either order).

        Every session was a cycle that only the garbage collector could free: aiosmtpd
        keeps bound methods of itself (self -> dict -> method -> self), so does asyncio's
        StreamReaderProtocol (its connected callback), the stream writer points back at
        its protocol, and the task keeps the CancelledError that ended it, whose traceback
        holds the frames that hold self.
        Under load thousands of them reached the oldest generation, whose collections
        took up to 81 ms (111 ms in another run) with every session waiting
        (bench/loadprofile.py --gc, bench/RESULTS.md). Broken here, a
        session is freed when its last reference goes.
        """
        handler = self._handler_coroutine
        if self.transport is not None or handler is None or not handler.done():
            return
        self._handler_coroutine = None
        self._smtp_methods = {}
        self._auth_methods = {}
        self._client_connected_cb = None
        self._writer = self._stream_writer = None  # type: ignore[assignment]

    # -- a PROXY header from anyone but a balancer

    def data_received(self, data: bytes) -> None:
        first = self._first_bytes
        if first is not None:
            first += data
            forged = proxy.sniff(bytes(first[:proxy.SNIFF_BYTES]))
            if forged is None:
                return  # held until there are enough bytes to tell
            self._first_bytes = None
            if forged:
                reply = self.event_handler.forged_proxy(self.session)
                assert isinstance(self.transport, asyncio.WriteTransport)
                self.transport.write(reply.encode() + b"\r\n")
                self._close()
                return
            data = bytes(first)
            if self._told is not None and not self._told.done():
                self._told.set_result(None)
        super().data_received(data)

    # -- before the greeting

    async def _handle_client(self) -> None:
        try:
            if not await self._opening():
                return
        except asyncio.CancelledError:
            # EOF or a reset (aiosmtpd cancels the task), or shutdown: aiosmtpd's own loop
            # closes the transport then, and so must this.
            if self.transport is not None:
                self.transport.close()
            raise
        if self._refusal is not None:
            self._greeted = True  # the refusal takes the greeting's place
            await self.push(self._refusal)
            self._close()
            return
        await super()._handle_client()

    async def _opening(self) -> bool:
        """The PROXY header, the TLS handshake: whether the session goes on to SMTP."""
        handler = self.event_handler
        if self.via_balancer:
            try:
                async with asyncio.timeout(self._opening_timeout):
                    header = await proxy.read_header(self._reader)
            except TimeoutError:
                handler.bad_proxy_header(self.session, "no PROXY header in time")
                self._close()
                return False
            except proxy.BadHeader as e:
                handler.bad_proxy_header(self.session, str(e))
                self._close()
                return False
            self._refusal = handler.proxied(self.session, header, self._refusal)
        elif self._told is not None:
            if self._too_many():
                return False  # not kept waiting for a handshake that would be refused
            # A TLS client speaks first: tell a PROXY header from a ClientHello before TLS.
            try:
                async with asyncio.timeout(self._opening_timeout):
                    await self._told
            except TimeoutError:
                handler.tls_failed(self.session, "no TLS handshake in time")
                self._close()
                return False
        else:
            # One turn of the loop: a header sent at once (without waiting for the
            # greeting) has then usually reached data_received, and gets its 421 with no
            # greeting before it. Later, it gets the 421 after the greeting.
            await asyncio.sleep(0)
        if self._implicit_context is None:
            return True
        if self._too_many():
            return False
        return await self._start_tls(self._implicit_context)

    def _too_many(self) -> bool:
        """On implicit TLS, one connection too many gets no handshake (it could not read a
        421 without one): closed at once, it holds no slot (nor the CPU) while a handshake
        runs. A locked-out client does get the handshake and its 421."""
        if self._refusal is None or self._refusal == LOCKED_OUT:
            return False
        self._close()
        return True

    async def _start_tls(self, context: ssl.SSLContext) -> bool:
        try:
            await tlsstart.start(self, context, self._opening_timeout)
        except asyncio.CancelledError:
            self.connection_lost(None)  # the TLS layer does not tell us before the handshake
            raise
        except OSError as e:
            self.event_handler.tls_failed(self.session, repr(e))
            self._close()
            self.connection_lost(e)
            return False
        return True
