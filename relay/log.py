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
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # aiosmtpd logs every command line (including AUTH exchanges at debug level) through the
    # standard library; keep it quiet unless asked, so no credential can reach a log.
    logging.getLogger("mail.log").setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
    logging.getLogger("mail.log").propagate = level == "debug"


def get(name: str) -> Any:
    """A logger for one module; events carry ``logger=name``."""
    return structlog.get_logger(name)


def bind(**fields: Any) -> None:
    """Fields on every event from here on (the worker number of a relay process)."""
    structlog.contextvars.bind_contextvars(**fields)
