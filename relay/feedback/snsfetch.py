"""Fetching SNS URLs: signing certificates and subscription confirmations.

Asynchronous (aiohttp), a few at a time, each within FETCH_TIMEOUT: never in asyncio's
default thread pool, which AUTH's password hashing needs, and which a certificate host
that hangs would otherwise fill (eight such notifications stalled every login). TLS is
verified against the system trust store; redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import aiohttp

from relay.errors import RelayError

# A PEM certificate is about 2 kB and a ConfirmSubscription answer less than 1 kB.
MAX_FETCH_BYTES = 64 * 1024
FETCH_TIMEOUT = 10.0
# Fetches under way at once; more wait their turn (within the webhook's request deadline).
FETCH_CONCURRENCY = 4


class FetchFailed(RelayError):
    """A GET did not give a complete 200 answer in time; the text says what happened."""


class Fetcher:
    """GETs an SNS URL over TLS verified against the system trust store (``SSL_CERT_FILE``
    is honoured, as are the proxy variables), without following redirects, at most
    FETCH_CONCURRENCY at once, each within FETCH_TIMEOUT (waiting for a turn included);
    FetchFailed on failure."""

    def __init__(self, concurrency: int = FETCH_CONCURRENCY,
                 timeout: float = FETCH_TIMEOUT) -> None:
        self.concurrency = concurrency
        self.timeout = timeout
        self._slots: asyncio.Semaphore | None = None

    async def get(self, url: str) -> bytes:
        host = urlsplit(url).netloc
        if self._slots is None:  # made on the loop that uses it
            self._slots = asyncio.Semaphore(self.concurrency)
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                return await _get(url)
        except TimeoutError:
            raise FetchFailed(f"GET {host} failed: timed out") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise FetchFailed(f"GET {host} failed: {_why(e)}") from None


def _why(e: Exception) -> str:
    """What went wrong, without aiohttp's wrapping (which names the SSL context object)."""
    cause: Exception = e
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        cause = e.certificate_error
    elif isinstance(e, aiohttp.ClientConnectorError):
        cause = e.os_error
    return str(cause) or type(cause).__name__


async def _get(url: str) -> bytes:
    # A fresh context per fetch reads the trust store (and SSL_CERT_FILE) as it is now;
    # fetches are rare because certificates are cached. Reading and parsing the system
    # bundle takes ~20 ms: in a thread, not on the loop (a local file, so it cannot hang
    # the thread as a certificate host could).
    context = await asyncio.to_thread(ssl.create_default_context)
    async with aiohttp.ClientSession(trust_env=True) as session, \
            session.get(url, ssl=context, allow_redirects=False) as response:
        # SNS serves certificates and confirmations directly; a redirect would lead away
        # from the host we checked.
        if response.status != 200:
            raise FetchFailed(f"GET {urlsplit(url).netloc} failed: HTTP {response.status}")
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > MAX_FETCH_BYTES:
                raise FetchFailed(f"GET {urlsplit(url).netloc}: answer too large")
    return bytes(body)
