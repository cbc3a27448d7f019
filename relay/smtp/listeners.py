"""Binding listeners: one asyncio server per configured address, port and TLS mode."""

from __future__ import annotations

import asyncio
import ssl

from relay.config import Limits, Listener
from relay.smtp.handler import Handler
from relay.smtp.server import RelaySMTP

# Postfix's smtpd_junk_command_limit is 100; a session needs few EHLOs, AUTHs, STARTTLSs.
COMMAND_LIMITS = {"NOOP": 100, "RSET": 100, "VRFY": 100, "HELP": 100, "EXPN": 10,
                  "EHLO": 10, "HELO": 10, "STARTTLS": 2, "AUTH": 10, "*": 1_000_000}
# Seconds for a balancer's PROXY header, and for an implicit TLS handshake (at most the
# idle timeout): a connection counts against the limits while it waits.
OPENING_TIMEOUT = 30.0


class Sessions:
    """A listener's protocol factory: each connection gets a copy of the template session
    (see RelaySMTP.spawn). SIGHUP rebuilds the template with the new limits (timeouts,
    message size) and TLS context; sessions already open keep theirs."""

    def __init__(self, listener: Listener, handler: Handler, hostname: str,
                 tls: ssl.SSLContext | None, data_size_limit: int, limits: Limits) -> None:
        self.listener = listener
        self._handler = handler
        self.rebuild(hostname=hostname, tls=tls, data_size_limit=data_size_limit,
                     limits=limits)

    def rebuild(self, *, hostname: str, tls: ssl.SSLContext | None, data_size_limit: int,
                limits: Limits) -> None:
        self._template = _session(self._handler, hostname, tls, data_size_limit, limits,
                                  self.listener, asyncio.get_running_loop())

    def __call__(self) -> RelaySMTP:
        return self._template.spawn()


async def start(listener: Listener, handler: Handler, *, hostname: str,
                tls: ssl.SSLContext | None, data_size_limit: int,
                limits: Limits, reuse_port: bool = False
                ) -> tuple[asyncio.Server, Sessions]:
    loop = asyncio.get_running_loop()
    # Built once through aiosmtpd's constructor; each connection gets a copy (see spawn).
    sessions = Sessions(listener, handler, hostname, tls, data_size_limit, limits)
    server = await loop.create_server(sessions, host=listener.address, port=listener.port,
                                      # Plain TCP even for implicit TLS: the session
                                      # starts TLS itself (relay/smtp/edge.py).
                                      reuse_address=True,
                                      # Several relay processes (workers > 1) each bind
                                      # the port; the kernel spreads connections between
                                      # them.
                                      reuse_port=reuse_port)
    return server, sessions


def _session(handler: Handler, hostname: str, tls: ssl.SSLContext | None,
             data_size_limit: int, limits: Limits, listener: Listener,
             loop: asyncio.AbstractEventLoop) -> RelaySMTP:
    implicit = listener.tls == "implicit"
    starttls = listener.tls == "starttls"
    return RelaySMTP(
        handler,
        starttls_required=starttls,
        hostname=hostname,  # never socket.getfqdn(): it can block for seconds
        ident="ESMTP",
        data_size_limit=data_size_limit,
        # SES has no SMTPUTF8 and it is not advertised (RelaySMTP drops it from EHLO), but
        # with aiosmtpd's strict ASCII mode a non-ASCII address would get "500 strict ASCII
        # mode" before any hook runs; decoding lets the handler answer 553 5.6.7 instead.
        enable_SMTPUTF8=True,
        tls_context=tls if starttls else None,
        require_starttls=False,  # enforced by RelaySMTP, see its docstring
        timeout=limits.idle_timeout,
        data_timeout=limits.data_timeout,
        min_data_rate=limits.min_data_rate,
        command_call_limit=COMMAND_LIMITS,
        # PROXY headers are read by the session, from listener.proxy_from only (edge.py).
        proxy_from=listener.proxy_from if listener.proxy_protocol else (),
        implicit_tls_context=tls if implicit else None,
        opening_timeout=min(limits.idle_timeout, OPENING_TIMEOUT),
        auth_required=listener.auth == "required",
        # AUTH only once TLS is on: after STARTTLS, or after the implicit handshake (which
        # the session does itself, as aiosmtpd does STARTTLS, so aiosmtpd sees it).
        auth_require_tls=True,
        loop=loop,
    )
