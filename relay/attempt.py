"""One delivery attempt of one message, and what its outcome means for the message: done,
deferred (with which delay), or failed for good (with a notice to the sender).

The scheduler (relay/delivery.py) decides *when* a message goes; this decides what an
attempt does: recipients left are sent in chunks, each chunk's recipients are checked
against the suppression list right before the send (relay/sendtime.py), and the answer is
recorded so that a restart never re-sends what SES already took.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from relay import log, maillog, sendtime
from relay.errors import CorruptEntry, DeliveryError, SpoolError
from relay.pacing import Backoff, split
from relay.queueentry import FileBlob
from relay.quotawatch import DAILY_QUOTA_PAUSE
from relay.ratelimit import Limiter
from relay.spool import Claim, DeliveryState, Envelope, Spool, queue_id_time
from relay.suppression import SuppressionList
from relay.transports.base import FileSender, Transport
from relay.transports.regions import Pinnable

_log = log.get("delivery")

FailureHook = Callable[[str, Envelope, dict[str, Any]], Awaitable[None]]


class Attempts:
    def __init__(self, spool: Spool, transport: Transport, *, backoff: Backoff,
                 max_age: float, limiter: Limiter, clock: Callable[[], float],
                 enqueue: Callable[[str, float], None],
                 wait_turn: Callable[[int], Awaitable[None]],
                 on_failed: FailureHook | None,
                 suppression: SuppressionList | None) -> None:
        self._spool = spool
        self._transport = transport
        self._backoff = backoff
        self._max_age = max_age
        self._limiter = limiter
        self._clock = clock
        self._enqueue = enqueue
        self._wait_turn = wait_turn
        self._on_failed = on_failed
        self._suppression = suppression
        self.down_streak = 0  # consecutive "cannot reach the upstream" failures

    async def run(self, claim: Claim, fresh: bool) -> None:
        """One delivery attempt of a claimed message: send what is left, record who got
        it, and settle (done, deferred, failed)."""
        qid = claim.queue_id
        try:
            envelope, data, state = await self._read(claim, fresh)
        except CorruptEntry as e:
            await asyncio.to_thread(claim.quarantine)
            maillog.quarantined(qid, str(e))
            return
        except SpoolError as e:  # an I/O error: the entry may well be fine, try later
            _log.error("queue_read_failed", queue_id=qid, error=str(e))
            self._enqueue(qid, self._clock() + self._backoff.maximum)
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

    async def _read(self, claim: Claim, fresh: bool
                    ) -> tuple[Envelope, bytes | FileBlob, DeliveryState]:
        """The entry: a small one just written from the page cache on the loop, a large one
        left in its file for a transport that reads it as it sends (FileSender)."""
        if claim.small:
            return claim.read() if fresh else await asyncio.to_thread(claim.read)
        if isinstance(self._transport, FileSender):
            return await asyncio.to_thread(claim.read_blob)
        return await asyncio.to_thread(claim.read)

    async def _send_chunk(self, qid: str, envelope: Envelope, data: bytes | FileBlob,
                          state: DeliveryState, rcpts: tuple[str, ...]) -> DeliveryError | None:
        """Send to one chunk of recipients; record who got it; return an error worth a retry.
        """
        name = self._transport.name
        await self._wait_turn(len(rcpts))
        # After the wait (a pause may have lasted hours), right before the send.
        try:
            # About 8 us a recipient (SQLite lookups): a few on the loop, a full chunk of 50
            # (0.4 ms, measured with 100,000 entries) on a thread.
            rcpts = (sendtime.drop_suppressed(qid, rcpts, state, self._suppression)
                     if len(rcpts) <= _INLINE_LOOKUPS else await asyncio.to_thread(
                         sendtime.drop_suppressed, qid, rcpts, state, self._suppression))
        except DeliveryError as e:
            return e
        if not rcpts:
            return None  # everyone suppressed: nothing to send
        started = time.monotonic()
        chunk = replace(envelope, rcpt_tos=rcpts)
        try:
            if isinstance(data, FileBlob):
                assert isinstance(self._transport, FileSender)
                result = await self._transport.send_file(chunk, data)
            elif state.pin and isinstance(self._transport, Pinnable):
                result = await self._transport.send_pinned(chunk, data, state.pin)
            else:
                result = await self._transport.send(chunk, data)
        except DeliveryError as e:
            if e.pin:
                state.pin = e.pin  # may have reached SES there: retried there only
            if not e.permanent:
                return e
            for r in rcpts:
                state.rejected[r] = [e.code, str(e), e.hint]
            maillog.failed(qid, name, e.code, str(e), e.hint, state.attempts, rcpts)
            return None
        self.down_streak = 0
        state.pin = ""
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
                              time.monotonic() - started, state.attempts, result.region)
        return None

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
                                    durable=bool(state.done or state.rejected or state.pin))
            if e.throttle:
                maillog.throttled(qid, name, e.code, e.throttle, delay)
            else:
                maillog.deferred(qid, name, e.code, str(e), e.hint, state.attempts, delay)
            self._enqueue(qid, self._clock() + delay)
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
        self.down_streak += 1
        pause = min(60.0, 2.0 ** (self.down_streak - 1))
        self._limiter.pause(pause)
        _log.warning("upstream_down", pause=pause, streak=self.down_streak)

    def _after_throttle(self, e: DeliveryError) -> float:
        """Slow down for everyone; retry this message soon, not at its next backoff step."""
        if e.throttle == "daily":
            self._limiter.pause(DAILY_QUOTA_PAUSE)
            return DAILY_QUOTA_PAUSE * (1 + 0.1 * random.random())  # noqa: S311
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


_UPSTREAM_DOWN = frozenset({"ConnectionError", "Timeout", "TLSError"})
_INLINE_LOOKUPS = 8  # recipients looked up in the suppression list on the event loop
