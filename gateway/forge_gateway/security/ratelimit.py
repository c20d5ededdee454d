"""Per-key requests-per-minute and tokens-per-minute limits with GCRA.

GCRA (the generic cell rate algorithm, a leaky bucket kept as one timestamp) with a limit of
``L`` per 60 s: each unit costs ``60/L`` seconds of "theoretical arrival time" (TAT); a request
of cost ``c`` passes when ``max(TAT, now) + c*60/L - now <= 60``. So a fresh key may burst its
whole per-minute budget at once, and the budget refills continuously at ``L/60`` per second
(the way OpenAI documents its own limits). State is one float per key and limit, and
adjusting a reservation afterwards (tokens estimated before generation, reconciled after) is
just moving the TAT.

Backends: ``memory`` (one process) and ``redis``, where each check is one atomic Lua script
that reads the clock from Redis itself (``TIME``), so replicas with skewed clocks still share
one exact limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "Decision",
    "MemoryBackend",
    "RateLimitBackend",
    "RedisBackend",
    "rate_limit_headers",
    "redact_url",
    "redact_secret",
]

PERIOD = 60.0
"""Seconds in the limit's window: limits are per minute."""

_EPS = 1e-9


@dataclass(slots=True)
class Decision:
    """Outcome of one rate-limit check."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    """Seconds until the budget is full again."""
    retry_after: float
    """Seconds until this request's cost would pass (0 when allowed; inf when it never can)."""


def _decision(allowed: bool, limit: int, used: float, retry_after: float) -> Decision:
    """``used``: seconds of TAT ahead of now after this check."""
    interval = PERIOD / limit
    remaining = max(0, min(limit, math.floor((PERIOD - used) / interval + _EPS)))
    return Decision(allowed, limit, remaining, max(0.0, used), retry_after)


class RateLimitBackend(Protocol):
    """Where GCRA state lives."""

    async def acquire(self, bucket: str, limit: int, cost: int) -> Decision:
        """Take ``cost`` units from ``bucket`` (limit per minute) if they fit."""
        ...

    async def adjust(self, bucket: str, limit: int, delta: int) -> None:
        """Give back (negative) or charge extra (positive) units without a check."""
        ...

    async def close(self) -> None: ...


class MemoryBackend:
    """GCRA state in a dict: exact within one process (the event loop serialises calls)."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._clock = time.monotonic

    async def acquire(self, bucket: str, limit: int, cost: int) -> Decision:
        return self.acquire_now(bucket, limit, cost)

    def acquire_now(self, bucket: str, limit: int, cost: int) -> Decision:
        """Synchronous :meth:`acquire` (no await on the hot path)."""
        now = self._clock()
        interval = PERIOD / limit
        tat = max(self._tat.get(bucket, now), now)
        new_tat = tat + cost * interval
        allow_at = new_tat - PERIOD
        if allow_at - now > _EPS:
            retry = math.inf if cost > limit else allow_at - now
            return _decision(False, limit, tat - now, retry)
        self._tat[bucket] = new_tat
        if len(self._tat) > 100_000:
            self._prune(now)
        return _decision(True, limit, new_tat - now, 0.0)

    async def adjust(self, bucket: str, limit: int, delta: int) -> None:
        now = self._clock()
        tat = max(self._tat.get(bucket, now), now) + delta * (PERIOD / limit)
        self._tat[bucket] = max(tat, now)

    def _prune(self, now: float) -> None:
        # A TAT in the past is the same as no entry: drop them so idle keys cost no memory.
        self._tat = {k: v for k, v in self._tat.items() if v > now}

    async def close(self) -> None:
        self._tat.clear()


_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local interval = period / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - period
if allow_at - now > 1e-9 then
  return {0, string.format('%.6f', tat - now), string.format('%.6f', allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX', math.ceil((new_tat - now) * 1000) + 1000)
return {1, string.format('%.6f', new_tat - now), '0'}
"""

_ADJUST_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[3]) / tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat + tonumber(ARGV[2]) * interval
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
end
return 1
"""


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe for errors and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + netloc, parts.path, parts.query, parts.fragment))


def redact_secret(text: str, url: str) -> str:
    """``text`` (an error message) with the password of ``url`` blanked out wherever it appears."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    text = text.replace(url, redact_url(url))
    return text.replace(password, "***") if password else text


class RedisBackend:
    """GCRA state in Redis, shared by every gateway replica using the same URL.

    Every call is bounded by ``timeout`` (connect and socket timeouts plus an overall deadline,
    no client-side retries): a partitioned Redis fails closed within a second instead of
    hanging requests.

    Args:
        url: ``redis://[:password@]host:port/db``.
        prefix: key prefix for the buckets.
        timeout: seconds one call may take.
    """

    def __init__(self, url: str, *, prefix: str = "forge:rl:", timeout: float = 1.0) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self.timeout = timeout
        self._redis: Any = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry_on_timeout=False,
            retry=None,
        )
        self._acquire = self._redis.register_script(_ACQUIRE_LUA)
        self._adjust = self._redis.register_script(_ADJUST_LUA)

    async def ping(self) -> None:
        async with asyncio.timeout(self.timeout):
            await self._redis.ping()

    async def acquire(self, bucket: str, limit: int, cost: int) -> Decision:
        async with asyncio.timeout(self.timeout):
            allowed, used, retry = await self._acquire(
                keys=[self.prefix + bucket], args=[limit, cost, PERIOD]
            )
        retry_after = float(retry)
        if not allowed and cost > limit:
            retry_after = math.inf
        return _decision(bool(allowed), limit, float(used), retry_after)

    async def adjust(self, bucket: str, limit: int, delta: int) -> None:
        if delta:
            async with asyncio.timeout(self.timeout):
                await self._adjust(keys=[self.prefix + bucket], args=[limit, delta, PERIOD])

    async def close(self) -> None:
        await self._redis.aclose()


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def rate_limit_headers(
    requests: Decision | None, tokens: Decision | None, headers: list[tuple[bytes, bytes]]
) -> None:
    """Append OpenAI's ``x-ratelimit-*`` headers for the decisions made (raw ASGI form)."""
    for kind, d in ((b"requests", requests), (b"tokens", tokens)):
        if d is None:
            continue
        headers.append((b"x-ratelimit-limit-" + kind, str(d.limit).encode()))
        headers.append((b"x-ratelimit-remaining-" + kind, str(d.remaining).encode()))
        headers.append((b"x-ratelimit-reset-" + kind, _duration(d.reset_after).encode()))
