"""A SendEmail request body that is never whole in memory: the JSON document around the
message's base64, encoded a slice at a time as the socket takes it.

Built whole, the document of a 10 MB message held the message, its base64 (13.3 MB) and
the document joining them (13.3 MB more): 3.7 bytes per byte of message, so a delivery of
one 10 MB message took 37 MB of the in-flight budget and ten of them could not go at
once (bench/upload_memory.py). Here only the message and one slice of base64 (256 KiB)
are held, and a message left in its queue file (FileBlob) is not held at all: it is read
a slice at a time as it is encoded. The digest the signature needs is computed by a first
pass of the same encoding (pybase64 encodes at several GB/s, so the second pass costs
about 0.06 ms per MB: bench/micro.py), and a retry on a new connection encodes the slices again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pybase64

from relay.queueentry import FileBlob

# A multiple of 3, so each slice encodes without padding except the last: its base64 is
# http1's 256 KiB write slice.
_SLICE = 3 * 64 * 1024


class Base64Document:
    """*prefix*, the base64 of *blob*, *suffix*: as bytes slices, as often as asked."""

    def __init__(self, prefix: bytes, blob: bytes | memoryview | FileBlob,
                 suffix: bytes) -> None:
        self._prefix, self._suffix = prefix, suffix
        self._blob = blob if isinstance(blob, FileBlob) else memoryview(blob)
        self.length = len(prefix) + 4 * ((len(self._blob) + 2) // 3) + len(suffix)

    def __len__(self) -> int:
        return self.length

    def chunks(self) -> Iterator[bytes]:
        yield self._prefix
        blob = self._blob
        pieces = (blob.slices(_SLICE) if isinstance(blob, FileBlob)
                  else (blob[start:start + _SLICE] for start in range(0, len(blob), _SLICE)))
        for piece in pieces:
            yield pybase64.b64encode(piece)
        yield self._suffix

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()

    def join(self) -> bytes:
        """The whole document (the proxy path, through aiohttp, takes bytes)."""
        return b"".join(self.chunks())
