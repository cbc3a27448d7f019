"""One send rate for the whole fleet: a bucket in Redis that every relay draws from.

SES's ``MaxSendRate`` is the account's, not a relay's: N relays that each keep to it send
N times too fast and learn the limit from throttling (dropped calls, retried later). With
``delivery.rate_limiter`` they share one bucket instead, kept in Redis by one Lua script
(so a take is atomic however many relays ask at once): GCRA, the bucket as a "theoretical
arrival time", with the same rules as relay.ratelimit.TokenBucket: one second of tokens,
charged per recipient, a call for more recipients than that borrowing against the future,
and on throttling the rate lowered by a tenth for every relay (then climbing back by 1% of
the ceiling per second). Time is the Redis server's own clock, so relays on hosts whose
clocks differ still agree.

Redis is a help, never a dependency of delivery: when it cannot be reached (or answers
with an error), this relay falls back to its own adaptive bucket, logs it once
(``rate_limiter_fallback``), and tries Redis again after a back-off (1 s, doubling to
30 s) until it answers (``rate_limiter_recovered``). The URL's password is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay import log
from relay.ratelimit import TokenBucket

_log = log.get("delivery")

# KEYS[1]: the bucket, a hash {tat, rate, stamp}. ARGV: mode ("take" or "throttled"), the
# ceiling (recipients per second), recipients, now (empty: the server's clock).
# Returns {seconds to wait (0: granted, charged), the rate in force}, as strings: Redis
# would truncate Lua numbers to integers.
_SCRIPT = """
local mode, ceiling, n = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if not now then
  -- (TIME before a write needs effects replication: the default since Redis 5.)
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local s = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'stamp')
local tat, rate, stamp = tonumber(s[1]) or now, tonumber(s[2]) or ceiling, tonumber(s[3]) or now
if tat < now then tat = now end
local old = rate
if now > stamp then rate = rate + 0.01 * ceiling * (now - stamp) end
if rate > ceiling then rate = ceiling end
local wait = 0
if mode == 'throttled' then rate = math.max(rate * 0.9, 0.1) end
-- What is owed is a number of recipients: at a new rate it takes a new time to pay.
tat = now + (tat - now) * old / rate
local cap = math.max(1, rate)
if mode == 'throttled' then
  tat = math.max(tat, now + cap / rate)
else
  wait = (tat - now) - (cap - math.min(n, cap)) / rate
  -- (The epsilon: a rounding error must not mean one more near-zero wait; and a wait
  -- that is not a grant must not print as 0.)
  if wait <= 1e-9 then
    tat = tat + n / rate
    wait = 0
  else
    wait = math.max(wait, 0.000001)
  end
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.6f', tat),
           'rate', string.format('%.6f', rate), 'stamp', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now) * 1000) + 120000)
return {string.format('%.6f', wait), string.format('%.6f', rate)}
"""

_STEP = 1.0  # the longest sleep between two looks (a lifted pause takes effect soon)
_FIRST_RETRY, _MAX_RETRY = 1.0, 30.0
_TIMEOUT = 1.0  # a Redis that does not answer within this is treated as down


def redact(url: str) -> str:
    """*url* without its password (in the authority or a ``password=`` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = urlencode([(k, "***" if k == "password" else v)
                       for k, v in parse_qsl(parts.query)], safe="*/")
    # Not urlunsplit: it drops the empty authority of unix:///path.
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def _secrets(url: str) -> list[str]:
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query) if k == "password"]
    return [s for s in (parts.password, *found) if s]


class SharedBucket:
    """The Redis bucket at *url* under *key*, with *local* (this process's adaptive bucket)
    as the fallback. The scheduler sizes it as it sizes the local one, with this process's
    *share* of the account's rate; the shared bucket holds the whole rate (divided back).

    *clock*, for tests, gives the script its "now" instead of the server's clock, and
    times pauses and retries (else time.monotonic does).
    """

    def __init__(self, url: str, local: TokenBucket, *, key: str, share: float = 1.0,
                 clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self._url = url
        self._secrets = _secrets(url)
        self._local = local
        self._key = key
        self._share = share
        self._clock = clock
        self._now = clock or time.monotonic
        self._sleep = sleep
        # Our own retries (the back-off below), not the client's: a call fails fast.
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT,
            retry=Retry(NoBackoff(), 0))
        self._script = self._redis.register_script(_SCRIPT)
        self._ceiling = None if local.rate is None else local.rate / share
        self._shared_rate: float | None = None  # in force, as Redis last said
        self._paused_until = 0.0
        self._healthy = True
        self._retry_at = 0.0
        self._backoff = _FIRST_RETRY
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def rate(self) -> float | None:
        """This process's share of the rate in force (recipients per second)."""
        if self._healthy and self._shared_rate is not None:
            return self._shared_rate * self._share
        return self._local.rate

    @property
    def shared(self) -> bool:
        """True while the rate is drawn from Redis (not fallen back to the local bucket)."""
        return self._healthy

    def set_rate(self, rate: float | None) -> None:
        self._local.set_rate(rate)
        if rate is not None:
            self._ceiling = rate / self._share

    async def acquire(self, n: int) -> None:
        """Wait until *n* recipients may be sent, then charge them (to Redis, or to the
        local bucket while Redis is out of reach)."""
        async with self._lock:  # one caller at a time per process, first come first served
            while True:
                wait = self._paused_until - self._now()
                if wait > 0:
                    await self._sleep(min(wait, _STEP))
                    continue
                if self._ceiling is None or self._retry_at > self._now():
                    break
                try:
                    wait = await self._call("take", n)
                except (RedisError, OSError) as e:
                    self._fell_back(e)
                    break
                if wait <= 0:
                    return
                await self._sleep(min(wait, _STEP))
        await self._local.acquire(n)

    def throttled(self) -> None:
        """SES said we are too fast: every relay slows down (and this one's fallback)."""
        self._local.throttled()
        if self._ceiling is not None and self._retry_at <= self._now():
            task = asyncio.ensure_future(self._tell_throttled())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def pause(self, seconds: float) -> None:
        """Send nothing from this process for a while (its upstream is down, the daily
        quota is spent)."""
        self._local.pause(seconds)
        self._paused_until = max(self._paused_until, self._now() + seconds)

    def unpause(self) -> None:
        self._local.unpause()
        self._paused_until = 0.0

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    async def _tell_throttled(self) -> None:
        try:
            await self._call("throttled", 0)
        except (RedisError, OSError) as e:
            self._fell_back(e)

    async def _call(self, mode: str, n: int) -> float:
        assert self._ceiling is not None
        now = "" if self._clock is None else repr(self._clock())
        wait, rate = await self._script(keys=[self._key],
                                        args=[mode, repr(self._ceiling), n, now])
        self._shared_rate = float(rate)
        if not self._healthy:
            self._healthy, self._retry_at, self._backoff = True, 0.0, _FIRST_RETRY
            _log.info("rate_limiter_recovered", limiter=redact(self._url))
        return float(wait)

    def _fell_back(self, e: BaseException) -> None:
        """Redis failed us: the local bucket from now on, Redis again after a back-off."""
        if self._healthy:
            self._healthy = False
            self._backoff = _FIRST_RETRY
            _log.warning("rate_limiter_fallback", limiter=redact(self._url),
                         reason=self._reason(e),
                         hint="each relay keeps to the rate on its own until Redis answers")
        else:
            self._backoff = min(self._backoff * 2, _MAX_RETRY)
        self._retry_at = self._now() + self._backoff

    def _reason(self, e: BaseException) -> str:
        text = f"{type(e).__name__}: {e}"
        for secret in self._secrets:  # an error message may quote the URL
            text = text.replace(secret, "***")
        return text


def fleet_limiter(url: str, *, region: str | None, max_send_rate: float | None,
                  share: float) -> SharedBucket:
    """The fleet's bucket for ``delivery.rate_limiter``, with a local bucket sized as the
    scheduler's own would be, for the fallback. One bucket per region: SES's rate is the
    account's in each region."""
    local = TokenBucket(max_send_rate * share if max_send_rate else None)
    return SharedBucket(url, local, key=f"ses-relay:send-rate:{region or 'default'}",
                        share=share)
