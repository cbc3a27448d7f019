"""Per-connection, per-command and per-send costs, one core, no I/O: building a session
object with the relay's handler, reading a MAIL/RCPT path (ours against aiosmtpd's),
signing a SendEmail (ours against botocore's SigV4Auth), building and hashing its JSON
document, and taking 1 MB of plain DATA lines off a stream reader (the compiled scan and
the regex fallback, against one readuntil() per line, the reader alone, without the
per-line checks), a login from the success cache against scrypt, and a From: header
read by mailboxes' shortcut and by the strict parser.

    .venv/bin/python bench/micro.py
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import timeit

from aiosmtpd.smtp import SMTP
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from relay.smtp import plainlines, server
from relay.smtp.handler import Handler
from relay.smtp.server import RelaySMTP, _take_plain_lines
from relay.transports.sesv2http import PATH, Signer, _wire

URL = "https://email.us-east-1.amazonaws.com" + PATH
BODY = b"x" * 7000  # a 5 KB message, base64 in its JSON document


def per_call_us(f: object, n: int) -> float:
    return timeit.timeit(f, number=n) / n * 1e6  # type: ignore[arg-type]


def main() -> None:
    loop = asyncio.new_event_loop()
    handler = Handler.__new__(Handler)  # the class is what aiosmtpd inspects

    def session() -> RelaySMTP:
        return RelaySMTP(handler, starttls_required=False, loop=loop,
                         hostname="relay.example")

    def plain_session() -> SMTP:
        return SMTP(handler, loop=loop, hostname="relay.example")

    smtp = session()
    path = "<load@example.com> SIZE=5120"
    print("| what | per call |\n|---|---|")
    print(f"| RelaySMTP session object, aiosmtpd's constructor (once per listener) | "
          f"{per_call_us(session, 5000):.1f} us |")
    print(f"| RelaySMTP session object, spawn() (each connection) | "
          f"{per_call_us(smtp.spawn, 5000):.1f} us |")
    print(f"| aiosmtpd SMTP session object | {per_call_us(plain_session, 5000):.1f} us |")
    print(f"| path read by RelaySMTP._getaddr | "
          f"{per_call_us(lambda: smtp._getaddr(path), 50000):.2f} us |")
    print(f"| path read by aiosmtpd's _getaddr | "
          f"{per_call_us(lambda: SMTP._getaddr(smtp, path), 20000):.2f} us |")
    signer = Signer(URL, "us-east-1", "ses")

    def sha(body: bytes) -> str:  # part of signing, as in botocore's
        return hashlib.sha256(body).hexdigest()

    credentials = Credentials("AKIDEXAMPLE", "secret")

    def botocore_sign() -> dict[str, str]:
        request = AWSRequest("POST", URL, data=BODY,
                             headers={"Content-Type": "application/json"})
        SigV4Auth(credentials, "ses", "us-east-1").add_auth(request)
        return dict(request.headers.items())

    def sign() -> dict[str, str]:
        return signer.headers("AKIDEXAMPLE", "secret", None, sha(BODY))

    print(f"| SendEmail signed by sesv2http.Signer | {per_call_us(sign, 20000):.1f} us |")
    print(f"| SendEmail signed by botocore's SigV4Auth | {per_call_us(botocore_sign, 5000):.1f}"
          " us |")
    params = {"FromEmailAddress": "load@example.com",
              "Destination": {"ToAddresses": ["sink@example.net"]},
              "Content": {"Raw": {"Data": b"x" * 1048576}}}

    def dumps_document() -> bytes:
        data = base64.b64encode(params["Content"]["Raw"]["Data"]).decode()  # type: ignore[index]
        return json.dumps({**params, "Content": {"Raw": {"Data": data}}},
                          separators=(",", ":")).encode()

    print(f"| SendEmail document, 1 MB message, sesv2http._wire | "
          f"{per_call_us(lambda: _wire(params), 50) / 1000:.2f} ms |")
    print(f"| SendEmail document, 1 MB message, json.dumps | "
          f"{per_call_us(dumps_document, 50) / 1000:.2f} ms |")
    document = _wire(params)
    print(f"| SHA-256 of that document (for the signature) | "
          f"{per_call_us(lambda: hashlib.sha256(document).hexdigest(), 50) / 1000:.2f} ms |")
    data = (b"y" * 76 + b"\r\n") * (1048576 // 78)

    def reader() -> asyncio.StreamReader:
        r = asyncio.StreamReader(limit=1001, loop=loop)
        r.feed_data(data)
        return r

    async def by_line(r: asyncio.StreamReader) -> None:
        for _ in range(len(data) // 78):
            await r.readuntil(b"\n")

    scans = {"compiled": plainlines.plain_prefix, "regex": plainlines.by_regex}
    if not plainlines.COMPILED:
        del scans["compiled"]
    for name, scan in scans.items():
        server.plain_prefix = scan  # what _take_plain_lines calls
        print(f"| 1 MB of DATA lines, server._take_plain_lines, {name} | "
              f"{per_call_us(lambda: _take_plain_lines(reader(), None), 20) / 1000:.2f} ms |")
    print(f"| 1 MB of DATA lines, one readuntil() each | "
          f"{per_call_us(lambda: loop.run_until_complete(by_line(reader())), 5) / 1000:.2f}"
          " ms |")
    loop.close()
    logins_and_headers()


def logins_and_headers() -> None:
    """A login answered from the success cache against the scrypt it saves; a From:
    header read by the shortcut and by the strict parser (relay/mailboxes.py)."""
    from relay import mailboxes, users
    from relay.authcache import SuccessCache

    stored = users.hash_password("correct horse battery")
    cache, snapshot = SuccessCache(), object()
    cache.remember(snapshot, "app", stored, b"correct horse battery")  # what a 235 leaves
    password = b"correct horse battery"
    cached = per_call_us(lambda: cache.verified(snapshot, "app", stored, password), 20000)
    hashed = per_call_us(lambda: users.verify_password(password, stored), 20) / 1000
    print(f"| login from the success cache (relay.authcache) | {cached:.1f} us |")
    print(f"| login by scrypt (relay.users.verify_password) | {hashed:.1f} ms |")
    for shape, value in [("common shape", "App Mailer <app@example.com>"),
                         ("quoted name, parser", '"Mailer, App" <app@example.com>')]:
        print(f"| From: read by mailboxes.read, {shape} | "
              f"{per_call_us(lambda v=value: mailboxes.read('From', v), 5000):.1f} us |")


if __name__ == "__main__":
    main()
