"""queue.min_free: refuse mail at MAIL FROM while the queue's file system is nearly full,
as Postfix's queue_minfree does, rather than take a whole upload and answer 451 after it.

Postfix (smtpd_check_size) answers "452 4.3.1 Insufficient system storage" when the free
space is below queue_minfree, or below queue_minfree plus the message's SIZE= (it also
refuses a SIZE= over half the free space; with our default minimum, which is at least twice
any SIZE= we accept, that rule never decides, so it is left out). Postfix's documented
floor is 1.5 x message_size_limit; ours, when queue.min_free is not set, is two maximal
messages (2 x the largest message accepted): one being received plus one of margin for the
queue's own records (envelope, state, the limits and running files beside them).

Free space is ``f_bavail`` (what an unprivileged process may use, not the root reserve),
asked of os.statvfs at most once per ``cache_seconds``: a MAIL pays a clock read, not a
system call (``.venv/bin/python bench/userlimits.py``: p50 0.22 us cached against 2.2 us
for statvfs on ext4 here; more on a network file system). The answer follows the disk
by itself: space freed is seen within a second, with no restart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from relay import log
from relay.policy import ACCEPT, Verdict

NO_SPACE = "452 4.3.1 Insufficient system storage, try again later"
_log = log.get("queue")


class QueueSpace:
    def __init__(self, directory: Path, min_free: int, *, cache_seconds: float = 1.0,
                 statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.min_free = min_free
        self._cache_seconds = cache_seconds
        self._statvfs = statvfs
        self._clock = clock
        self._free: int | None = None
        self._asked = -float("inf")

    def free(self) -> int | None:
        """Bytes free for the queue now (cached); None when the file system cannot say."""
        now = self._clock()
        if now - self._asked >= self._cache_seconds:
            self._asked = now
            try:
                st = self._statvfs(self.directory)
                self._free = st.f_bavail * st.f_frsize
            except OSError as e:
                # Not a reason to refuse: a queue that cannot take the message answers
                # 451 at its commit anyway, and the log says why.
                _log.warning("queue_space_unknown", directory=str(self.directory),
                             error=e.strerror)
                self._free = None
        return self._free

    def check(self, size: int | None) -> Verdict:
        """At MAIL FROM: room for mail, and for a message of *size* (SIZE=) if given."""
        free = self.free()
        if free is None or self.min_free <= 0:
            return ACCEPT
        if free < self.min_free:
            return Verdict(NO_SPACE, f"queue file system: {free} bytes free, below "
                                     f"queue.min_free {self.min_free}")
        if size is not None and size > free - self.min_free:
            return Verdict(NO_SPACE, f"queue file system: SIZE={size} over the "
                                     f"{free - self.min_free} bytes free above queue.min_free")
        return ACCEPT


def declared_size(mail_options: list[str]) -> int | None:
    """The SIZE= of MAIL FROM's parameters (aiosmtpd has checked that it is digits)."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None
