"""The scheduler: takes committed messages from the queue to the transport, and retries.

Like Postfix's qmgr it keeps only ids and due times in memory (a heap), so a large queue
costs little; workers load a message's bytes only when they are about to send it. Retry
delays grow with the message's age, plus jitter so that a restart does not fire every
deferred message in the same second (chasquid's rule), and a message older than
``queue.max_age`` fails for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay import log, maillog
from relay.config import QueueConfig
from relay.errors import CorruptEntry, DeliveryError, SpoolError
from relay.spool import DeliveryState, Spool, queue_id_time
from relay.transports.base import Transport

_log = log.get("delivery")


@dataclass(frozen=True)
class Backoff:
    minimum: float
    maximum: float
    jitter: float = 0.2

    def delay(self, age: float, rng: Callable[[], float] = random.random) -> float:
        """Wait about as long as the message has already waited, within [min, max]."""
        base = min(self.maximum, max(self.minimum, age))
        return base * (1.0 + self.jitter * rng())


class Scheduler:
    def __init__(self, spool: Spool, transport: Transport, queue: QueueConfig, *,
                 concurrency: int, clock: Callable[[], float] = time.time) -> None:
        self._spool = spool
        self._transport = transport
        self._max_age = queue.max_age
        self._backoff = Backoff(queue.min_backoff, queue.max_backoff)
        self._concurrency = concurrency
        self._clock = clock
        self._heap: list[tuple[float, str]] = []
        self._ready: asyncio.Queue[str] = asyncio.Queue(maxsize=concurrency)
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[str] = set()
        self._drained = asyncio.Event()
        self._drained.set()

    # -- feeding

    def enqueue(self, queue_id: str, due: float | None = None) -> None:
        heapq.heappush(self._heap, (self._clock() if due is None else due, queue_id))
        self._wakeup.set()

    def load_backlog(self, queue_ids: list[str]) -> None:
        """Schedule what was queued before a restart, spread over a few seconds."""
        now = self._clock()
        spread = min(5.0, len(queue_ids) / 500)
        for qid in queue_ids:
            self.enqueue(qid, now + random.random() * spread)  # noqa: S311  # jitter, not crypto

    @property
    def pending(self) -> int:
        return len(self._heap) + self._ready.qsize() + len(self._in_flight)

    # -- running

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._dispatch(), name="dispatch"))
        for i in range(self._concurrency):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"worker-{i}"))

    async def stop(self) -> None:
        """Stop taking new work; wait for sends under way (bounded by the transport timeout)."""
        dispatcher, workers = self._tasks[:1], self._tasks[1:]
        for t in dispatcher:
            t.cancel()
        # Let workers finish what they hold: an interrupted send may be re-sent after the
        # restart, which is allowed but wasteful.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), 30)
        for t in workers:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _dispatch(self) -> None:
        while True:
            now = self._clock()
            if self._heap and self._heap[0][0] <= now:
                _, qid = heapq.heappop(self._heap)
                await self._ready.put(qid)  # blocks while all workers are busy
                continue
            self._wakeup.clear()
            timeout = (self._heap[0][0] - now) if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _worker(self) -> None:
        while True:
            qid = await self._ready.get()
            self._in_flight.add(qid)
            self._drained.clear()
            try:
                await self._deliver(qid)
            except Exception as e:  # a bug must not kill the worker or lose the message
                _log.exception("delivery_bug", queue_id=qid, error=repr(e))
                self.enqueue(qid, self._clock() + self._backoff.maximum)
            finally:
                self._in_flight.discard(qid)
                if not self._in_flight:
                    self._drained.set()

    # -- one attempt

    async def _deliver(self, qid: str) -> None:
        try:
            envelope, data = await asyncio.to_thread(self._spool.load, qid)
        except FileNotFoundError:
            return  # removed by an operator meanwhile
        except CorruptEntry as e:
            await asyncio.to_thread(self._spool.quarantine, qid)
            maillog.quarantined(qid, str(e))
            return
        except SpoolError as e:
            _log.error("queue_read_failed", queue_id=qid, error=str(e))
            self.enqueue(qid, self._clock() + self._backoff.maximum)
            return
        state = await asyncio.to_thread(self._spool.load_state, qid)
        state.attempts += 1
        state.last_attempt = self._clock()
        started = time.monotonic()
        try:
            message_id = await self._transport.send(envelope, data)
        except DeliveryError as e:
            await self._after_failure(qid, state, e)
            return
        await asyncio.to_thread(self._spool.remove, qid)
        maillog.delivered(qid, self._transport.name, message_id, envelope.rcpt_tos,
                          time.monotonic() - started, state.attempts)

    async def _after_failure(self, qid: str, state: DeliveryState, e: DeliveryError) -> None:
        name = self._transport.name
        state.last_error = f"{e.code}: {e}"
        age = self._clock() - queue_id_time(qid)
        if not e.permanent and age < self._max_age:
            delay = self._backoff.delay(age)
            await asyncio.to_thread(self._spool.save_state, qid, state)
            maillog.deferred(qid, name, e.code, str(e), e.hint, state.attempts, delay)
            self.enqueue(qid, self._clock() + delay)
            return
        hint = e.hint if e.permanent else f"gave up after {age / 3600:.1f} h in the queue; " \
                                          f"{e.hint}"
        record = {"queue_id": qid, "transport": name, "code": e.code, "error": str(e),
                  "hint": hint, "attempts": state.attempts, "failed_at": self._clock()}
        await asyncio.to_thread(self._spool.fail, qid, record)
        maillog.failed(qid, name, e.code, str(e), hint, state.attempts)
