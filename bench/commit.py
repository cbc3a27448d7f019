"""The queue's commit alone: draft, write 5 KB, commit (fsync the file, rename it into
active/, fsync active/), from C concurrent writers; p50/p99 of one commit and the rate.

Run it on tmpfs to see the relay's own cost (the device's flush hides it otherwise), and on
the queue's real file system for what a client waits for:

    .venv/bin/python bench/commit.py [--dir /dev/shm/q] [--concurrency 1,10,50]
        [--messages 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.spool import Envelope, Spool  # noqa: E402

ENVELOPE = Envelope("a@example.com", ("b@example.net",))
BODY = b"x" * 5000


async def run(folder: Path, concurrency: int, messages: int) -> str:
    shutil.rmtree(folder, ignore_errors=True)
    spool = Spool(folder)
    spool.open()
    latencies: list[float] = []

    async def writer() -> None:
        for _ in range(messages // concurrency):
            t = time.perf_counter()
            draft = spool.draft()
            draft.write(BODY)
            await spool.commit(draft, ENVELOPE)
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    spool.close()
    shutil.rmtree(folder, ignore_errors=True)
    latencies.sort()
    return (f"| {concurrency} | {len(latencies) / elapsed:.0f}/s | "
            f"{statistics.median(latencies) * 1e3:.3f} ms | "
            f"{latencies[int(len(latencies) * 0.99)] * 1e3:.3f} ms |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm/ses-relay-commit-bench"))
    ap.add_argument("--concurrency", default="1,10,50")
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    print(f"queue in {args.dir}\n\n| writers | commits | p50 | p99 |\n|---|---|---|---|")
    for c in map(int, args.concurrency.split(",")):
        print(asyncio.run(run(args.dir, c, args.messages)))


if __name__ == "__main__":
    main()
