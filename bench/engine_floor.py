"""What the SMTP engine costs by itself: the floor under the relay's plain-SMTP targets.

Four servers on the same machine, the same loads, interleaved round by round:

  asyncio-protocol  a bare asyncio.Protocol that answers the dialog (220, EHLO, MAIL,
                    RCPT, DATA, the dot, QUIT) and keeps nothing: Python's floor
  aiosmtpd          stock aiosmtpd's SMTP with a handler whose DATA answers 250 and keeps
                    nothing: no file, no fsync, no log, no delivery
  ses-relay         the relay's trusted plain listener, default configuration, sesv2 to
                    bench/fake_ses.py (as bench/perconn.py runs it)
  postfix           the private Postfix of bench/compare.py, relaying to smtp-sink

Loads (5 KB messages, one connection per message, plain SMTP on loopback):

  1 client     bench/perconn_probe.py's raw-socket session, one after another: sessions/s
               and the median session (connect to the close after QUIT)
  50 sessions  smtp-source -s 50: messages/s accepted (first connect to the last close)

and each server's CPU per message (every process of the server: the relay's and
Postfix's include their delivery, which the two do-nothing servers do not have).

Issue 16 asks for the relay at Postfix's rate or better at 1 client, and 1.5x at 50
sessions. Read the first two rows against the last: if stock aiosmtpd doing nothing is
no faster than Postfix doing everything, no change inside the relay reaches the
targets while aiosmtpd runs its sessions.

    python bench/engine_floor.py [--messages 1500] [--source-messages 6000] [--rounds 2]
                                 [--relay-nice N]   # a second ses-relay, delivery.nice N
    python bench/engine_floor.py --serve {asyncio-protocol,aiosmtpd}   # one server, alone

Needs root for Postfix and smtp-sink (scripts/install-bench-peers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVERS = ("asyncio-protocol", "aiosmtpd")
EHLO_REPLY = b"250-bench.test\r\n250-SIZE 1048576\r\n250-8BITMIME\r\n250 HELP\r\n"


# --- the two do-nothing servers ----------------------------------------------------------


class DialogProtocol(asyncio.Protocol):
    """Answers the probe's and smtp-source's dialog; no checks, nothing kept."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""
        self.in_data = False
        transport.write(b"220 bench.test ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buffer, self.in_data = self.buffer[end + 5:], False
                self.transport.write(b"250 2.0.0 Ok: queued\r\n")
                continue
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            verb = self.buffer[:4].upper()
            self.buffer = self.buffer[end + 2:]
            if verb in (b"EHLO", b"HELO"):
                self.transport.write(EHLO_REPLY)
            elif verb == b"DATA":
                self.in_data = True
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                return
            else:
                self.transport.write(b"250 2.0.0 Ok\r\n")


class NoopHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 2.0.0 Ok: queued"


async def serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    factory: Callable[[], asyncio.BaseProtocol]
    if kind == "asyncio-protocol":
        factory = DialogProtocol
    else:
        from aiosmtpd.smtp import SMTP
        handler = NoopHandler()

        def factory() -> asyncio.BaseProtocol:
            return SMTP(handler, hostname="bench.test")
    server = await loop.create_server(factory, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)  # port 0: the kernel's choice
    await asyncio.Event().wait()


# --- the run -----------------------------------------------------------------------------


def start_floor(kind: str) -> tuple[int, Callable[[], float], Callable[[], None]]:
    from bench.common import cpu_seconds
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())

    def stop() -> None:
        proc.kill()
        proc.wait()
    return port, lambda: cpu_seconds(proc.pid), stop


def one_client(port: int, n: int) -> tuple[float, float]:
    """Sessions/s and the median session (ms) of *n* raw-socket sessions in a row."""
    from bench.perconn_probe import session
    steps: dict[str, list[float]] = {k: [] for k in (
        "connect->greeting", "EHLO", "MAIL", "RCPT", "DATA", "body->250", "connect->250",
        "QUIT->close", "total")}
    session(port, {k: [] for k in steps})  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        session(port, steps)
    return n / (time.perf_counter() - start), statistics.median(steps["total"]) * 1000


def fifty(port: int, n: int) -> float:
    start = time.perf_counter()
    subprocess.run(["smtp-source", "-s", "50", "-m", str(n), "-l", "5120",
                    "-f", "load@example.com", "-t", "sink@example.net",
                    f"127.0.0.1:{port}"], check=True)
    return n / (time.perf_counter() - start)


# A server under test: its name, port, CPU so far, and messages delivered so far (None:
# it keeps nothing).
Server = tuple[str, int, Callable[[], float], Callable[[], int] | None]


def measure(server: Server, args: argparse.Namespace) -> str:
    name, port, cpu, delivered = server
    d0 = delivered() if delivered else 0

    def settle(sent: int) -> None:  # its delivery's CPU counts in its cell
        deadline = time.monotonic() + 300
        while delivered and delivered() < d0 + sent and time.monotonic() < deadline:
            time.sleep(0.05)
    c0 = cpu()
    rate1, p50 = one_client(port, args.messages)
    settle(args.messages + 1)  # and the warm-up session
    c1 = cpu()
    rate50 = fifty(port, args.source_messages)
    settle(args.messages + 1 + args.source_messages)
    c2 = cpu()
    per1 = (c1 - c0) * 1000 / (args.messages + 1)
    per50 = (c2 - c1) * 1000 / args.source_messages
    return (f"| {name} | {rate1:.0f} | {p50:.2f} ms | {per1:.2f} | {rate50:.0f} "
            f"| {per50:.2f} |")


def start_servers(work: Path, args: argparse.Namespace,
                  stops: list[Callable[[], None]]) -> list[Server]:
    from bench.perconn import HOSTNAME, relay_server
    from bench.targets import FakeSES, Sink, postfix_target
    from relay.devsetup import write_self_signed

    cert, key = work / "cert.pem", work / "key.pem"
    write_self_signed(cert, key, HOSTNAME)
    servers: list[Server] = []
    for kind in SERVERS:
        port, cpu, stop = start_floor(kind)
        stops.append(stop)
        servers.append((kind, port, cpu, None))
    fake = FakeSES()
    stops.append(fake.stop)
    relays = [relay_server(work, cert, key, fake)[0]]
    if args.relay_nice is not None:
        (work / "variant").mkdir()
        variant, _ = relay_server(work / "variant", cert, key, fake,
                                  delivery={"nice": args.relay_nice})
        variant.name = f"ses-relay, delivery.nice {args.relay_nice}"
        relays.append(variant)
    sink = Sink(work)
    stops.append(sink.stop)
    postfix = postfix_target(sink)
    for target in (*relays, postfix):
        stops.insert(0, target.stop)
        servers.append((target.name, target.ports.get("plain", target.port), target.cpu,
                        target.delivered))
    return servers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", choices=SERVERS)
    ap.add_argument("--messages", type=int, default=1500, help="1-client sessions per cell")
    ap.add_argument("--source-messages", type=int, default=6000,
                    help="smtp-source messages per cell")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--relay-nice", type=int, default=None,
                    help="also run a ses-relay with this delivery.nice (the default is 10)")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    print(f"\nengine floor: 5 KB, plain SMTP on loopback, {os.cpu_count()} CPUs", flush=True)
    stops: list[Callable[[], None]] = []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        os.chmod(work, 0o755)
        try:
            servers = start_servers(work, args, stops)
            for r in range(args.rounds):
                order = servers if r % 2 == 0 else servers[::-1]
                rows = {server[0]: measure(server, args) for server in order}
                print(f"\nround {r + 1} of {args.rounds}\n\n| server | 1 client: sessions/s "
                      "| median session | CPU ms / session | 50 sessions: msg/s | "
                      "CPU ms / msg |\n|---|---|---|---|---|---|")
                for name, *_ in servers:
                    print(rows[name])
                sys.stdout.flush()
        finally:
            for stop in stops:
                stop()

if __name__ == "__main__":
    main()
