"""How much a large suppression list costs each RCPT.

Fills a suppression database with N entries, then times lookups of present and absent
addresses (the RCPT path: SuppressionList.lookup, and .check through a worker thread).

    .venv/bin/python bench/suppression_lookup.py [--entries 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.suppression import Entry, SuppressionList


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=20_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for size in (0, args.entries):
            db = SuppressionList(Path(d) / f"s{size}.sqlite3")
            t0 = time.perf_counter()
            now = time.time()
            db.import_entries(Entry(f"user{i}@example{i % 1000}.net", "import", "", now)
                              for i in range(size))
            fill = time.perf_counter() - t0
            probes = [f"user{random.randrange(max(size, 1))}@example{random.randrange(1000)}.net"
                      for _ in range(args.lookups)]
            samples = []
            for p in probes:
                t = time.perf_counter()
                db.lookup(p)
                samples.append(time.perf_counter() - t)

            async def via_thread(db: SuppressionList = db, probes: list[str] = probes
                                 ) -> float:
                t = time.perf_counter()
                for p in probes[:5000]:
                    await db.check(p)
                return (time.perf_counter() - t) / 5000

            threaded = asyncio.run(via_thread())
            samples.sort()
            p50 = statistics.median(samples) * 1e6
            print(f"entries={size:>9,}  fill={fill:6.1f}s  lookup p50={p50:6.1f}us"
                  f"  p99={samples[int(len(samples)*0.99)]*1e6:6.1f}us"
                  f"  check() via thread mean={threaded*1e6:6.1f}us")
            db.close()


if __name__ == "__main__":
    main()
