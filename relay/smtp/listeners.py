"""Binding listeners: one asyncio server per configured address, port and TLS mode."""

from __future__ import annotations

import asyncio
import ssl
import warnings

from relay.config import Limits, Listener
from relay.smtp.handler import Handler
from relay.smtp.server import RelaySMTP

# Postfix's smtpd_junk_command_limit is 100; a session needs few EHLOs, AUTHs, STARTTLSs.
COMMAND_LIMITS = {"NOOP": 100, "RSET": 100, "VRFY": 100, "HELP": 100, "EXPN": 10,
                  "EHLO": 10, "HELO": 10, "STARTTLS": 2, "AUTH": 10, "*": 1_000_000}


async def start(listener: Listener, handler: Handler, *, hostname: str,
                tls: ssl.SSLContext | None, data_size_limit: int,
                limits: Limits, reuse_port: bool = False) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    implicit = listener.tls == "implicit"
    # aiosmtpd warns, for every connection, that AUTH is allowed without TLS; on implicit
    # TLS it cannot see that TLS is on, which is the very reason auth_require_tls is off
    # there. Filtered once here, not with catch_warnings per connection (process-wide
    # state, changed and restored on the hot path).
    warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS",
                            module="aiosmtpd")

    # Built once through aiosmtpd's constructor; each connection gets a copy (see spawn).
    first = _session(handler, hostname, tls, data_size_limit, limits, listener, loop)
    return await loop.create_server(first.spawn, host=listener.address, port=listener.port,
                                    ssl=tls if implicit else None, reuse_address=True,
                                    # Several relay processes (workers > 1) each bind the
                                    # port; the kernel spreads connections between them.
                                    reuse_port=reuse_port)


def _session(handler: Handler, hostname: str, tls: ssl.SSLContext | None,
             data_size_limit: int, limits: Limits, listener: Listener,
             loop: asyncio.AbstractEventLoop) -> RelaySMTP:
    implicit = listener.tls == "implicit"
    starttls = listener.tls == "starttls"
    return RelaySMTP(
        handler,
        starttls_required=starttls,
        implicit_tls=implicit,
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
        proxy_protocol_timeout=10 if listener.proxy_protocol else None,
        auth_required=listener.auth == "required",
        # On implicit TLS aiosmtpd cannot see the TLS layer and would refuse AUTH
        # with 538; TLS is always on there. On STARTTLS, AUTH waits for TLS.
        auth_require_tls=not implicit,
        loop=loop,
    )
