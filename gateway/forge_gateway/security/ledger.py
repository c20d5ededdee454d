"""Tokens per key per day, counted in memory and written to the key store in batches.

Counting is a dict update on the event loop; a background task writes the accumulated batch to
the (async) key store every ``flush_interval`` seconds, and :meth:`UsageLedger.stop` writes what is
left, so usage accepted before a graceful shutdown is never lost. A batch whose write fails is
merged back and retried on the next flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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

    def __init__(self, store: KeyBackend, *, flush_interval: float = 2.0) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._pending: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()

    def record(self, key_id: str | None, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one request (cheap; no I/O)."""
        counts = self._pending[(key_id or OPEN_KEY_ID, _today())]
        counts[0] += 1
        counts[1] += prompt_tokens
        counts[2] += completion_tokens

    async def flush(self) -> None:
        """Write pending counts now."""
        async with self._flush_lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, defaultdict(lambda: [0, 0, 0])
            rows = [UsageRow(k, d, *c) for (k, d), c in batch.items()]
            try:
                if not await self.store.add_usage(rows):
                    # No key store file (dev mode, never had keys): usage lives in metrics only.
                    log.debug("usage_not_persisted", rows=len(rows), reason="no key store file")
            except Exception as exc:
                for (key, day), counts in batch.items():
                    merged = self._pending[(key, day)]
                    for i in range(3):
                        merged[i] += counts[i]
                log.warning("usage_flush_failed", error=str(exc), rows=len(rows))

    async def start(self) -> None:
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
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()
