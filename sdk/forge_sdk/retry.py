"""The SDD §9.3 retry policy: exponential backoff on timeouts and connect errors."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from msgspec import Struct

__all__ = ["RETRY_CONFIG", "RetryPolicy"]

T = TypeVar("T")


class RetryPolicy(Struct, frozen=True, kw_only=True):
    """When and how long to wait before retrying a request (SDD §9.3)."""

    max_retries: int = 3
    """Retries after the first attempt."""
    base_delay: float = 1.0
    """Delay before the first retry, seconds."""
    max_delay: float = 30.0
    """Cap on any one delay, seconds."""
    exponential_base: float = 2.0
    """Growth factor of the delay per retry."""
    jitter: float = 0.1
    """Random extra delay as a fraction of the delay, so replicas don't retry in lockstep."""

    retryable: tuple[type[BaseException], ...] = (httpx.TimeoutException, httpx.ConnectError)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        base = min(self.max_delay, self.base_delay * self.exponential_base**attempt)
        return base + random.uniform(0, base * self.jitter)

    def call(self, fn: Callable[[], T]) -> T:
        """Call ``fn``, retrying retryable exceptions with backoff."""
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except self.retryable:
                if attempt >= self.max_retries:
                    raise
                time.sleep(self.delay(attempt))
        raise AssertionError("unreachable")

    async def acall(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()``, retrying retryable exceptions with backoff."""
        for attempt in range(self.max_retries + 1):
            try:
                return await fn()
            except self.retryable:
                if attempt >= self.max_retries:
                    raise
                await asyncio.sleep(self.delay(attempt))
        raise AssertionError("unreachable")


RETRY_CONFIG = RetryPolicy()
