"""Keeping to the account's send rate: utilisation and throttling against a rate-limited SES.

Starts bench/fake_ses.py enforcing RATE recipients/s (and reporting it as MaxSendRate in
GetAccount), fills the queue of one or more relay processes with messages, starts them,
and waits until every recipient has been accepted. Reports the sustained rate as a share
of the limit, and the share of calls that were throttled.

    .venv/bin/python bench/rate.py [--rate 100] [--messages 300] [--rcpts 5] [--relays 1]
        [--workers 1] [--redis]

With --redis the relays share one send rate through a private redis-server (on a unix
socket; ``delivery.rate_limiter``) instead of each keeping to it on its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import AWS_ENV, free_port, wait_port, write_relay_config  # noqa: E402
from relay.spool import Envelope, Spool  # noqa: E402

BIN = Path(sys.executable).parent


def prefill(queue: Path, messages: int, rcpts: int) -> None:
    import asyncio

    spool = Spool(queue)
    spool.open()
    body = b"Subject: rate\r\nDate: Sun, 22 Nov 2026 10:00:00 +0000\r\n\r\n" + b"x" * 2000

    async def fill() -> None:
        for i in range(messages):
            draft = spool.draft()
            draft.write(body)
            await spool.commit(draft, Envelope("bench@example.com", tuple(
                f"r{i}-{j}@example.net" for j in range(rcpts))))

    asyncio.run(fill())


def stats(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as r:
        return dict(json.load(r))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--messages", type=int, default=300, help="per relay")
    ap.add_argument("--rcpts", type=int, default=5)
    ap.add_argument("--relays", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="workers of each relay")
    ap.add_argument("--redis", action="store_true", help="share the rate through Redis")
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fake = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_ses.py"),
                             "--port", str(port), "--rate", str(args.rate)])
    relays: list[subprocess.Popen[bytes]] = []
    try:
        wait_port(port)
        with tempfile.TemporaryDirectory() as d:
            shared = {}
            if args.redis:
                sock = Path(d) / "redis.sock"
                relays.append(subprocess.Popen(  # stopped with the relays
                    ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
                     "--dir", d], stdout=subprocess.DEVNULL))
                while not sock.exists():
                    time.sleep(0.05)
                shared = {"rate_limiter": f"unix://{sock}"}
            for n in range(args.relays):
                home = Path(d) / f"relay{n}"
                home.mkdir()
                prefill(home / "queue", args.messages, args.rcpts)
                config = write_relay_config(home, free_port(), {"transport": "sesv2",
                                                                "endpoint_url": url,
                                                                **shared},
                                            args.workers)
                relays.append(subprocess.Popen(
                    [BIN / "ses-relay", "serve", "--config", str(config)], env=AWS_ENV,
                    stdout=subprocess.DEVNULL))
            want = args.relays * args.messages * args.rcpts
            started = time.monotonic()
            while stats(url)["accepted_rcpts"] < want and time.monotonic() - started < 600:
                time.sleep(0.5)
            s = stats(url)
    finally:
        for p in relays:
            p.terminate()
            p.wait(30)
        fake.terminate()
        fake.wait(10)
    sustained = s["accepted_rcpts"] / s["span"] if s["span"] else 0.0
    print(f"relays={args.relays} workers={args.workers} redis={args.redis} limit={args.rate:.0f}/s "
          f"recipients={int(s['accepted_rcpts'])}/{want} sustained={sustained:.1f}/s "
          f"utilisation={sustained / args.rate:.1%} "
          f"calls={int(s['calls'])} throttled={int(s['throttled'])} "
          f"({s['throttled'] / max(1, s['calls']):.2%})")


if __name__ == "__main__":
    main()
