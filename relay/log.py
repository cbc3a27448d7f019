"""Logging setup: structlog, JSON lines for journald and files, pretty output on a TTY.

Everything the relay logs goes through structlog with context bound per task (contextvars),
so a session's peer and a message's queue id follow every line without being passed around.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog once per process. ``fmt`` is auto, json or console."""
    out = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if fmt == "console"
                     else structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # Not PrintLoggerFactory: print() writes the line and its newline apart, two
        # write(2)s per line when stdout is unbuffered (PYTHONUNBUFFERED, as under
        # systemd units that set it); WriteLogger writes both in one (`strace -f -c -e
        # trace=write -p PID` of the relay under bench/perconn.py --profiles plain shows
        # one write per log line).
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    global _LOGGERS_BOUND  # the one switch, set here
    _LOGGERS_BOUND = True
    for logger in _LOGGERS:
        logger.rebind()
    # aiosmtpd logs every command line (including AUTH exchanges at debug level) through the
    # standard library; keep it quiet unless asked, so no credential can reach a log.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
    logging.getLogger("mail.log").propagate = level == "debug"


class _ModuleLogger:
    """A module's logger, bound once per ``configure()``.

    structlog's lazy proxy (what ``get_logger`` returns) builds a new bound logger for
    every event, even one its level filters out: a few microseconds each time, several
    times per message (1.8% of the event loop's samples: py-spy under bench/loadprofile.py,
    bench/RESULTS.md). Its own
    ``cache_logger_on_first_use`` would keep the first configuration for good, and the
    relay configures again on SIGHUP.
    """

    __slots__ = ("_bound", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None

    def rebind(self) -> None:
        self._bound = None

    def __getattr__(self, attr: str) -> Any:
        bound = self._bound
        if bound is None:
            bound = structlog.get_logger(self._name)
            if _LOGGERS_BOUND:  # not before configure(): structlog's defaults stay lazy
                bound = self._bound = bound.bind()
        return getattr(bound, attr)


_LOGGERS: list[_ModuleLogger] = []  # one per module, for as long as the process lives
# Set by configure(); not structlog.is_configured(), which structlog.testing.capture_logs
# sets too, and loggers bound then would keep structlog's default output for good.
_LOGGERS_BOUND = False


def get(name: str) -> Any:
    """A logger for one module."""
    logger = _ModuleLogger(name)
    _LOGGERS.append(logger)
    return logger


def bind(**fields: Any) -> None:
    """Fields on every event from here on (the worker number of a relay process)."""
    structlog.contextvars.bind_contextvars(**fields)
