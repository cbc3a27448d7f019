"""Delivery alone: N messages queued before start, drained to bench/fake_ses.py (no rate
limit); messages/s and the relay's CPU per message (start-up included).

    .venv/bin/python bench/drain.py [--messages 8000] [--workers 1]
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

from bench.backlog import prefill  # noqa: E402
from bench.common import AWS_ENV, cpu_seconds, free_port, wait_port, write_relay_config  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=8000)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        prefill(home / "queue" / "active", args.messages)
        port = free_port()
        fake = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_ses.py"),
                                 "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        try:
            wait_port(port)
            config = write_relay_config(home, free_port(), {
                "transport": "sesv2", "endpoint_url": url, "concurrency": 20}, args.workers)
            t0 = time.perf_counter()
            relay = subprocess.Popen([BIN / "ses-relay", "serve", "--config", str(config)],
                                     env=AWS_ENV, stdout=subprocess.DEVNULL)
            try:
                while True:
                    with urllib.request.urlopen(f"{url}/stats", timeout=5) as r:
                        if json.load(r)["accepted_rcpts"] >= args.messages:
                            break
                    time.sleep(0.05)
                elapsed = time.perf_counter() - t0
                cpu = cpu_seconds(relay.pid)
            finally:
                relay.terminate()
                relay.wait(60)
        finally:
            fake.terminate()
            fake.wait(10)
    print(f"workers={args.workers} drained {args.messages} in {elapsed:.2f} s: "
          f"{args.messages / elapsed:.0f} msg/s, relay CPU {cpu / args.messages * 1000:.2f} "
          f"ms/msg (start-up included)")


if __name__ == "__main__":
    main()
