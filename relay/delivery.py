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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from relay import log, maillog, metrics
from relay.config import QueueConfig
from relay.errors import Busy, CorruptEntry, DeliveryError, SpoolError
from relay.ratelimit import Limiter, TokenBucket
from relay.spool import Claim, DeliveryState, Envelope, Spool, queue_id_time
from relay.transports.base import Quota, Transport

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


FailureHook = Callable[[str, Envelope, dict[str, Any]], Awaitable[None]]


class ByteBudget:
    """Bounds the bytes of messages held in memory by deliveries under way.

    A transport needs the whole message in memory, and an API transport several copies
    (base64, the request body): ten workers on 10 MB messages would hold hundreds of MB.
    Each send is charged what its transport says it holds (``memory_per_byte``).
    A message larger than the whole budget still goes, alone.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = min(size, self._limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self._used + size <= self._limit)
            self._used += size
        try:
            yield
        finally:
            async with self._changed:
                self._used -= size
                self._changed.notify_all()


class Scheduler:
    def __init__(self, spool: Spool, transport: Transport, queue: QueueConfig, *,
                 concurrency: int, max_inflight_bytes: int = 64 * 2**20,
                 max_send_rate: float | None = None, rate_share: float = 1.0,
                 on_failed: FailureHook | None = None, limiter: Limiter | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._spool = spool
        self._transport = transport
        self._max_age = queue.max_age
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
        self._on_failed = on_failed
        self._down_streak = 0  # consecutive "cannot reach the upstream" failures
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
                    self._down_streak = 0
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
                await self._attempt(claim, fresh)
        finally:
            claim.release()  # idempotent: deferred, or an error

    async def _attempt(self, claim: Claim, fresh: bool) -> None:
        qid = claim.queue_id
        try:
            envelope, data, state = (claim.read() if fresh and claim.small
                                     else await asyncio.to_thread(claim.read))
        except CorruptEntry as e:
            await asyncio.to_thread(claim.quarantine)
            maillog.quarantined(qid, str(e))
            return
        except SpoolError as e:  # an I/O error: the entry may well be fine, try later
            _log.error("queue_read_failed", queue_id=qid, error=str(e))
            self.enqueue(qid, self._clock() + self._backoff.maximum)
            return
        state.attempts += 1
        state.last_attempt = self._clock()
        state.last_deferred = {}  # this attempt's; every chunk adds its own
        pending = [r for r in envelope.rcpt_tos if r not in state.done
                   and r not in state.rejected]
        chunks = split(tuple(pending), self._transport.max_recipients)
        for i, rcpts in enumerate(chunks):
            error = await self._send_chunk(qid, envelope, data, state, rcpts)
            if error is not None:
                await self._defer_or_expire(claim, envelope, state, error)
                return
            if i < len(chunks) - 1:
                # Progress must survive a crash, or a restart would send these again.
                await asyncio.to_thread(self._spool.save_state, qid, state, durable=True)
        if state.last_deferred:  # recipients the upstream deferred one by one
            code, error_text, hint = next(iter(state.last_deferred.values()))
            await self._defer_or_expire(claim, envelope, state, DeliveryError(
                error_text, permanent=False, code=code, hint=hint))
            return
        await self._settled(claim, envelope, state)

    async def _send_chunk(self, qid: str, envelope: Envelope, data: bytes,
                          state: DeliveryState, rcpts: tuple[str, ...]) -> DeliveryError | None:
        """Send to one chunk of recipients; record who got it; return an error worth a retry.
        """
        name = self._transport.name
        await self._wait_turn(len(rcpts))
        started = time.monotonic()
        try:
            result = await self._transport.send(replace(envelope, rcpt_tos=rcpts), data)
        except DeliveryError as e:
            if not e.permanent:
                return e
            for r in rcpts:
                state.rejected[r] = [e.code, str(e), e.hint]
            maillog.failed(qid, name, e.code, str(e), e.hint, state.attempts, rcpts)
            return None
        self._down_streak = 0
        accepted = [r for r in rcpts if r not in result.refused]
        for r in accepted:
            state.done[r] = result.message_id
        for r, err in result.refused.items():
            if err.permanent:
                state.rejected[r] = [err.code, str(err), err.hint]
                maillog.failed(qid, name, err.code, str(err), err.hint, state.attempts, [r])
            else:
                state.last_deferred[r] = [err.code, str(err), err.hint]
        if accepted:
            maillog.delivered(qid, name, result.message_id, accepted,
                              time.monotonic() - started, state.attempts)
        return None

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

    async def _settled(self, claim: Claim, envelope: Envelope, state: DeliveryState) -> None:
        if not state.rejected:
            # Two unlinks and a close: on the loop for a small message read there; a large
            # file's blocks are freed on a thread.
            if claim.small:
                claim.remove()
            else:
                await asyncio.to_thread(claim.remove)
            return
        code, error, hint = next(iter(state.rejected.values()))
        await self._fail(claim, envelope, state, code, error, hint)

    async def _defer_or_expire(self, claim: Claim, envelope: Envelope, state: DeliveryState,
                               e: DeliveryError) -> None:
        qid = claim.queue_id
        name = self._transport.name
        state.last_error = f"{e.code}: {e}"
        age = self._clock() - queue_id_time(qid)
        if e.code in _UPSTREAM_DOWN:
            self._upstream_down()
        if age < self._max_age:
            delay = self._after_throttle(e) if e.throttle else self._backoff.delay(age)
            await asyncio.to_thread(self._spool.save_state, qid, state,
                                    durable=bool(state.done or state.rejected))
            if e.throttle:
                maillog.throttled(qid, name, e.code, e.throttle, delay)
            else:
                maillog.deferred(qid, name, e.code, str(e), e.hint, state.attempts, delay)
            self.enqueue(qid, self._clock() + delay)
            return
        hint = f"gave up after {age / 3600:.1f} h in the queue; {e.hint}"
        left = [r for r in envelope.rcpt_tos if r not in state.done and r not in state.rejected]
        for r in left:
            state.rejected[r] = [e.code, str(e), hint]
        maillog.failed(qid, name, e.code, str(e), hint, state.attempts, left)
        await self._fail(claim, envelope, state, e.code, str(e), hint)

    def _upstream_down(self) -> None:
        """The upstream cannot be reached: stop trying every queued message against it.

        Like Postfix marking a destination dead, the next attempts wait (1, 2, 4... up to
        60 seconds) instead of each message failing in turn; with a large backlog that
        would burn the CPU the SMTP side needs. Mail stays queued, nothing is lost.
        """
        self._down_streak += 1
        pause = min(60.0, 2.0 ** (self._down_streak - 1))
        self._limiter.pause(pause)
        _log.warning("upstream_down", pause=pause, streak=self._down_streak)

    def _after_throttle(self, e: DeliveryError) -> float:
        """Slow down for everyone; retry this message soon, not at its next backoff step."""
        if e.throttle == "daily":
            self._limiter.pause(_DAILY_QUOTA_PAUSE)
            return _DAILY_QUOTA_PAUSE * (1 + 0.1 * random.random())  # noqa: S311
        self._limiter.throttled()
        return 1.0 + random.random()  # noqa: S311  # jitter, not crypto

    async def _fail(self, claim: Claim, envelope: Envelope, state: DeliveryState, code: str,
                    error: str, hint: str) -> None:
        qid = claim.queue_id
        record = {
            "queue_id": qid, "transport": self._transport.name, "code": code, "error": error,
            "hint": hint, "attempts": state.attempts, "failed_at": self._clock(),
            "failed": dict(state.rejected),  # recipient: [code, error, hint]
            "delivered": dict(state.done),  # recipient: upstream message id
        }
        await asyncio.to_thread(claim.fail, record)
        if self._on_failed is not None:
            await self._on_failed(qid, envelope, record)

    # -- the account's quota

    async def _watch_quota(self) -> None:
        while True:
            await asyncio.sleep(_QUOTA_REFRESH)
            await self._refresh_quota()

    async def _refresh_quota(self) -> None:
        """Follow SES's MaxSendRate (unless configured), and stop short of the daily quota."""
        try:
            quota = await self._transport.quota()
        except Exception as e:  # a quota we cannot read must not stop delivery
            _log.warning("quota_unavailable", error=str(e),
                         hint="set delivery.max_send_rate, or allow ses:GetAccount "
                              "(SESv2) / ses:GetSendQuota (SESv1)")
            return
        if quota is None:
            return
        self.quota = quota
        if self._configured_rate is None:
            self._limiter.set_rate(quota.max_send_rate * self._rate_share)
        metrics.QUOTA_MAX_24H.set(quota.max_24_hour_send)
        metrics.QUOTA_SENT_24H.set(quota.sent_last_24_hours)
        if quota.max_24_hour_send > 0 and quota.sent_last_24_hours >= quota.max_24_hour_send:
            _log.warning("daily_quota_reached", max_24_hour_send=quota.max_24_hour_send,
                         sent_last_24_hours=quota.sent_last_24_hours,
                         hint="mail stays queued until SES's 24-hour window frees up; "
                              "ask AWS for a higher sending quota")
            self._limiter.pause(_DAILY_QUOTA_PAUSE)
        _log.info("quota", max_send_rate=quota.max_send_rate,
                  max_24_hour_send=quota.max_24_hour_send,
                  sent_last_24_hours=quota.sent_last_24_hours, rate_in_force=self._limiter.rate)


_DAILY_QUOTA_PAUSE = 900.0
_UPSTREAM_DOWN = frozenset({"ConnectionError", "Timeout", "TLSError"})
_QUEUE_WATCH = 2.0
_QUOTA_REFRESH = 300.0
_FRESH = 5.0  # seconds since a message was written for it to be read on the event loop


def split(rcpts: tuple[str, ...], size: int) -> list[tuple[str, ...]]:
    """Recipients in chunks of at most *size*, the same way every time (progress keys)."""
    return [rcpts[i:i + size] for i in range(0, len(rcpts), size)]
