"""A fleet anyone can repeat: 3 relays, one shared send rate, one shared event store, a crash.

On loopback only, starts a private PostgreSQL (tests/peers/postgres.py; each relay's
``feedback.database`` then points at one database in it), a private redis-server
(tests/peers/redis.py; ``delivery.rate_limiter``), one rate-limited fake SES
(bench/fake_ses.py, which closes idle keep-alive connections as SES does, and counts each
delivered message's Message-ID) and 3 relay processes, each with its own queue folder,
each on port 0 (the port is read from its ``started`` log line). Pushes --messages
messages over --duration seconds into the three (aiosmtplib; a unique Message-ID each),
kills one relay with SIGKILL halfway and restarts it on the same queue folder, waits
(bounded) until every accepted message reached SES, and prints:

accepted (250 after DATA), delivered (unique Message-IDs SES took), lost (accepted and
never delivered: must be 0; exit 1 otherwise), duplicates (delivered twice: a SIGKILL
between SES's answer and the state write may make one), throttled calls and their share,
the aggregate rate against the limit, and ``ses-relay trace`` of a message that the
killed relay took, read through another relay's configuration.

    .venv/bin/python bench/fleet.py [--rate 40] [--messages 1800] [--duration 40]
        [--sessions 6] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiosmtplib  # noqa: E402

from bench.common import AWS_ENV, write_relay_config  # noqa: E402
from tests.conftest import Process, read_port, ses_relay_exe  # noqa: E402
from tests.peers.redis import RedisServer  # noqa: E402

try:  # the shared event store's server; without it each relay keeps its own SQLite store
    from tests.peers.postgres import postgres_server
except ImportError:
    postgres_server = None

RELAYS = 3
KILLED = 1  # the relay that is killed and restarted
BODY = ("x" * 70 + "\r\n") * 14  # ~1 KB in lines SMTP allows


@dataclass
class Relay:
    home: Path
    config: Path
    process: Process | None = None
    port: int | None = None  # None while it is down
    starts: int = 0

    def start(self) -> None:
        log = self.home / f"relay-{self.starts}.log"
        self.starts += 1
        with log.open("wb") as out:
            proc = subprocess.Popen([ses_relay_exe(), "serve", "--config", str(self.config)],
                                    stdout=out, stderr=subprocess.STDOUT, env=AWS_ENV)
        self.process = Process(proc, log)
        self.port = int(self.process.wait_event("started", timeout=30)["listeners"]["bench"])

    def kill(self) -> None:
        self.port = None
        if self.process is not None:
            self.process.kill()  # SIGKILL: no shutdown, no state written

    def stop(self) -> None:
        self.port = None
        if self.process is not None:
            try:
                self.process.terminate()
            except subprocess.TimeoutExpired:
                print(f"{self.home.name} did not stop on SIGTERM in 15 s: killed",
                      file=sys.stderr)
                self.process.kill()


@dataclass
class Tally:
    accepted: dict[str, tuple[int, str]] = field(default_factory=dict)  # token: relay, queue id
    unanswered: set[str] = field(default_factory=set)  # sent, then the connection died
    rejected: dict[int, int] = field(default_factory=dict)  # reply code: times
    refused: int = 0  # no relay could be reached for it
    kill_at: float = 0.0  # when the relay was killed (monotonic)
    accepted_before_kill: list[str] = field(default_factory=list)  # by the killed relay


# --- the peers --------------------------------------------------------------------------


@contextlib.contextmanager
def fake_ses(rate: float, home: Path) -> Iterator[str]:
    with (home / "fake_ses.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_ses.py"),
                                 "--port", "0", "--rate", str(rate),
                                 "--count-header", "Message-ID"],
                                stdout=subprocess.PIPE, stderr=log)
    try:
        yield f"http://127.0.0.1:{read_port(proc)}"
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


@contextlib.contextmanager
def redis(home: Path) -> Iterator[str]:
    server = RedisServer(home)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


@contextlib.contextmanager
def event_store(home: Path) -> Iterator[str | None]:
    """The PostgreSQL DSN every relay writes its steps to, or None (each its own SQLite)."""
    if postgres_server is None:
        yield None
        return
    with postgres_server(Path(tempfile.mkdtemp(prefix="fleet-pg-"))) as pg:
        pg.create_database("fleet")
        yield str(pg.dsn("fleet"))


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


# --- the client side ----------------------------------------------------------------------


def message(token: str) -> str:
    return (f"From: bench@example.com\r\nTo: {token}@example.net\r\n"
            f"Subject: fleet {token}\r\nMessage-ID: <{token}@fleet.test>\r\n"
            f"Date: Mon, 07 Dec 2026 03:00:00 +0000\r\n\r\n{BODY}")


async def send_one(relays: list[Relay], token: str, first: int, tally: Tally) -> None:
    """To relay *first*, or the next one up when it is down (a balancer's failover): only
    a connection that was never made is tried elsewhere; one that dies after the message
    was sent is left unanswered (it may still be delivered), not sent twice."""
    for k in range(RELAYS):
        n = (first + k) % RELAYS
        port = relays[n].port
        if port is None:
            continue
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30,
                                 start_tls=False)
        try:
            await client.connect()
        except (OSError, aiosmtplib.SMTPException):
            continue
        try:
            _, reply = await client.sendmail("bench@example.com", [f"{token}@example.net"],
                                             message(token))
            tally.accepted[token] = (n, reply.rsplit(" ", 1)[-1])
            if n == KILLED and not tally.kill_at:
                tally.accepted_before_kill.append(token)
        except aiosmtplib.SMTPResponseException as e:
            tally.rejected[e.code] = tally.rejected.get(e.code, 0) + 1
        except (OSError, aiosmtplib.SMTPException):
            tally.unanswered.add(token)
        finally:
            with contextlib.suppress(Exception):
                await client.quit()
        return
    tally.refused += 1


async def push(relays: list[Relay], messages: int, duration: float, sessions: int,
               tally: Tally) -> None:
    """*messages* at an even pace over *duration* s, round-robin over the relays, with
    *sessions* clients at once; the relay KILLED gets SIGKILL halfway, restarted 2 s on."""
    started = time.monotonic()
    pace = duration / messages
    next_index = iter(range(messages))

    async def client() -> None:
        for i in next_index:
            await asyncio.sleep(max(0.0, started + i * pace - time.monotonic()))
            await send_one(relays, f"fleet-{i}", i % RELAYS, tally)

    async def crash() -> None:
        await asyncio.sleep(duration / 2)
        relays[KILLED].kill()
        tally.kill_at = time.monotonic()
        await asyncio.sleep(2)
        await asyncio.to_thread(relays[KILLED].start)

    await asyncio.gather(crash(), *(client() for _ in range(sessions)))


def drain(url: str, tally: Tally, timeout: float) -> dict[str, int]:
    """Wait until SES has seen every accepted message, for *timeout* s at most."""
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, int] = get(f"{url}/seen")
        if all(f"<{t}@fleet.test>" in seen for t in tally.accepted) \
                or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def trace(relays: list[Relay], tally: Tally, shared: bool) -> str:
    """The story of a message the killed relay took before its crash, told by another."""
    if not tally.accepted_before_kill:
        return "(the killed relay took no message before its crash)"
    token = tally.accepted_before_kill[-1]
    sender, queue_id = tally.accepted[token]
    reader = (sender + 1) % RELAYS
    out = subprocess.run([ses_relay_exe(), "trace", queue_id,
                          "--config", str(relays[reader].config)],
                         capture_output=True, text=True, env=AWS_ENV, timeout=60)
    head = (f"$ ses-relay trace {queue_id} --config relay{reader}/c.yaml"
            f"   # taken by relay{sender}, read through relay{reader}\n")
    text = (out.stdout + out.stderr).rstrip()
    if not shared:
        text += ("\n(each relay has its own SQLite event store here: a cross-relay trace "
                 "needs feedback.database: postgresql)")
    return head + text


def report(args: argparse.Namespace, tally: Tally, seen: dict[str, int],
           ses: dict[str, Any], elapsed: float) -> int:
    accepted = {f"<{t}@fleet.test>" for t in tally.accepted}
    delivered = accepted & set(seen)
    lost = accepted - set(seen)
    duplicates = sum(1 for t in seen if seen[t] > 1)
    unanswered = {f"<{t}@fleet.test>" for t in tally.unanswered}
    rate = ses["accepted_rcpts"] / ses["span"] if ses["span"] else 0.0
    rows = [
        ("pushed", f"{args.messages} over {args.duration:.0f} s into {RELAYS} relays, "
                   f"relay{KILLED} SIGKILLed at {args.duration / 2:.0f} s and restarted"),
        ("accepted (250)", f"{len(accepted)}"),
        ("no answer", f"{len(unanswered)} (connection died after DATA; "
                      f"{len(unanswered & set(seen))} of them delivered anyway)"),
        ("refused", f"{tally.refused} (no relay reachable)"),
        ("rejected", f"{sum(tally.rejected.values())} {tally.rejected or ''}"),
        ("delivered", f"{len(delivered)} unique accepted messages seen by SES"),
        ("lost", f"{len(lost)}"),
        ("duplicates", f"{duplicates} (delivered more than once)"),
        ("throttled", f"{ses['throttled']} of {ses['calls']} calls "
                      f"({ses['throttled'] / max(1, ses['calls']):.2%}; goal < 1%)"),
        ("aggregate rate", f"{rate:.1f}/s against a limit of {args.rate:.0f}/s "
                           f"({rate / args.rate:.0%})"),
        ("run", f"{elapsed:.0f} s to drain"),
    ]
    print("\n| what | fleet run |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")
    if lost:
        print(f"\nLOST: {sorted(lost)[:20]}")
    return 1 if lost else 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=40, help="SES's limit, recipients/s")
    ap.add_argument("--messages", type=int, default=1800)
    ap.add_argument("--duration", type=float, default=40, help="seconds of pushing")
    ap.add_argument("--sessions", type=int, default=6, help="SMTP clients at once")
    ap.add_argument("--drain-timeout", type=float, default=180)
    ap.add_argument("--keep", type=Path, default=None, help="keep the relays' state here")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        home = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        home.mkdir(parents=True, exist_ok=True)
        url = stack.enter_context(fake_ses(args.rate, home))
        limiter = stack.enter_context(redis(home))
        dsn = stack.enter_context(event_store(home))
        relays = []
        for n in range(RELAYS):
            d = home / f"relay{n}"
            d.mkdir(exist_ok=True)
            feedback = {"database": dsn or str(d / "events.sqlite3"), "node": f"relay{n}"}
            queue = {"directory": str(d / "queue"), "min_backoff": "0.5s",
                     "max_backoff": "5s"}
            config = write_relay_config(d, 0, {"transport": "sesv2", "endpoint_url": url,
                                               "rate_limiter": limiter},
                                        feedback=feedback, queue=queue)
            relays.append(Relay(d, config))
            stack.callback(relays[-1].stop)
        for relay in relays:
            relay.start()
        started = time.monotonic()
        tally = Tally()
        asyncio.run(push(relays, args.messages, args.duration, args.sessions, tally))
        seen = drain(url, tally, args.drain_timeout)
        elapsed = time.monotonic() - started
        ses = get(f"{url}/stats")
        status = report(args, tally, seen, ses, elapsed)
        print("\n" + trace(relays, tally, dsn is not None))
    return status


if __name__ == "__main__":
    sys.exit(main())
