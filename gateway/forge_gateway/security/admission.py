"""Admission control: at most ``max_concurrent`` generation requests at once, a bounded queue.

A request that finds every slot busy waits in a FIFO of at most ``max_queue`` waiters; when the
queue is full it is refused at once with 503 ``overloaded``, and a waiter that gets no slot
within ``queue_timeout`` seconds gets the same 503. Both carry ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from forge_sdk.errors import OverloadedError

__all__ = ["AdmissionController"]


class AdmissionController:
    """A counting semaphore with a bounded wait queue.

    Args:
        max_concurrent: requests admitted at once.
        max_queue: requests allowed to wait for a slot.
        queue_timeout: seconds a waiter waits before giving up.
    """

    def __init__(self, max_concurrent: int, max_queue: int, queue_timeout: float) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if needed.

        Raises:
            OverloadedError: queue full, or no slot within ``queue_timeout``.
        """
        if self.running < self.max_concurrent and not self._waiters:
            self.running += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise OverloadedError(
                f"server overloaded: {self.running} requests running and {len(self._waiters)} queued; retry later",
                headers={"Retry-After": "1"},
            )
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.queue_timeout)
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just as we gave up: pass it on.
                self.release()
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            if isinstance(exc, asyncio.TimeoutError):
                raise OverloadedError(
                    f"server overloaded: no free slot within {self.queue_timeout:g} s; retry later",
                    headers={"Retry-After": "1"},
                ) from exc
            raise

    def release(self) -> None:
        """Give a slot back; the longest waiter gets it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot moves to the waiter: running stays the same
                return
        self.running -= 1
