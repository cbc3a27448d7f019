"""How much of what a DATA stream holds can be taken without a line-by-line look.

A plain line is one that DATA's line checks (``RelaySMTP._receive_data``) pass unchanged:
it does not start with a dot (stuffing, or the end of DATA), holds no CR, LF or NUL of its
own, ends with CRLF and is at most ``MAX_LINE`` characters long before it. Nearly every line
of a real message is plain, so DATA takes runs of them whole.

The test is compiled (``_plainlines.c``, built at install) where a C compiler and Python's
headers were there, and the regex below otherwise: the same answer, 7-16x slower per
byte (bench/micro.py; 16x against the SSE2 scan of x86-64). ``COMPILED`` says which one
this process uses; ``ses-relay doctor`` reports it. The regex is also the reference the
compiled one is tested against.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# SMTP forbids lines over 998 characters plus CRLF; SES refuses them too.
MAX_LINE = 998

PLAIN_LINES = re.compile(
    rb"(?:(?:[^.\r\n\x00][^\r\n\x00]{0,%d}+)?\r\n)*+" % (MAX_LINE - 1))


def by_regex(buffer: bytes | bytearray, end: int) -> int:
    """The length of the run of whole plain lines at the start of ``buffer[:end]``."""
    return PLAIN_LINES.match(buffer, 0, end).end()  # type: ignore[union-attr]  # always matches


def _compiled() -> Callable[[bytes | bytearray, int], int] | None:
    try:
        from relay.smtp._plainlines import plain_lines
    except ImportError:  # built without a C compiler or Python's headers
        return None

    def compiled(buffer: bytes | bytearray, end: int) -> int:
        return plain_lines(buffer, end, MAX_LINE)

    return compiled


_fast = _compiled()
COMPILED = _fast is not None
plain_prefix: Callable[[bytes | bytearray, int], int] = _fast or by_regex
