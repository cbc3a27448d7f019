"""Per-connection and per-command costs in the SMTP front end, one core, no I/O:
building a session object, and reading a MAIL/RCPT path (ours against aiosmtpd's).

    .venv/bin/python bench/micro.py
"""

from __future__ import annotations

import asyncio
import timeit

from aiosmtpd.smtp import SMTP

from relay.smtp.server import RelaySMTP


def per_call_us(f: object, n: int) -> float:
    return timeit.timeit(f, number=n) / n * 1e6  # type: ignore[arg-type]


def main() -> None:
    loop = asyncio.new_event_loop()
    handler = object()

    def session() -> RelaySMTP:
        return RelaySMTP(handler, starttls_required=False, implicit_tls=False, loop=loop)

    def plain_session() -> SMTP:
        return SMTP(handler, loop=loop)

    smtp = session()
    path = "<load@example.com> SIZE=5120"
    print("| what | per call |\n|---|---|")
    print(f"| RelaySMTP session object | {per_call_us(session, 5000):.1f} us |")
    print(f"| aiosmtpd SMTP session object | {per_call_us(plain_session, 5000):.1f} us |")
    print(f"| path read by RelaySMTP._getaddr | "
          f"{per_call_us(lambda: smtp._getaddr(path), 50000):.2f} us |")
    print(f"| path read by aiosmtpd's _getaddr | "
          f"{per_call_us(lambda: SMTP._getaddr(smtp, path), 20000):.2f} us |")
    loop.close()


if __name__ == "__main__":
    main()
