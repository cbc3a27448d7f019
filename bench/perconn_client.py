"""bench/perconn.py's load generator: clients that each send one message per connection
(TLS, AUTH, MAIL, RCPT, DATA, QUIT), asyncio with the ssl module, in several processes so
the client side is not what limits the rate on a small machine; each process reports its
own CPU."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import multiprocessing
import resource
import ssl
import time
from dataclasses import dataclass
from typing import Any

HOSTNAME = "bench.test"
USER, PASSWORD = "bench", "bench-password-1"
SENDER, RECIPIENT = "app@example.com", "sink@example.net"
PROFILES = ("starttls-plain", "implicit-login", "plain")


class SMTPFailure(Exception):
    pass


@dataclass(frozen=True)
class Job:
    profile: str
    port: int
    ca: str
    clients: int
    messages: int
    size: int


def message(size: int) -> bytes:
    line = b"y" * 76 + b"\r\n"
    head = (f"From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: per-connection bench\r\n"
            "\r\n").encode()
    return head + line * max(1, (size - len(head)) // len(line)) + b".\r\n"


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    while True:
        line = await reader.readline()
        if not line:
            raise SMTPFailure("connection closed")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def _say(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes,
               want: int) -> None:
    writer.write(line)
    code, text = await _reply(reader)
    if code != want:
        raise SMTPFailure(f"{line[:20]!r}: {text!r}")


async def send_one(job: Job, tls: ssl.SSLContext, body: bytes) -> float:
    """One message on a connection of its own; seconds from connect to the 250 after DATA."""
    t0 = time.monotonic()
    implicit = job.profile == "implicit-login"
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", job.port, ssl=tls if implicit else None,
        server_hostname=HOSTNAME if implicit else None)
    try:
        code, text = await _reply(reader)
        if code != 220:
            raise SMTPFailure(f"banner: {text!r}")
        await _say(reader, writer, b"EHLO client.example\r\n", 250)
        if job.profile == "starttls-plain":
            await _say(reader, writer, b"STARTTLS\r\n", 220)
            await writer.start_tls(tls, server_hostname=HOSTNAME)
            await _say(reader, writer, b"EHLO client.example\r\n", 250)
            plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
            await _say(reader, writer, b"AUTH PLAIN " + plain + b"\r\n", 235)
        elif implicit:
            await _say(reader, writer, b"AUTH LOGIN\r\n", 334)
            await _say(reader, writer, base64.b64encode(USER.encode()) + b"\r\n", 334)
            await _say(reader, writer, base64.b64encode(PASSWORD.encode()) + b"\r\n", 235)
        await _say(reader, writer, f"MAIL FROM:<{SENDER}>\r\n".encode(), 250)
        await _say(reader, writer, f"RCPT TO:<{RECIPIENT}>\r\n".encode(), 250)
        await _say(reader, writer, b"DATA\r\n", 354)
        await _say(reader, writer, body, 250)
        elapsed = time.monotonic() - t0
        await _say(reader, writer, b"QUIT\r\n", 221)
        return elapsed
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def _clients(job: Job) -> dict[str, Any]:
    tls = ssl.create_default_context(cafile=job.ca)
    body = message(job.size)
    left = [job.messages]
    latencies: list[float] = []
    errors: list[str] = []

    async def client() -> None:
        while left[0] > 0:
            left[0] -= 1
            try:
                latencies.append(await send_one(job, tls, body))
            except (OSError, ssl.SSLError, SMTPFailure, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}"[:200])

    start = time.monotonic()
    await asyncio.gather(*(client() for _ in range(job.clients)))
    return {"start": start, "end": time.monotonic(), "latencies": latencies,
            "errors": errors}


def _client_process(job: Job, out: Any) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(_clients(job))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out.put(result)


def load(job: Job, procs: int) -> dict[str, Any]:
    """*job* split over *procs* processes (no more than there are clients)."""
    procs = max(1, min(procs, job.clients))
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    workers = []
    for i in range(procs):
        share = Job(job.profile, job.port, job.ca,
                    job.clients // procs + (i < job.clients % procs),
                    job.messages // procs + (i < job.messages % procs), job.size)
        workers.append(context.Process(target=_client_process, args=(share, out)))
    for w in workers:
        w.start()
    results = [out.get(timeout=1800) for _ in workers]
    for w in workers:
        w.join(30)
    return {"start": min(r["start"] for r in results), "end": max(r["end"] for r in results),
            "latencies": [x for r in results for x in r["latencies"]],
            "errors": [x for r in results for x in r["errors"]],
            "cpu": sum(r["cpu"] for r in results)}
