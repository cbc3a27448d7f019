"""Group commit for the queue: the fsyncs of many commits, and one fsync of ``active/``
for all of them, on a few threads of their own.

A commit is durable once its file is fsynced, renamed into ``active/`` and ``active/``
is fsynced after the rename (promise 1). Done one message per trip to a thread, every
commit costs two device flushes, a wake-up of a thread and a wake-up of the event loop,
each a GIL hand-off. Here a thread takes every commit waiting when it wakes: it fsyncs
each file, renames each, fsyncs the folder once for the batch, and wakes the loop once.
Under load the batches grow by themselves (what waits while one batch flushes is the
next batch); a lone commit goes straight through, as before. Databases do this with
their logs; no library does it for a folder of files, hence this module.

Why a few threads and not one: a large message's fsync (tens of MB to write back) would
hold every small commit behind it. With ``THREADS`` of them, one slow batch leaves the
others free. Measured with ``bench/commit.py`` (bench/RESULTS.md, "group commit").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import Callable

THREADS = 4

# (what writes the file and returns its descriptor to fsync, what closes and renames it
# after the fsync; the future to settle, and its loop)
_Item = tuple[Callable[[], int], Callable[[], None], "asyncio.Future[None]",
              asyncio.AbstractEventLoop]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class GroupCommitter:
    """``await commit(write, then)``: on a commit thread, *write* the file (it returns the
    descriptor), fsync it, run *then* (close it, rename it into the folder), and fsync the
    folder; raises the OSError of whichever step failed.

    The file is created and written on the thread as well, not on the event loop: under
    load a new file's creation waits for the journal the other commits' fsyncs are
    flushing (py-spy, smtp-source with 50 sessions: ``os.open`` was 19% of the loop
    thread's samples; bench/RESULTS.md, "group commit")."""

    def __init__(self, folder: str, threads: int = THREADS) -> None:
        self.folder = folder
        self._count = threads
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def commit(self, write: Callable[[], int], then: Callable[[], None]
               ) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._threads:
            self._start()
        self._queue.put((write, then, future, loop))
        return future

    def _start(self) -> None:
        with self._lock:  # started on first use: the queue tools open a spool and never commit
            if self._threads:
                return
            for i in range(self._count):
                thread = threading.Thread(target=self._run, name=f"commit-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def close(self) -> None:
        """Finish every commit queued, then stop the threads."""
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while not stop:  # everything waiting now: one folder fsync for all of it
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True  # this thread's end; finish the batch first
                else:
                    batch.append(more)
            self._settle(batch, self._flush(batch))
            if stop:
                return

    def _flush(self, batch: list[_Item]) -> list[OSError | None]:
        outcomes: list[OSError | None] = []
        renamed = []
        for i, (write, then, _, _) in enumerate(batch):
            try:
                os.fsync(write())
                then()
            except OSError as e:
                outcomes.append(e)
                continue
            outcomes.append(None)
            renamed.append(i)
        if renamed:
            try:
                # After every rename of the batch, so it covers each of them.
                fsync_dir(self.folder)
            except OSError as e:
                for i in renamed:
                    outcomes[i] = e
        return outcomes

    @staticmethod
    def _settle(batch: list[_Item], outcomes: list[OSError | None]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None],
                                                             OSError | None]]] = {}
        for (_, _, future, loop), outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, settled in by_loop.items():
            # One wake-up per batch. A closed loop raises: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[asyncio.Future[None], OSError | None]]) -> None:
    for future, error in settled:
        if future.done():  # cancelled: the commit still happened (or failed) as a whole
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
