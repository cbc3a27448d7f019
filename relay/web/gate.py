"""What aiohttp does not bound: connections per client and in all, and one deadline per
connection from accept to answer.

A Gate is the asyncio protocol of one accepted TCP connection, in front of aiohttp's. It
counts the connection from accept, so a TLS handshake that never finishes counts too
(asyncio would hand over only completed handshakes), does the handshake itself with
``loop.start_tls``, and closes the connection at its deadline whatever state it is in: a
client trickling its headers a byte at a time (slowloris) is cut there, not per line.
Each connection carries one request (the server answers ``Connection: close``), so the
connection's deadline is the request's.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from relay import log
from relay.limits import TOO_MANY_FROM_YOU, Connections

_log = log.get("web")

# After the deadline, a request that reached its handler has this long to have its timeout
# answer written before the connection is dropped anyway (a client that does not read).
GRACE = 2.0


@dataclass
class Admission:
    """The caps and deadline of one listener, and the connections it holds."""

    name: str
    connections: Connections
    timeout: float
    tls: ssl.SSLContext | None = None
    live: set[Gate] = field(default_factory=set)

    def close_all(self) -> None:
        for gate in list(self.live):
            gate.abort()


class Gate(asyncio.Protocol):
    def __init__(self, inner: Callable[[], asyncio.Protocol], admission: Admission) -> None:
        self._make_inner = inner
        self._admission = admission
        self._inner: asyncio.Protocol | None = None
        self._raw: asyncio.Transport | None = None
        self._ip: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        self.deadline = 0.0
        # Set once the request reached its handler, whose own timeout answers it.
        self.handling = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = self._raw = cast(asyncio.Transport, transport)
        peer = raw.get_extra_info("peername")
        ip = str(peer[0]) if peer else "unknown"
        admission = self._admission
        refusal = admission.connections.opened(ip)
        if refusal is not None:
            admission.connections.closed(ip)
            _log.warning("http_connection_refused", listener=admission.name, client=ip,
                         cap="per_client" if refusal == TOO_MANY_FROM_YOU else "total")
            raw.abort()
            return
        self._ip = ip
        admission.live.add(self)
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + admission.timeout
        self._timer = loop.call_at(self.deadline, self._expire)
        if admission.tls is None:
            self._attach(raw)
        else:
            raw.pause_reading()  # nothing reaches aiohttp before the handshake is done
            self._handshake = loop.create_task(self._start_tls(raw, admission.tls))

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    # -- ours

    def abort(self) -> None:
        """Drop the connection now, without a TLS goodbye (the peer may never answer)."""
        if self._raw is not None:
            self._raw.abort()
        if self._handshake is not None:
            self._handshake.cancel()

    async def _start_tls(self, raw: asyncio.Transport, tls: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(
                raw, self, tls, server_side=True,
                ssl_handshake_timeout=max(0.1, self.deadline - loop.time()))
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, asyncio.CancelledError):
            # A failed or cut handshake is the client's trouble; start_tls has closed the
            # socket, and no connection_lost comes for a connection still in handshake.
            self._release()
            return
        if transport is None:
            self._release()
            return
        self._attach(transport)

    def _attach(self, transport: asyncio.Transport) -> None:
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        if self.handling:
            self._timer = asyncio.get_running_loop().call_later(GRACE, self.abort)
        else:
            self.abort()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ip is not None:
            self._admission.connections.closed(self._ip)
            self._ip = None
        self._admission.live.discard(self)
