"""The relay's SQLite files opened by several processes at once (workers starting)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from relay.events import EventStore
from relay.suppression import SuppressionList

ROUNDS = 15


def open_all(folder: str, barrier: multiprocessing.synchronize.Barrier,
             errors: multiprocessing.queues.Queue[str]) -> None:
    for i in range(ROUNDS):
        barrier.wait(30)  # every process opens the same new files at the same moment
        try:
            SuppressionList(Path(folder) / f"s{i}.sqlite3").close()
            EventStore(Path(folder) / f"e{i}.sqlite3").close()
        except Exception as e:  # reported to the test
            errors.put(f"{type(e).__name__}: {e}")


def test_processes_opening_new_databases_at_once_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    errors: multiprocessing.queues.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=open_all, args=(str(tmp_path), barrier, errors))
             for _ in range(4)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
    finally:
        for p in procs:
            if p.is_alive():  # stuck at the barrier: do not outlive the test
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
