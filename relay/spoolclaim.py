"""A claim: an active message locked by the delivery worker sending it."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from relay.errors import SpoolError
from relay.queueentry import DeliveryState, Envelope, FileBlob, parse_entry, read_entry, read_meta

if TYPE_CHECKING:
    from relay.spool import Spool

READ_WHOLE = 256 * 1024  # entries up to this size are read in one system call


class Claim:
    """An active message locked by the worker delivering it."""

    def __init__(self, spool: Spool, queue_id: str, f: BinaryIO, size: int) -> None:
        self.spool = spool
        self.queue_id = queue_id
        self._file = f
        self.size = size

    @property
    def small(self) -> bool:
        """Small enough to read in one system call (on the event loop, when the message
        was just written and is in the page cache: see Scheduler._deliver)."""
        return self.size <= READ_WHOLE

    def read(self) -> tuple[Envelope, bytes, DeliveryState]:
        """The message, its envelope, and its delivery state."""
        try:
            if self.small:
                envelope, data = parse_entry(os.pread(self._file.fileno(), self.size, 0),
                                              self.queue_id)
            else:
                envelope, data = read_entry(self._file, self.queue_id)
        except OSError as e:
            raise SpoolError(f"cannot read {self.queue_id}: {e}") from e
        return envelope, data, self.spool.read_state(self.queue_id)

    def read_blob(self) -> tuple[Envelope, FileBlob, DeliveryState]:
        """As ``read``, with the message left in the file, to be read as it is sent."""
        try:
            envelope, size = read_meta(self._file, self.queue_id)
        except OSError as e:
            raise SpoolError(f"cannot read {self.queue_id}: {e}") from e
        return envelope, FileBlob(self._file.fileno(), size), self.spool.read_state(
            self.queue_id)

    def remove(self) -> None:
        """Forget a delivered message, and let go of it. Not fsynced: a crash here
        re-sends, never loses."""
        s = self.spool
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{s._active}/{self.queue_id}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{s._state}/{self.queue_id}.json")
        self.release()

    def fail(self, record: dict[str, Any]) -> None:
        """Keep a permanently failed message in ``failed/`` with why it failed."""
        s = self.spool
        (s.failed / f"{self.queue_id}.json").write_bytes(json.dumps(record, indent=1).encode())
        s._move(s.active / self.queue_id, s.failed / self.queue_id)
        (s.state / f"{self.queue_id}.json").unlink(missing_ok=True)

    def quarantine(self) -> None:
        s = self.spool
        s._move(s.active / self.queue_id, s.corrupt / self.queue_id)
        (s.state / f"{self.queue_id}.json").unlink(missing_ok=True)

    def release(self) -> None:
        """Drop the lock; idempotent."""
        if not self._file.closed:
            self._file.close()


def size_if_same_file(f: BinaryIO, path: str | Path) -> int | None:
    """The open file's size if *path* still names it, else None."""
    opened = os.fstat(f.fileno())
    try:
        return opened.st_size if opened.st_ino == os.stat(path).st_ino else None
    except FileNotFoundError:
        return None
