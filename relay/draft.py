"""A message being received: in memory while it is small, spilled to its file in tmp/
when it grows; Spool.commit makes it durable."""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO

from relay import queueentry
from relay.queueentry import Envelope

_WRITE_BUFFER = 64 * 1024
_SPILL = 256 * 1024
FILE_MODE = 0o666  # what open() gives, less the umask


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Draft:
    """A message being received. Write to it, then ``Spool.commit`` it or ``abort`` it."""

    def __init__(self, path: str, queue_id: str) -> None:
        self.queue_id = queue_id
        self.path = path
        self.size = 0
        self.error: OSError | None = None
        # Most mail is small: it stays in memory until commit, which then creates and
        # writes the file in one go, and fsyncs it on a worker thread. A message that outgrows
        # _SPILL goes to its file as it arrives, so memory per upload stays bounded.
        self._buffer = bytearray()
        self._file: BinaryIO | None = None
        self._fd: int | None = None  # the file, written out unbuffered at commit
        self._spilled = False
        # Spool.commit has it: it finishes (into active/), or cleans up, itself.
        self.committing = False

    def write(self, data: bytes) -> None:
        # A buffered write to the page cache costs microseconds; the expensive part (fsync)
        # happens once, off the event loop, in commit.
        #
        # A failed write (a full disk) is remembered, not raised: the SMTP side must read
        # the rest of DATA before it answers, or the message's remaining lines would be
        # read as commands. commit() then fails, and the client gets a 4xx.
        self.size += len(data)
        if self.error is not None:
            return
        if not self._spilled:
            self._buffer += data
            if len(self._buffer) <= _SPILL:
                return
            data, self._buffer = bytes(self._buffer), bytearray()
            self._spilled = True
            try:
                self._file = open(self.path, "xb", buffering=_WRITE_BUFFER)  # noqa: SIM115
            except OSError as e:
                self.error = e
                return
        try:
            assert self._file is not None
            self._file.write(data)
        except OSError as e:
            self.error = e

    def _write_out(self, envelope: Envelope) -> int:
        """Write what is left and the envelope trailer; the open descriptor, to fsync."""
        if self.error is not None:
            raise self.error
        trailer = queueentry.trailer(envelope)
        if self._file is not None:  # spilled: most of it is in the file already
            self._file.write(trailer)
            self._file.flush()
            return self._file.fileno()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     FILE_MODE)
        try:
            _write_all(fd, self._buffer + trailer)
        except OSError:
            os.close(fd)
            raise
        self._buffer = bytearray()
        self._fd = fd
        return fd

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Throw the draft away; safe to call more than once, and a no-op once a commit
        has it (the client hanging up mid-commit must not pull the file out from under
        the fsync)."""
        if not self.committing:
            self._discard()

    def _discard(self) -> None:
        self._buffer = bytearray()
        with contextlib.suppress(OSError):
            self._close_file()
        # Not only FileNotFoundError: when tmp/ itself is broken (gone, not a directory),
        # there is nothing to remove either, and the commit's own error is what matters.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
