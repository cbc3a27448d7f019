"""``ses-relay doctor``: every check that tells an operator whether mail would flow.

The checks run in a fixed order, local ones first (configuration, users, TLS, listeners,
queue), then the AWS ones (credentials, account, sender identities, configuration sets),
and each prints one row or a few: OK, WARN (mail flows, but something deserves attention)
or FAIL (something would stop mail). Every non-OK row carries a ``fix:`` line. A failing
AWS call becomes a row with the hint from ``transports.errors.classify`` and the next
check still runs; no exception ever reaches the operator as a traceback.

The doctor only reads: it never creates the queue directory or changes anything in SES,
so running it as root next to a live relay is safe.
"""

from __future__ import annotations

import functools
import time
from typing import TextIO

from relay.config import Config
from relay.doctor.aws import aws_checks
from relay.doctor.local import LOCAL_CHECKS
from relay.doctor.report import FAIL, OK, Context, Report, Row, guarded
from relay.smtp import plainlines

__all__ = ["plainlines", "run"]


async def run(config: Config, out: TextIO, *, now: float | None = None) -> int:
    """Run every check, print the table to *out*; 1 if any check FAILed, else 0."""
    ctx = Context(config, time.time() if now is None else now)
    report = Report(out)
    report.header()
    for name, local in LOCAL_CHECKS:
        report.add(guarded(name, functools.partial(local, ctx)))
    if config.delivery.transport == "outbox":
        report.add([Row(OK, "AWS checks", "not applicable: transport outbox does not call AWS")])
    else:
        await aws_checks(ctx, report)
    report.summary()
    return 1 if report.counts[FAIL] else 0


