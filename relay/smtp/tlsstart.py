"""Implicit TLS (port 465) started by the session itself, on a plain TCP connection.

Why not the event loop's ``create_server(ssl=...)``: that does the handshake before the
protocol sees the connection, so (1) a balancer's PROXY header, which comes before the
handshake, would be read as TLS, and (2) a client stuck in the handshake would hold a
socket without being counted against the connection limits. Here the connection is
counted when it is accepted, the PROXY header (if any) is read in clear, and then TLS is
layered on the same transport, exactly as aiosmtpd does it for STARTTLS (its
``smtp_STARTTLS``): so aiosmtpd sees TLS (``session.ssl``, ``_tls_protocol``) as it does
after STARTTLS, and offers AUTH only once TLS is up.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.smtp.edge import EdgeSMTP


# What the TLS layer asks the socket for at a time. asyncio's is 256 KiB
# (SSLProtocol.max_size): a client uploading a large message fills that much ciphertext,
# which the layer decrypts at once into its 256 KiB incoming buffer and hands on as one
# more 256 KiB chunk, about 1 MB a connection. 50 clients uploading 10 MB each over TLS
# after the small-message load (bench/upload_memory.py --preload 3000 --transport sesv2
# --delivery-process separate): the SMTP process's peak RSS 130 MB at 256 KiB, 98 MB at
# 64 KiB, 92 MB at 32 KiB (bench/RESULTS.md). Two TLS records; the socket is read no
# less often than the records arrive.
_READ_SIZE = 32 * 1024


def read_in_small_slices(tls: sslproto.SSLProtocol) -> None:
    """Make *tls* read the socket _READ_SIZE bytes at a time.

    asyncio has no public setting for it (set_read_buffer_limits bounds the decrypted
    side only, and did not lower the peak: 128 MB); the class attribute and the buffer
    it sizes are the one place. Left alone where a Python's SSLProtocol has neither.
    """
    if not hasattr(tls, "_ssl_buffer") or getattr(tls, "max_size", 0) <= _READ_SIZE:
        return
    tls.max_size = _READ_SIZE  # type: ignore[misc]  # a class attribute, set per instance
    tls._ssl_buffer = bytearray(_READ_SIZE)
    tls._ssl_buffer_view = memoryview(tls._ssl_buffer)  # type: ignore[attr-defined]


async def start(smtp: EdgeSMTP, context: ssl.SSLContext, seconds: float) -> None:
    """Do the server's side of the TLS handshake on *smtp*'s connection, within
    *seconds*; raise OSError (ssl.SSLError, ConnectionError) if it fails.

    Bytes the client sent after its PROXY header, already in the session's reader (a
    balancer forwards the ClientHello at once), are handed to the TLS layer first.
    """
    loop = smtp.loop
    raw = smtp.transport
    assert isinstance(raw, asyncio.Transport)
    reader = smtp._reader
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    early = bytes(buffer)
    buffer.clear()
    waiter = loop.create_future()
    tls = sslproto.SSLProtocol(loop, smtp, context, waiter, server_side=True,
                               ssl_handshake_timeout=seconds)  # type: ignore[arg-type]  # typeshed: int
    # As aiosmtpd's smtp_STARTTLS: its connection_made sees _original_transport and
    # takes the TLS transport over when the handshake is done.
    smtp._tls_protocol = tls
    read_in_small_slices(tls)
    smtp._original_transport = raw
    raw.set_protocol(tls)
    smtp.transport = tls._app_transport
    tls.connection_made(raw)
    while early:
        room = tls.get_buffer(len(early))
        n = min(len(room), len(early))
        room[:n] = early[:n]
        tls.buffer_updated(n)
        early = early[n:]
    reader._maybe_resume_transport()  # type: ignore[attr-defined]  # paused when it filled
    try:
        await waiter
    except asyncio.CancelledError:
        raw.abort()
        raise
    if raw.is_closing():  # lost with a clean EOF: the waiter is then woken without error
        raise ConnectionResetError("connection closed during the TLS handshake")
