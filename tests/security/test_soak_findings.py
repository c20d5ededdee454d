"""What a 20,000-request soak with faults found: replica cooldown per episode, probes that keep a
dead replica out, and a usage ledger whose crash window is bounded by count as well as by time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from forge_gateway.security.ledger import UsageLedger
from forge_gateway.security.store import SQLiteBackend
from forge_gateway.upstream.replicas import HealthProber, ReplicaSet
from forge_sdk.experts import ExpertModel

pytestmark = pytest.mark.asyncio(loop_scope="session")


def test_cooldown_is_logged_and_set_once_per_failure_episode() -> None:
    replicas = ReplicaSet(["http://127.0.0.1:1/v1"], failure_threshold=2, cooldown_s=30)
    replica = replicas.states[0]
    with structlog.testing.capture_logs() as logs:
        replicas.failed(replica, "connect", "legal")
        replicas.failed(replica, "connect", "legal")  # the threshold: the episode starts
        until = replica.cooldown_until
        for _ in range(50):  # requests already in flight fail during the cooldown
            replicas.failed(replica, "connect", "legal")
    assert [e["event"] for e in logs] == ["replica_cooldown"]
    assert replica.cooldown_until == until and replica.failures == 52
    replica.cooldown_until = 0.0  # the cooldown ran out; the trial request fails again
    with structlog.testing.capture_logs() as logs:
        replicas.failed(replica, "connect", "legal")
    assert not replica.available(time.monotonic())  # cooled down again ...
    assert logs == []  # ... within the same episode: not logged again
    ReplicaSet.succeeded(replica)  # the episode ends; the next one is logged
    with structlog.testing.capture_logs() as logs:
        replicas.failed(replica, "connect", "legal")
        replicas.failed(replica, "connect", "legal")
    assert [e["event"] for e in logs] == ["replica_cooldown"]


class _Health:
    """An upstream whose ``/models`` answers 503 until ``up`` is set."""

    def __init__(self) -> None:
        self.up = False
        self.probes = 0
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            self.probes += 1
            status = b"200 OK" if self.up else b"503 Service Unavailable"
            writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            await writer.drain()
        writer.close()


@pytest.fixture
async def health() -> AsyncIterator[tuple[_Health, str]]:
    h = _Health()
    h.server = await asyncio.start_server(h.handle, "127.0.0.1", 0)
    port = h.server.sockets[0].getsockname()[1]
    try:
        yield h, f"http://127.0.0.1:{port}/v1"
    finally:
        h.server.close()


async def test_a_replica_whose_probes_fail_gets_no_traffic_when_its_cooldown_ends(
    health: tuple[_Health, str],
) -> None:
    server, url = health
    expert = ExpertModel(name="legal", endpoint=url)
    replicas = ReplicaSet([url], failure_threshold=1, cooldown_s=0.3)
    replica = replicas.states[0]
    prober = HealthProber(lambda: [(expert, replicas)], interval=0.05)
    prober.start()
    try:
        replicas.failed(replica, "503", "legal")
        cooldown_end = replica.cooldown_until
        while time.monotonic() < cooldown_end or server.probes < 2:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # well past the cooldown, probes still failing
        assert not replica.available(time.monotonic()) and replicas.pick(time.monotonic(), set()) is None
        assert replicas.status(time.monotonic())["replicas"][0]["probe_failing"] is True
        server.up = True
        for _ in range(200):  # the first good probe brings it back
            if replica.available(time.monotonic()):
                break
            await asyncio.sleep(0.05)
        assert replicas.pick(time.monotonic(), set()) is replica
    finally:
        await prober.stop()


async def test_usage_is_written_once_max_pending_requests_wait(tmp_path: Path) -> None:
    """The crash window is bounded by count too: heavy traffic cannot pile up a long interval's usage."""
    store = SQLiteBackend(tmp_path / "keys.db", create=True)
    await store.open()
    ledger = UsageLedger(store, flush_interval=3600, max_pending=5)  # only the count can trigger it
    await ledger.start()
    try:
        for _ in range(5):
            ledger.record("k1", 10, 2)
        for _ in range(200):
            rows = await store.usage(key_id="k1")
            if rows:
                break
            await asyncio.sleep(0.02)
        assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [(5, 50, 10)]
    finally:
        await ledger.stop()
        await store.close()
