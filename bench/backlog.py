"""A large backlog: start-up time, and accepting mail while it waits for a dead SES.

Writes N queue entries in the spool's own format (without fsync, to be quick; the relay
cannot tell), points the relay at an SES endpoint that refuses connections, and measures
how long until it accepts mail, then the accept rate under smtp-source load, compared
with the same relay and an empty queue.

    .venv/bin/python bench/backlog.py [--queued 100000] [--messages 2000] [--workers 1]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import AWS_ENV, free_port, write_relay_config  # noqa: E402
from relay.queueentry import Envelope, trailer  # noqa: E402
from relay.spool import new_queue_id  # noqa: E402

BIN = Path(sys.executable).parent


def prefill(active: Path, n: int) -> None:
    active.mkdir(parents=True, exist_ok=True)
    body = b"Subject: backlog\r\n\r\n" + (b"x" * 76 + b"\r\n") * 60
    blob = body + trailer(Envelope("bench@example.com", ("sink@example.net",)))
    start = time.time() - 3600
    for i in range(n):
        (active / new_queue_id(start + i * 0.001)).write_bytes(blob)


def run(queued: int, messages: int, workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        prefill(home / "queue" / "active", queued)
        port = free_port()
        config = write_relay_config(home, port, {
            "transport": "sesv2", "endpoint_url": f"http://127.0.0.1:{free_port()}"}, workers)
        t0 = time.perf_counter()
        relay = subprocess.Popen([BIN / "ses-relay", "serve", "--config", str(config)],
                                 env=AWS_ENV, stdout=subprocess.DEVNULL)
        try:
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                        if s.recv(100).startswith(b"220"):
                            break
                except OSError:
                    time.sleep(0.01)
            ready = time.perf_counter() - t0
            time.sleep(2)  # the backlog's first attempts are under way
            t1 = time.perf_counter()
            subprocess.run(["smtp-source", "-s", "50", "-m", str(messages), "-l", "5120",
                            "-f", "load@example.com", "-t", "sink@example.net",
                            f"127.0.0.1:{port}"], check=True, timeout=900)
            rate = messages / (time.perf_counter() - t1)
        finally:
            relay.terminate()
            relay.wait(120)
    return ready, rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    empty_ready, empty_rate = run(0, args.messages, args.workers)
    full_ready, full_rate = run(args.queued, args.messages, args.workers)
    print(f"| queued | ready after | accepted msg/s |\n|---|---|---|\n"
          f"| 0 | {empty_ready:.2f} s | {empty_rate:.0f} |\n"
          f"| {args.queued:,} (SES unreachable) | {full_ready:.2f} s | {full_rate:.0f} "
          f"({full_rate / empty_rate:.0%} of the empty-queue rate) |")


if __name__ == "__main__":
    main()
