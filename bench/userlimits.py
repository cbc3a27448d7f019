"""What a per-user limit costs each RCPT, and what the free-space check costs each MAIL.

- UserLimits.charge (rate and day, one write transaction in the queue directory's
  SQLite file): called directly, and through the module's own thread (what a RCPT pays);
  also with two processes charging the same user at once (workers sharing a queue).
- QueueSpace.check (queue.min_free): os.statvfs each time, against the cached answer.

    .venv/bin/python bench/userlimits.py [--charges 20000] [--dir DIR]

--dir: where the database goes (default: a temporary directory; give the queue's file
system to measure that one).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.queuespace import QueueSpace
from relay.userlimits import UserLimits
from relay.users import User, parse_rate

# A limit never reached: every charge is counted and written.
USER = User("bench", "", max_rate=parse_rate("1000000/s"), max_per_day=10**9)


def per_call(call: object, n: int) -> tuple[float, float]:
    """p50 and p99 of one call, in microseconds."""
    assert callable(call)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t)
    q = statistics.quantiles(samples, n=100)
    return q[49] * 1e6, q[98] * 1e6


def charges(directory: Path, n: int) -> None:
    limits = UserLimits(directory / "limits.sqlite3")
    p50, p99 = per_call(lambda: limits.charge(USER), n)

    async def through_thread() -> float:
        t = time.perf_counter()
        for _ in range(n // 4):
            await limits.run(limits.charge, USER)
        return (time.perf_counter() - t) / (n // 4) * 1e6

    mean = asyncio.run(through_thread())
    limits.close()
    print(f"charge: p50 {p50:.1f} us, p99 {p99:.1f} us; through its thread: {mean:.1f} us")


_OTHER = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from bench.userlimits import USER
from relay.userlimits import UserLimits
limits = UserLimits(Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    limits.charge(USER)
"""


def contended(directory: Path, n: int) -> None:
    """Two processes at once on one user's rows: each charge waits for the other's."""
    db = directory / "shared.sqlite3"
    UserLimits(db).close()  # the schema, before the clock starts
    root = str(Path(__file__).resolve().parent.parent)
    t = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _OTHER, str(db), str(n // 2), root])
             for _ in range(2)]
    for p in procs:
        p.wait()
    wall = time.perf_counter() - t
    print(f"two processes, {n} charges in all: {wall:.2f} s wall, "
          f"{wall / n * 1e6:.1f} us per charge (start-up included)")


def space(directory: Path, n: int) -> None:
    uncached = QueueSpace(directory, min_free=1, cache_seconds=0.0)
    cached = QueueSpace(directory, min_free=1)
    cached.check(None)
    for name, q in (("statvfs each time", uncached), ("cached", cached)):
        p50, p99 = per_call(lambda q=q: q.check(None), n)
        print(f"min_free check, {name}: p50 {p50:.2f} us, p99 {p99:.2f} us")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--charges", type=int, default=20_000)
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        directory = Path(d)
        print(f"{os.uname().sysname} {os.uname().release}, in {directory}")
        charges(directory, args.charges)
        contended(directory, args.charges)
        space(directory, args.charges)


if __name__ == "__main__":
    main()
