"""The listeners' TLS context, and a certificate replaced on reload without a gap.

A listener is given one ``ssl.SSLContext`` when it starts (``create_server(ssl=...)``,
aiosmtpd's ``tls_context``, or the protocol's own ``start_tls``), and keeps that object.
Loading a new certificate into it in place is not atomic: ``load_cert_chain`` with a key
that does not match (or a key file half-written by a renewal) raises after it has already
replaced the certificate, and every handshake after that fails. So a reload builds a
complete new context aside, and the listeners' context moves each handshake onto the
newest good one from its SNI callback (``SSLObject.context`` may be set there: Python's
documented way to pick a certificate per handshake). The callback runs for every
ClientHello, with or without a server name, whatever started TLS on the connection;
sessions already up keep the context they were made with. (In place would also keep the
old certificate beside a new one of another key type, RSA then ECDSA: OpenSSL holds one
per type, and a client may still be given the old one.)
"""

from __future__ import annotations

import ssl
from pathlib import Path

from relay.errors import ConfigError


def build(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context (TLS 1.2 minimum, the system's default ciphers) with *cert* and
    *key*; ConfigError naming the files if they cannot be read or do not belong together."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    asked: list[bool] = []

    def no_passphrase() -> bytes:
        # Without a callback OpenSSL prompts on the terminal, which blocks a start-up or
        # a reload for as long as nobody answers.
        asked.append(True)
        return b""

    try:
        ctx.load_cert_chain(str(cert), str(key), password=no_passphrase)
    except OSError as e:  # ssl.SSLError is an OSError too
        raise ConfigError([f"tls: {cert}, {key}: {_reason(e, asked=bool(asked))}"]) from None
    return ctx


def _reason(e: OSError, *, asked: bool) -> str:
    if asked:
        return "the key is encrypted with a passphrase; ses-relay needs it unencrypted"
    if isinstance(e, ssl.SSLError):
        if e.reason == "KEY_VALUES_MISMATCH":
            return "the key does not belong to the certificate"
        # "PEM lib" and the like: a file that is empty, cut short or not PEM at all.
        return f"not a complete PEM certificate and key ({e.reason or e})"
    where = f" ({e.filename})" if e.filename else ""
    return f"cannot read{where}: {e.strerror or e}"


class ServerTLS:
    """The context the listeners hold, and the certificate its handshakes get."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = build(cert, key)
        self._current = self.context

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def replace(self, new: ssl.SSLContext) -> None:
        """New handshakes from now on use *new* (a complete context from build())."""
        self._current = new
        # Only from the first new certificate on: CPython decodes the client's server
        # name as ASCII before calling back, so a ClientHello with a non-ASCII name (not
        # allowed by RFC 6066) fails its handshake with an alert, and Python prints
        # "Exception ignored" to stderr. Until a reload, handshakes go as they always did.
        self.context.sni_callback = self._select

    def _select(self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                ctx: ssl.SSLContext) -> None:
        if conn.context is not self._current:
            conn.context = self._current
