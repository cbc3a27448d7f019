"""The relay's own exceptions: one flat hierarchy that every foreign error is mapped into."""

from __future__ import annotations

from collections.abc import Sequence


class RelayError(Exception):
    """Base class of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid; ``problems`` lists each one as ``key.path: message``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems) or ["invalid configuration"]
        super().__init__("; ".join(self.problems))


class SpoolError(RelayError):
    """The queue could not store or read a message (disk full, I/O error, permissions)."""


class CorruptEntry(SpoolError):
    """A queue entry is unreadable or incomplete; it is moved aside, never delivered."""


class Busy(SpoolError):
    """A queue entry is locked by another process (a delivery, or an operator's command)."""


class UsersFileError(RelayError):
    """The users file cannot be read, parsed or written."""


class DeliveryError(RelayError):
    """A transport could not deliver a message.

    ``permanent`` says whether retrying can help; ``code`` is the upstream error code
    (``MessageRejected``, ``Throttling``, ``ConnectionError``...), ``hint`` a sentence an
    operator can act on. The message text is the upstream's own, for the log only.
    """

    def __init__(self, message: str, *, permanent: bool, code: str, hint: str = "",
                 throttle: str | None = None, unsent: bool = False, status: int = 0) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        self.hint = hint
        # "rate" when SES refused for the send rate, "daily" for the 24-hour quota: the
        # scheduler slows down or pauses instead of stepping up the message's backoff.
        self.throttle = throttle
        # The request surely did not succeed (no connection was made, or SES answered with
        # an error): only such a failure may move the message to another region.
        self.unsent = unsent
        self.status = status  # the HTTP status SES answered with; 0 when it did not answer
        # The region a send went to when it may have reached SES: its retries stay there
        # (relay/transports/regions.py), so a region switch never sends it twice.
        self.pin: str | None = None
