"""Where one relay process spends its time under load: the numbers behind the profile
notes in bench/RESULTS.md.

One relay (workers: 1, sesv2 to bench/fake_ses.py) takes smtp-source's load (5 KB
messages, 50 sessions). Measured over the load only, per message accepted:

- CPU of the event loop's thread (user and kernel) and of the other threads together;
- voluntary context switches of the whole process (thread hand-offs, GIL waits);
- garbage collector passes, and the longest one, during the load (--gc: a sitecustomize
  module in a temporary folder on the relay's PYTHONPATH records them, nothing else);
- system calls by name (--strace: strace -c -f, which slows the relay down a lot, so the
  rate and CPU of that run mean nothing; only the counts do. strace is not among the
  test peers: `apt-get install strace`).

    .venv/bin/python bench/loadprofile.py [--messages 5000] [--sessions 50] [--size 5120]
        [--gc] [--strace]

To measure older code the same way, put a checkout of it first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import AWS_ENV, TICK, free_port, wait_port, write_relay_config  # noqa: E402

BIN = Path(sys.executable).parent

# Loaded by the relay at start-up through PYTHONPATH (--gc). Only collections once the
# load starts count (the bench creates the BENCH_GC_FROM file then), not start-up's.
GC_RECORDER = """\
import atexit, gc, json, os, time
_stats = {"collections": [0, 0, 0], "seconds": 0.0, "longest": 0.0}
_start = []
def _record(phase, info):
    if not os.path.exists(os.environ["BENCH_GC_FROM"]):
        return
    if phase == "start":
        _start[:] = [time.perf_counter()]
    elif _start:
        took = time.perf_counter() - _start[0]
        _stats["collections"][info["generation"]] += 1
        _stats["seconds"] += took
        _stats["longest"] = max(_stats["longest"], took)
def _save():
    with open(os.environ["BENCH_GC_OUT"], "w") as f:
        json.dump(_stats, f)
gc.callbacks.append(_record)
atexit.register(_save)
"""


def threads(pid: int) -> dict[int, tuple[float, float, int]]:
    """Per thread: user seconds, kernel seconds, voluntary context switches."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        out[int(task.name)] = (int(fields[11]) / TICK, int(fields[12]) / TICK, switches)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--gc", action="store_true", help="record garbage collector passes")
    ap.add_argument("--strace", action="store_true", help="count system calls (slow)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        env = dict(AWS_ENV)
        if args.gc:
            (home / "site").mkdir()
            (home / "site" / "sitecustomize.py").write_text(GC_RECORDER)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (env.get("PYTHONPATH"), str(home / "site")) if p)
            env["BENCH_GC_OUT"] = str(home / "gc.json")
            env["BENCH_GC_FROM"] = str(home / "loaded")
        fake_port = free_port()
        fake = subprocess.Popen([sys.executable, str(ROOT / "bench" / "fake_ses.py"),
                                 "--port", str(fake_port)])
        port = free_port()
        relay = None
        relay_log = (home / "relay.log").open("wb")
        try:
            wait_port(fake_port)
            config = write_relay_config(home, port, {
                "transport": "sesv2", "endpoint_url": f"http://127.0.0.1:{fake_port}",
                "concurrency": 20,
                "process": "shared"})  # one process: its threads are what is measured
            relay = subprocess.Popen([BIN / "ses-relay", "serve", "--config", str(config)],
                                     env=env, stdout=relay_log)
            wait_port(port)
            time.sleep(1)  # start-up is over (the heap frozen) before the load
            tracer = (subprocess.Popen(["strace", "-c", "-f", "-o", str(home / "strace"),
                                        "-p", str(relay.pid)], stderr=subprocess.DEVNULL)
                      if args.strace else None)
            time.sleep(1 if tracer else 0)
            before = threads(relay.pid)
            (home / "loaded").touch()
            t0 = time.perf_counter()
            subprocess.run(["smtp-source", "-s", str(args.sessions), "-m", str(args.messages),
                            "-l", str(args.size), "-f", "load@example.com",
                            "-t", "sink@example.net", f"127.0.0.1:{port}"],
                           check=True, timeout=1800)
            rate = args.messages / (time.perf_counter() - t0)
            time.sleep(2)  # deliveries still under way
            after = threads(relay.pid)
            if tracer is not None:
                tracer.send_signal(2)
                tracer.wait(30)
        finally:
            if relay is not None:
                relay.terminate()
                relay.wait(60)
            fake.terminate()
            fake.wait(10)
            relay_log.close()
        report(args, rate, before, after, relay.pid if relay else 0, home)


def report(args: argparse.Namespace, rate: float, before: dict[int, tuple[float, float, int]],
           after: dict[int, tuple[float, float, int]], pid: int, home: Path) -> None:
    n = args.messages

    def used(tids: list[int], i: int) -> float:
        return sum(after[t][i] - before.get(t, (0.0, 0.0, 0))[i] for t in tids)

    loop, others = [pid], [t for t in after if t != pid]
    print(f"{n} messages of {args.size} bytes, {args.sessions} sessions, one relay process")
    print(f"accepted {rate:.0f} msg/s")
    print(f"event loop thread: {used(loop, 0) / n * 1e3:.2f} ms user + "
          f"{used(loop, 1) / n * 1e3:.2f} ms kernel per message")
    print(f"other threads:     {used(others, 0) / n * 1e3:.2f} ms user + "
          f"{used(others, 1) / n * 1e3:.2f} ms kernel per message")
    print(f"voluntary context switches per message: {used(loop + others, 2) / n:.1f}")
    if args.gc:
        gc = json.loads((home / "gc.json").read_text())
        print(f"garbage collector during the load: collections by generation "
              f"{gc['collections']}, {gc['seconds'] * 1e3:.0f} ms in all, longest "
              f"{gc['longest'] * 1e3:.1f} ms")
    if args.strace:
        print("system calls per message (strace -c -f; ignore the rate above):")
        for line in (home / "strace").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
                print(f"  {parts[-1]:<16} {int(parts[3]) / n:6.1f}")


if __name__ == "__main__":
    main()
