"""The fleet's shared send rate against a real redis-server: several limiters (as several
relays) draw from one bucket; Redis going away never stops delivery."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from clients import implicit
from conftest import PASSWORD, SENDER, USER, Setup, events, wait_until
from peers.redis import RedisServer

from relay.errors import ConfigError
from relay.ratelimit import TokenBucket
from relay.ratelimit_redis import SharedBucket, redact

SECRET = "s3cret-Redis-pw"  # test credential
MESSAGE = b"Subject: shared rate\r\n\r\nhello\r\n"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    # A short folder of its own: a unix socket's path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="redis-") as directory:
        server = RedisServer(Path(directory), password=SECRET)
        server.start()
        try:
            yield server
        finally:
            server.kill()


class Clock:
    """Simulated time for one task: a sleep moves the clock on by its length."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class SharedClock(Clock):
    """Simulated time for several tasks: it moves on only when every task is asleep (the
    others may be waiting on Redis), to the earliest wake-up. So the grants counted below
    are the bucket's doing, whatever the machine's speed."""

    def __init__(self, tasks: int) -> None:
        super().__init__()
        self.tasks = tasks
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def sleep(self, seconds: float) -> None:
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), wake))
        await wake

    def done(self) -> None:
        """A task ended: stop waiting for it to sleep."""
        self.tasks -= 1

    async def drive(self, until: Callable[[], bool]) -> None:
        for _ in range(100_000):  # bounded: far more steps than any test needs
            if until():
                return
            if self._sleepers and len(self._sleepers) >= self.tasks:
                at, _, wake = heapq.heappop(self._sleepers)
                self.now = max(self.now, at)
                wake.set_result(None)
            await asyncio.sleep(0.001)  # let the others reach Redis and back
        raise AssertionError("the simulation did not end")


def limiter(server: RedisServer, clock: Clock, rate: float = 10.0, *, key: str = "k",
            url: str | None = None) -> SharedBucket:
    local = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    return SharedBucket(url or server.url, local, key=key, clock=clock, sleep=clock.sleep)


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())


def test_two_relays_sharing_redis_keep_together_to_the_rate(
        redis_server: RedisServer) -> None:
    clock = SharedClock(tasks=2)
    grants: list[tuple[float, int]] = []

    async def main() -> None:
        relays = [limiter(redis_server, clock), limiter(redis_server, clock)]

        async def worker(relay: int) -> None:
            try:
                while len(grants) < 200:
                    await relays[relay].acquire(1)
                    grants.append((clock.now, relay))
            finally:
                clock.done()

        tasks = [asyncio.create_task(worker(i)) for i in range(2)]
        await clock.drive(lambda: all(t.done() for t in tasks))
        await asyncio.gather(*tasks)
        for relay in relays:
            await relay.aclose()

    run(main)
    times = [t for t, _ in grants]
    # One second of tokens at once, then 10 a second, for both relays together (alone,
    # each would have taken 10 a second).
    for start in times:
        in_window = sum(1 for t in times if start <= t < start + 1.0)
        assert in_window <= 10 + 10  # (a full bucket, plus a second's worth)
    span = max(times)
    assert len(times) <= 10 + 10 * span + 2  # 2: grants in flight when the count ended
    assert len(times) >= 10 * span  # and not much below it: the bucket is not idle
    assert {relay for _, relay in grants} == {0, 1}


def test_a_call_for_50_recipients_borrows_and_the_next_one_waits(
        redis_server: RedisServer) -> None:
    clock = Clock()

    async def main() -> None:
        one, other = limiter(redis_server, clock), limiter(redis_server, clock)
        await one.acquire(50)  # 50 at 10/s: goes at once, owes 4 seconds
        assert clock.now == 0.0
        await other.acquire(1)  # on another relay, it waits for the debt to be paid
        await one.aclose()
        await other.aclose()

    run(main)
    assert clock.now == pytest.approx(4.1, abs=1e-3)


def test_throttling_seen_by_one_relay_slows_every_relay(redis_server: RedisServer) -> None:
    clock = Clock()

    async def main() -> float | None:
        one, other = limiter(redis_server, clock), limiter(redis_server, clock)
        await other.acquire(1)
        one.throttled()  # the word goes to Redis in the background
        with redis.Redis.from_url(redis_server.url) as client:
            for _ in range(500):
                if float(client.hget("k", "rate") or 10) < 10:
                    break
                await asyncio.sleep(0.01)
        started = clock.now
        await other.acquire(9)  # the shared bucket was emptied: a bucketful takes 1 s
        waited = clock.now - started
        await one.aclose()
        await other.aclose()
        assert waited == pytest.approx(1.0, abs=1e-3)
        return other.rate

    # Every relay's rate lowered by 10% (then 1% of 10/s climbed back in that second).
    assert run(main) == pytest.approx(9.1, abs=0.01)


def test_a_redis_lost_mid_run_falls_back_to_the_local_bucket_and_is_used_again_once_back(
        redis_server: RedisServer, logs: list[dict[str, Any]]) -> None:
    clock = Clock()

    async def main() -> list[bool]:
        relay = limiter(redis_server, clock)
        seen = []
        await relay.acquire(1)
        seen.append(relay.shared)
        redis_server.kill()
        for _ in range(30):  # delivery goes on, at the local bucket's pace
            await relay.acquire(1)
        seen.append(relay.shared)
        redis_server.start()
        clock.now += 60  # past the retry back-off
        await relay.acquire(1)
        seen.append(relay.shared)
        await relay.aclose()
        return seen

    assert run(main) == [True, False, True]
    [fallback] = events(logs, "rate_limiter_fallback")  # once, not at every call
    assert fallback["reason"].startswith("ConnectionError")
    assert len(events(logs, "rate_limiter_recovered")) == 1


def test_a_redis_that_forgot_the_script_is_given_it_again(
        redis_server: RedisServer, logs: list[dict[str, Any]]) -> None:
    clock = Clock()

    async def main() -> bool:
        relay = limiter(redis_server, clock)
        await relay.acquire(1)  # the script is loaded (EVALSHA, then SCRIPT LOAD)
        with redis.Redis.from_url(redis_server.url) as client:
            client.script_flush()  # as a restarted or failed-over Redis would have it
        await relay.acquire(1)  # NOSCRIPT: loaded again, not a fallback
        await relay.aclose()
        return relay.shared

    assert run(main) is True
    assert events(logs, "rate_limiter_fallback") == []


def test_the_url_password_never_appears_in_the_logs(
        redis_server: RedisServer, logs: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    wrong = f"unix://:{SECRET}-wrong@{redis_server.socket}"

    async def main() -> None:
        refused = limiter(redis_server, clock, url=wrong)
        await refused.acquire(1)  # AUTH refused: local bucket
        relay = limiter(redis_server, clock)
        await relay.acquire(1)
        redis_server.kill()
        await relay.acquire(1)
        for r in (refused, relay):
            await r.aclose()

    run(main)
    reasons = [e["reason"] for e in events(logs, "rate_limiter_fallback")]
    assert len(reasons) == 2 and "AuthenticationError" in reasons[0]
    text = json.dumps(logs) + caplog.text
    assert SECRET not in text
    assert f"unix://:***@{redis_server.socket}" in text


def test_redact_hides_the_password_wherever_the_url_carries_it() -> None:
    assert redact("redis://user:pw@cache:6379/2") == "redis://user:***@cache:6379/2"
    assert redact("rediss://:pw@cache:6380/0") == "rediss://:***@cache:6380/0"
    assert redact("unix:///run/redis.sock?db=1&password=pw") == \
        "unix:///run/redis.sock?db=1&password=***"
    assert redact("redis://cache:6379/0") == "redis://cache:6379/0"


def send(setup: Setup, logs: list[dict[str, Any]], rcpts: list[str]) -> None:
    before = len(events(logs, "delivered"))
    with implicit(setup.implicit_port, setup.certs.ca, USER, PASSWORD) as s:
        s.sendmail(SENDER, rcpts, MESSAGE)
    wait_until(lambda: len(events(logs, "delivered")) > before)


def test_a_relay_with_rate_limiter_draws_from_redis_and_delivers_on_without_it(
        setup: Setup, start_relay: Any, redis_server: RedisServer,
        logs: list[dict[str, Any]]) -> None:
    setup.doc["delivery"].update({"rate_limiter": redis_server.url, "max_send_rate": 50})
    setup.write()
    start_relay(setup)
    send(setup, logs, ["a@example.net", "b@example.net"])
    with redis.Redis.from_url(redis_server.url) as client:
        bucket = client.hgetall("ses-relay:send-rate:default")
    assert float(bucket[b"rate"]) == 50.0  # sized by the rate, charged by the relay
    redis_server.kill()
    send(setup, logs, ["c@example.net"])  # Redis gone: delivered all the same
    [fallback] = events(logs, "rate_limiter_fallback")
    assert fallback["limiter"] == f"unix://:***@{redis_server.socket}"
    assert SECRET not in json.dumps(logs)
    assert SECRET not in (setup.queue_dir / "running-config.json").read_text()


@pytest.mark.parametrize("url", ["http://cache:6379", "redis://", "cache:6379", "unix://"])
def test_a_rate_limiter_that_is_not_a_redis_url_is_refused(setup: Setup, url: str) -> None:
    setup.doc["delivery"]["rate_limiter"] = url
    setup.write()
    with pytest.raises(ConfigError) as e:
        setup.load()
    [problem] = e.value.problems
    assert problem.startswith("delivery.rate_limiter: must be a redis://")
