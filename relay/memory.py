"""Keep large, short-lived buffers from pinning memory after they are freed.

glibc serves allocations above its mmap threshold (128 KiB at start) with mmap, and gives
them back to the system on free. But the threshold is dynamic: after the first such block
is freed, glibc raises it to that block's size (up to 32 MiB). From then on every message
buffer of a few MiB comes from the heap arenas instead, and freed arena memory mostly
stays in the process. Measured with bench/upload_memory.py (50 clients x 10 MB at once,
plain listener, one delivery worker): peak RSS 167 MB with the dynamic threshold, 61 MB
with it fixed (bench/RESULTS.md).
Setting the threshold explicitly turns the dynamic adjustment off (mallopt(3)); it is the
same as MALLOC_MMAP_THRESHOLD_ in the environment, without relying on the unit file.

It is pinned at 4 MiB, above the buffers of a message of a few MB, and below those of the
large ones the peak RSS target is about:

- below 256 KiB every SMTP command would be an mmap: asyncio reads a socket into a fresh
  256 KiB buffer and shrinks it to what arrived (at 128 KiB, 21 system calls per message
  and a third of the event loop's kernel time: bench/loadprofile.py --strace);
- at 1 MiB, each buffer of a 1 MB message's delivery (the message, its base64, the
  request) was a fresh mmap: page faults and munmap were a fifth of the relay's CPU under
  1 MB messages (perf). At 4 MiB they come from the heap again: the other threads' kernel
  time fell from 1.7-1.9 to 0.3 ms per message (bench/loadprofile.py --size 1048576);
- 10 MB message buffers still go back at once: peak RSS in bench/upload_memory.py (TLS and
  AUTH, 10 deliveries at a time) is 169 MB at 4 MiB (172 MB with the arena cap below),
  172 MB at 1 MiB, 190 MB at 16 MiB.

And one arena for every thread, not glibc's one per thread (up to eight per core): a large
message's SendEmail document is built on the default executor's threads, and each of their
arenas kept its own share of freed buffers below the threshold. bench/compare.py --only
sesv2, 1000 x 1 MB from 50 sessions: peak PSS 305-321 MB with an arena per thread, 245-254
MB with one, at the same throughput (232-243 and 231-278 msg/s). Python objects are
allocated holding the GIL, so the one arena's lock is rarely contended (SQLite and OpenSSL
allocate without it, a little).

A cap on arenas only holds for arenas made after it: this must run before the process
starts threads (relay.serving.serve calls it first).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_M_MMAP_THRESHOLD = -3
_THRESHOLD = 4 * 1024 * 1024  # see above
_M_ARENA_MAX = -8
_ARENAS = 1  # see above


def tune_malloc() -> bool:
    """Pin glibc's mmap threshold and keep to one arena; a no-op (False) on other C
    libraries."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    pinned = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD))
    return bool(mallopt(_M_ARENA_MAX, _ARENAS)) and pinned


def freeze_startup_heap() -> None:
    """Take what start-up built (the SDK's service models, the configuration, the modules)
    out of the garbage collector's sight.

    Those objects live as long as the process, yet every full collection walks them all,
    with every session on the loop waiting. bench/loadprofile.py --gc (5,000 x 5 KB): 698
    ms of collections in all, the longest 81 ms; with them frozen and finished sessions'
    cycles broken (RelaySMTP._session_over), 199 ms, the longest 2.4 ms
    (bench/RESULTS.md). What the relay allocates from here on is collected as before.
    """
    gc.collect()
    gc.freeze()
