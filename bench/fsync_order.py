"""What one durable commit of a 5 KB queue file costs on this disk, three ways, one writer:

- ``relay``: write in tmp/, fsync it, rename into active/, fsync active/ (the relay's);
- ``rename-first``: write, rename, then fsync the file and the folder (the same promise
  for a message that got 250, but a crash before them can leave an unfinished file named
  in active/, which the trailer check must then catch);
- ``in-place``: create it in active/, fchmod it complete, fsync it once (Postfix's way;
  relies on ext4, XFS and btrfs making a new file's name durable with the file, which
  POSIX does not promise).

It tells how much of the relay's body-to-250 the second fsync is: the lever a
single-fsync commit would pull (bench/RESULTS.md). Plain os calls, no relay code: it
measures the disk, not the spool.

    .venv/bin/python bench/fsync_order.py [--dir /var/lib/ses-relay/fsync-bench]
        [--messages 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

BODY = b"x" * 5200


def relay(base: Path, name: str, folder: int) -> None:
    tmp = base / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, BODY)
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, base / "active" / name)
    os.fsync(folder)


def rename_first(base: Path, name: str, folder: int) -> None:
    tmp = base / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, BODY)
    os.rename(tmp, base / "active" / name)
    os.fsync(fd)
    os.close(fd)
    os.fsync(folder)


def in_place(base: Path, name: str, folder: int) -> None:
    fd = os.open(base / "active" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, BODY)
    os.fchmod(fd, 0o700)
    os.fsync(fd)
    os.close(fd)


WAYS: dict[str, Callable[[Path, str, int], None]] = {
    "relay": relay, "rename-first": rename_first, "in-place": in_place}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("bench-fsync"),
                    help="on the file system the queue lives on (created, then removed)")
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base: Path = args.dir
    for sub in ("tmp", "active"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    folder = os.open(base / "active", os.O_RDONLY | os.O_DIRECTORY)
    print("| round | " + " | ".join(WAYS) + " |")
    print("|---|" + "---|" * len(WAYS))
    try:
        n = 0
        for r in range(1, args.rounds + 1):
            cells = []
            for way in WAYS.values():  # interleaved, so that the disk's drift hits all
                started = time.perf_counter()
                for _ in range(args.messages):
                    way(base, str(n), folder)
                    n += 1
                cells.append(f"{(time.perf_counter() - started) / args.messages * 1000:.3f} ms")
                for entry in (base / "active").iterdir():
                    entry.unlink()
            print(f"| {r} | " + " | ".join(cells) + " |")
    finally:
        os.close(folder)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
