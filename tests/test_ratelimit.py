"""The token bucket, on a simulated clock: charged per recipient, throttled, paused."""

from __future__ import annotations

import asyncio

from relay.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)  # let other tasks run, as a real sleep would


def run(bucket: TokenBucket, *sizes: int) -> None:
    async def main() -> None:
        for n in sizes:
            await bucket.acquire(n)

    asyncio.run(main())


def test_recipients_are_sent_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    run(bucket, *[1] * 110)  # ten in the bucket, then one every tenth of a second
    assert 9.9 <= clock.now <= 10.1


def test_a_chunk_larger_than_the_bucket_borrows_and_the_next_one_waits() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    run(bucket, 50)
    assert clock.now == 0.0  # a full bucket lets a chunk of 50 go
    run(bucket, 1)
    assert 4.0 <= clock.now <= 4.2  # the debt of 40 is paid first


def test_throttling_lowers_the_rate_and_it_climbs_back() -> None:
    clock = Clock()
    bucket = TokenBucket(100.0, clock=clock, sleep=clock.sleep)
    bucket.throttled()
    assert bucket.rate == 90.0
    clock.now += 20
    run(bucket, 1)
    assert bucket.rate == 100.0


def test_a_pause_holds_even_an_unlimited_bucket() -> None:
    clock = Clock()
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    bucket.pause(30)
    run(bucket, 5, 5)
    assert clock.now == 30.0


def test_lifting_a_pause_lets_a_waiting_sender_through_within_a_second() -> None:
    clock = Clock()
    bucket = TokenBucket(None, clock=clock, sleep=clock.sleep)
    bucket.pause(600)

    async def flush_soon() -> None:  # runs once the sender has started waiting
        bucket.unpause()

    async def main() -> None:
        await asyncio.gather(bucket.acquire(1), flush_soon())

    asyncio.run(main())
    assert clock.now <= 1.0
