"""Tokens per key per day, counted in memory and written to the key store in batches.

Counting is a dict update on the event loop; a background task writes the accumulated batch to
the (async) key store every ``flush_interval`` seconds, or as soon as ``max_pending`` requests are
waiting, and :meth:`UsageLedger.stop` writes what is left, so usage accepted before a graceful
shutdown (SIGTERM, Ctrl-C) is never lost.

The crash window, bounded: a crash that skips shutdown (SIGKILL, OOM kill, power loss) loses the
usage not yet written, which is at most the last ``flush_interval`` seconds (``auth.
usage_flush_interval``, 1 s by default) and at most ``max_pending`` requests
(``auth.usage_flush_max_requests``, 500 by default), whichever is less, plus one write in flight.
While the key store cannot be written (a PostgreSQL outage), usage waits in memory (``usage_
flush_failed`` is logged with the backlog's age) and a crash then loses that backlog too: the
per-minute limits are unaffected (they live in the rate-limit backend), the daily ledger is not. Each batch carries a random id
the store records with it; a batch whose write fails is retried under the same id, so a write
whose outcome was unknown (a timeout while the server was committing) is applied exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import defaultdict

import structlog

from forge_gateway.security.keys import UsageRow
from forge_gateway.security.store import KeyBackend

__all__ = ["OPEN_KEY_ID", "UsageLedger"]

OPEN_KEY_ID = "-"
"""Ledger id for requests served without a key (open mode)."""

log = structlog.get_logger("forge_gateway.ledger")


def _today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


class UsageLedger:
    """Batched usage writer.

    Args:
        store: the key store holding the usage table (SQLite or PostgreSQL).
        flush_interval: seconds between batched writes.
    """

    def __init__(self, store: KeyBackend, *, flush_interval: float = 1.0, max_pending: int = 500) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._pending: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        self._pending_requests = 0
        self._oldest: float | None = None
        """When the oldest usage not yet written was recorded (monotonic), for the outage log."""
        self._due: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._unsent: tuple[str, list[UsageRow]] | None = None
        """A batch whose write failed, with its id: retried as it is until it succeeds (new counts
        wait in ``_pending``), so a write that failed on our side but committed on the server's
        is recognised by its id and never counted twice."""

    def record(self, key_id: str | None, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one request (cheap; no I/O)."""
        counts = self._pending[(key_id or OPEN_KEY_ID, _today())]
        counts[0] += 1
        counts[1] += prompt_tokens
        counts[2] += completion_tokens
        self._pending_requests += 1
        if self._oldest is None:
            self._oldest = time.monotonic()
        if self._pending_requests >= self.max_pending and self._due is not None:
            self._due.set()  # bound the crash window by count too, not only by time

    async def flush(self) -> None:
        """Write pending counts now (the unsent batch first, as it was)."""
        async with self._flush_lock:
            while True:
                if self._unsent is None:
                    if not self._pending:
                        return
                    batch, self._pending = self._pending, defaultdict(lambda: [0, 0, 0])
                    self._pending_requests = 0
                    rows = [UsageRow(k, d, *c) for (k, d), c in batch.items()]
                    self._unsent = (uuid.uuid4().hex, rows)
                batch_id, rows = self._unsent
                try:
                    written = await self.store.add_usage(rows, batch_id=batch_id)
                except Exception as exc:  # kept, under the same id, for the next flush
                    age = time.monotonic() - self._oldest if self._oldest is not None else 0.0
                    log.warning(
                        "usage_flush_failed", error=str(exc), rows=len(rows), unsaved_for_s=round(age, 1)
                    )
                    return
                self._unsent = None
                if not self._pending:
                    self._oldest = None
                if not written:
                    # No key store file (dev mode, never had keys): usage lives in metrics only.
                    log.debug("usage_not_persisted", rows=len(rows), reason="no key store file")

    async def start(self) -> None:
        if self._due is None:
            self._due = asyncio.Event()
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="forge-usage-ledger")

    async def stop(self) -> None:
        """Stop the flush loop and write everything still pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _loop(self) -> None:
        assert self._due is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self.flush_interval)
            self._due.clear()
            await self.flush()
