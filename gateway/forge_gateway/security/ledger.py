"""Tokens per key per day, counted in memory and written to the key store in batches.

Counting is a dict update on the event loop; a background task writes the accumulated batch to
the (async) key store every ``flush_interval`` seconds, and :meth:`UsageLedger.stop` writes what is
left, so usage accepted before a graceful shutdown is never lost. Each batch carries a random id
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

    def __init__(self, store: KeyBackend, *, flush_interval: float = 2.0) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._pending: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
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

    async def flush(self) -> None:
        """Write pending counts now (the unsent batch first, as it was)."""
        async with self._flush_lock:
            while True:
                if self._unsent is None:
                    if not self._pending:
                        return
                    batch, self._pending = self._pending, defaultdict(lambda: [0, 0, 0])
                    rows = [UsageRow(k, d, *c) for (k, d), c in batch.items()]
                    self._unsent = (uuid.uuid4().hex, rows)
                batch_id, rows = self._unsent
                try:
                    written = await self.store.add_usage(rows, batch_id=batch_id)
                except Exception as exc:  # kept, under the same id, for the next flush
                    log.warning("usage_flush_failed", error=str(exc), rows=len(rows))
                    return
                self._unsent = None
                if not written:
                    # No key store file (dev mode, never had keys): usage lives in metrics only.
                    log.debug("usage_not_persisted", rows=len(rows), reason="no key store file")

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
