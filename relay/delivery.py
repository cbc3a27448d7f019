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

from relay import log, quotawatch
from relay.attempt import Attempts, FailureHook
from relay.config import QueueConfig
from relay.errors import Busy, SpoolError
from relay.pacing import Backoff, ByteBudget
from relay.ratelimit import Limiter, TokenBucket
from relay.spool import Spool, queue_id_time
from relay.suppression import SuppressionList
from relay.transports.base import Quota, Transport

__all__ = ["Backoff", "ByteBudget", "FailureHook", "Scheduler"]

_log = log.get("delivery")


class Scheduler:
    def __init__(self, spool: Spool, transport: Transport, queue: QueueConfig, *,
                 concurrency: int, max_inflight_bytes: int = 64 * 2**20,
                 max_send_rate: float | None = None, rate_share: float = 1.0,
                 on_failed: FailureHook | None = None, limiter: Limiter | None = None,
                 suppression: SuppressionList | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._spool = spool
        self._transport = transport
        self._backoff = Backoff(queue.min_backoff, queue.max_backoff)
        self._concurrency = concurrency
        self._clock = clock
        self._heap: list[tuple[float, str]] = []
        # The due time of every waiting message. The heap may hold stale entries for an id
        # that was rescheduled (a flush, a retry); only the one matching this map counts.
        self._due: dict[str, float] = {}
        self._known: set[str] = set()  # waiting, ready or in flight
        self._ready: asyncio.Queue[str] = asyncio.Queue(maxsize=concurrency)
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[str] = set()
        self._waiting: set[asyncio.Task[None]] = set()  # workers in _wait_turn
        self._stopping = False
        self._drained = asyncio.Event()
        self._drained.set()
        self._budget = ByteBudget(max_inflight_bytes)
        # With several relay processes each keeps to its share of the account's rate.
        self._rate_share = rate_share
        self._configured_rate = max_send_rate
        self._limiter = limiter or TokenBucket(max_send_rate * rate_share if max_send_rate
                                               else None)
        # Checked again right before each send: a recipient may have bounced elsewhere
        # while the message waited.
        self._attempts = Attempts(spool, transport, backoff=self._backoff,
                                  max_age=queue.max_age, limiter=self._limiter, clock=clock,
                                  enqueue=self.enqueue, wait_turn=self._wait_turn,
                                  on_failed=on_failed, suppression=suppression)
        self._running = asyncio.Event()  # cleared while delivery is paused
        self._running.set()
        self.paused_reason: str | None = None
        self.quota: Quota | None = None  # the account's, as last read (None: unknown)

    # -- feeding

    def enqueue(self, queue_id: str, due: float | None = None) -> None:
        when = self._clock() if due is None else due
        self._due[queue_id] = when
        self._known.add(queue_id)
        heapq.heappush(self._heap, (when, queue_id))
        self._wakeup.set()

    def _forget(self, queue_id: str) -> None:
        if queue_id not in self._due:
            self._known.discard(queue_id)

    def load_backlog(self, queue_ids: list[str]) -> None:
        """Schedule what was queued before a restart, spread over a few seconds."""
        now = self._clock()
        spread = min(5.0, len(queue_ids) / 500)
        for qid in queue_ids:
            self.enqueue(qid, now + random.random() * spread)  # noqa: S311  # jitter, not crypto

    @property
    def pending(self) -> int:
        return len(self._known)

    @property
    def rate(self) -> float | None:
        return self._limiter.rate

    def set_max_send_rate(self, max_send_rate: float | None) -> None:
        """delivery.max_send_rate changed (SIGHUP): a rate is in force from the next send;
        None follows the account's MaxSendRate again from the next quota refresh."""
        self._configured_rate = max_send_rate
        if max_send_rate is not None:
            self._limiter.set_rate(max_send_rate * self._rate_share)

    def oldest_age(self) -> float:
        """Seconds since the oldest known message arrived (ids sort by arrival)."""
        return self._clock() - queue_id_time(min(self._known)) if self._known else 0.0

    # -- running

    async def start(self) -> None:
        paused = self._spool.paused()
        if paused is not None:
            _log.warning("delivery_paused", reason=paused, hint="`ses-relay resume` resumes")
            self.paused_reason = paused
            self._running.clear()
        # Know the account's rate before the first send, or the backlog of a restart would
        # go out unthrottled and meet SES's throttling first.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refresh_quota(), 10)
        self._tasks.append(asyncio.create_task(self._dispatch(), name="dispatch"))
        self._tasks.append(asyncio.create_task(self._watch_quota(), name="quota"))
        self._tasks.append(asyncio.create_task(self._watch_queue(), name="queue-watch"))
        for i in range(self._concurrency):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"worker-{i}"))

    async def stop(self) -> None:
        """Stop taking new work; wait for sends under way (bounded by the transport timeout)."""
        dispatcher, workers = self._tasks[:3], self._tasks[3:]
        for t in dispatcher:
            t.cancel()
        # Workers only waiting for their turn (a paused upstream, the rate limit) give
        # their message back at once: nothing was sent. The others finish what they hold:
        # an interrupted send may be re-sent after the restart, allowed but wasteful.
        self._stopping = True
        for t in list(self._waiting):
            t.cancel()
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
                due, qid = heapq.heappop(self._heap)
                if self._due.get(qid) != due:
                    continue  # stale: rescheduled since
                del self._due[qid]
                await self._ready.put(qid)  # blocks while all workers are busy
                continue
            self._wakeup.clear()
            timeout = (self._heap[0][0] - now) if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _worker(self) -> None:
        while True:
            qid = await self._ready.get()
            # No claim while paused: one taken now would stay claimed until the pause ends,
            # and a pause is when an operator holds or deletes mail (`queue hold` would
            # answer "being delivered right now"). After the get, not before: an idle
            # worker waits in get() through the pause's start. Holding only the id is
            # harmless: a message held or deleted meanwhile is not found by the claim.
            await self._running.wait()
            if qid in self._in_flight:  # already being delivered (rescheduled meanwhile)
                continue
            self._in_flight.add(qid)
            self._drained.clear()
            try:
                await self._deliver(qid)
            except Exception as e:  # a bug must not kill the worker or lose the message
                _log.exception("delivery_bug", queue_id=qid, error=repr(e))
                self.enqueue(qid, self._clock() + self._backoff.maximum)
            finally:
                self._in_flight.discard(qid)
                self._forget(qid)
                if not self._in_flight:
                    self._drained.set()

    def pause(self, reason: str, *, persist: bool = True) -> None:
        """Stop sending (mail stays queued) until ``resume``; survives a restart."""
        if self.paused_reason is None:
            self.paused_reason = reason
            self._running.clear()
            if persist:
                self._spool.set_paused(reason)

    def resume(self) -> None:
        """Send again (the `resume` trigger). The pause file is the command's to remove:
        with several workers, one removing it here could lift a pause that another
        worker's reputation guard has set again since."""
        if self.paused_reason is not None:
            _log.info("delivery_resumed", was=self.paused_reason)
        self.paused_reason = None
        self._running.set()

    async def _watch_queue(self) -> None:
        """Pick up what queue commands did while we run: released or requeued messages
        appear in active/, and trigger files ask for a flush or a retry."""
        while True:
            await asyncio.sleep(_QUEUE_WATCH)
            triggers = await asyncio.to_thread(self._spool.take_triggers)
            now = self._clock()
            # Another relay process's reputation guard may have paused delivery.
            if (self.paused_reason is None and self._spool.share.deliverers > 1
                    and (reason := await asyncio.to_thread(self._spool.paused)) is not None):
                _log.warning("delivery_paused", reason=reason,
                             hint="`ses-relay resume` resumes")
                self.pause(reason, persist=False)
            for name in triggers:
                if name == "resume":
                    self.resume()
                elif name == "pause":  # `ses-relay pause`, the console
                    reason = await asyncio.to_thread(self._spool.paused)
                    if reason is not None and self.paused_reason is None:
                        _log.warning("delivery_paused", reason=reason,
                                     hint="`ses-relay resume` resumes")
                        self.pause(reason, persist=False)
                elif name == "flush":
                    # Like `postqueue -f`: try now, even an upstream thought down.
                    self._limiter.unpause()
                    self._attempts.down_streak = 0
                    for qid in list(self._due):
                        self.enqueue(qid, now)
                elif name.startswith("retry.") and name[6:] in self._due:
                    self.enqueue(name[6:], now)
            for qid in await asyncio.to_thread(self._spool.active_ids, owned=True):
                if qid not in self._known:
                    self.enqueue(qid, now)

    # -- one attempt

    async def _deliver(self, qid: str) -> None:
        # A message written in the last few seconds (its id says when) is in the page
        # cache: opening, locking and reading it costs the event loop less than the
        # hand-off to a thread. An older one may have to come from the disk, which would
        # stall every session, so it goes to a thread.
        fresh = self._clock() - queue_id_time(qid) < _FRESH
        try:
            claim = (self._spool.claim(qid) if fresh
                     else await asyncio.to_thread(self._spool.claim, qid))
        except Busy:
            self.enqueue(qid, self._clock() + 1.0)  # an operator's command holds it
            return
        except SpoolError as e:
            _log.error("queue_read_failed", queue_id=qid, error=str(e))
            self.enqueue(qid, self._clock() + self._backoff.maximum)
            return
        if claim is None:
            return  # held or deleted by an operator meanwhile
        try:
            async with self._budget.hold(int(claim.size * self._transport.memory_per_byte)):
                await self._attempts.run(claim, fresh)
        finally:
            claim.release()  # idempotent: deferred, or an error

    async def _wait_turn(self, rcpts: int) -> None:
        """Wait while delivery is paused (reputation guard, operator), for the rate limit,
        and out a paused upstream; stop() cancels a worker waiting here."""
        task = asyncio.current_task()
        assert task is not None
        if self._stopping:
            raise asyncio.CancelledError
        self._waiting.add(task)
        try:
            await self._running.wait()
            await self._limiter.acquire(rcpts)
        finally:
            self._waiting.discard(task)

    # -- the account's quota

    async def _watch_quota(self) -> None:
        while True:
            await asyncio.sleep(_QUOTA_REFRESH)
            await self._refresh_quota()

    async def _refresh_quota(self) -> None:
        quota = await quotawatch.refresh(self._transport, self._limiter,
                                         configured_rate=self._configured_rate,
                                         rate_share=self._rate_share)
        if quota is not None:
            self.quota = quota


_QUEUE_WATCH = 2.0
_QUOTA_REFRESH = 300.0
_FRESH = 5.0  # seconds since a message was written for it to be read on the event loop

