"""GCRA rate limits: exact counts in memory and in a real Redis, shared by two gateway processes."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from forge_gateway.security import KeyStore
from forge_gateway.security.ratelimit import MemoryBackend, RedisBackend, rate_limit_headers
from tests.support import GatewayProcess, free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def memory() -> tuple[MemoryBackend, FakeClock]:
    backend = MemoryBackend()
    clock = FakeClock()
    backend._clock = clock  # deterministic time for exact refill checks
    return backend, clock


async def test_memory_rpm_exact_burst_then_refill(memory: tuple[MemoryBackend, FakeClock]) -> None:
    backend, clock = memory
    decisions = [await backend.acquire("r:k", 30, 1) for _ in range(35)]
    assert [d.allowed for d in decisions] == [True] * 30 + [False] * 5
    assert [d.remaining for d in decisions[:3]] == [29, 28, 27] and decisions[29].remaining == 0
    refused = decisions[30]
    assert refused.retry_after == pytest.approx(2.0)  # 60 s / 30 per minute
    assert refused.reset_after == pytest.approx(60.0)
    clock.now += 1.999
    assert not (await backend.acquire("r:k", 30, 1)).allowed
    clock.now += 0.002
    assert (await backend.acquire("r:k", 30, 1)).allowed
    assert not (await backend.acquire("r:k", 30, 1)).allowed
    # Other keys have their own budget.
    assert (await backend.acquire("r:other", 30, 1)).allowed


async def test_memory_tpm_weighted_and_adjust(memory: tuple[MemoryBackend, FakeClock]) -> None:
    backend, _ = memory
    assert (await backend.acquire("t:k", 1000, 600)).allowed
    second = await backend.acquire("t:k", 1000, 600)
    assert not second.allowed and second.remaining == 400
    assert second.retry_after == pytest.approx(12.0)  # 200 tokens short at 1000/60 per second
    # The first request used only 100 of its 600: giving 500 back makes room.
    await backend.adjust("t:k", 1000, -500)
    third = await backend.acquire("t:k", 1000, 600)
    assert third.allowed and third.remaining == 300
    never = await backend.acquire("t:k", 1000, 1001)
    assert not never.allowed and math.isinf(never.retry_after)
    # Refunds never create credit beyond a full budget.
    await backend.adjust("t:fresh", 1000, -5000)
    assert (await backend.acquire("t:fresh", 1000, 1000)).allowed
    assert not (await backend.acquire("t:fresh", 1000, 1)).allowed


def test_headers_shape(memory: tuple[MemoryBackend, FakeClock]) -> None:
    backend, _ = memory
    req = backend.acquire_now("r:k", 60, 1)
    tok = backend.acquire_now("t:k", 600, 100)
    headers: list[tuple[bytes, bytes]] = []
    rate_limit_headers(req, tok, headers)
    got = {k.decode(): v.decode() for k, v in headers}
    assert got == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1.000s",
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "10.000s",
    }


# --- Redis ------------------------------------------------------------------------------------


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A throwaway redis-server on a free loopback port (no persistence); waits until it answers."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    import redis

    port = free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [*args, "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.redis
async def test_redis_exact_and_shared_between_clients(redis_url: str) -> None:
    a, b = RedisBackend(redis_url, prefix="t1:"), RedisBackend(redis_url, prefix="t1:")
    try:
        results = await asyncio.gather(*[(a if i % 2 else b).acquire("r:k", 40, 1) for i in range(60)])
        assert sum(d.allowed for d in results) == 40
        refused = [d for d in results if not d.allowed]
        assert all(0 < d.retry_after <= 1.5 for d in refused) and all(d.remaining == 0 for d in refused)
        assert (await a.acquire("t:k", 1000, 900)).allowed
        assert not (await b.acquire("t:k", 1000, 200)).allowed
        await a.adjust("t:k", 1000, -800)
        assert (await b.acquire("t:k", 1000, 200)).allowed
    finally:
        await a.close()
        await b.close()


@pytest.mark.redis
@pytest.mark.slow
def test_two_gateway_replicas_share_one_rpm_limit(
    redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Two real `forge-gateway serve` processes on one Redis admit the key's RPM, not twice it."""
    rpm = 120
    db = tmp_path / "keys.db"
    full, _ = KeyStore(db).create("shared", rpm=rpm)
    env = {
        "FORGE_AUTH_DB_PATH": str(db),
        "FORGE_RATE_LIMIT_BACKEND": "redis",
        "FORGE_RATE_LIMIT_REDIS_URL": redis_url,
    }
    args = ["--model", str(tiny_model_dir), "--engine", "transformers", "--classifier", "keyword"]
    gateways = [GatewayProcess(args, env=env, log_path=tmp_path / f"gw{i}.log") for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda g: g.start(), gateways))
    try:

        async def fire() -> tuple[list[int], float]:
            headers = {"Authorization": f"Bearer {full}"}
            async with httpx.AsyncClient(timeout=30) as client:
                started = time.monotonic()
                responses = await asyncio.gather(
                    *[
                        client.get(f"{gateways[i % 2].base_url}/v1/models", headers=headers)
                        for i in range(200)
                    ]
                )
                return [r.status_code for r in responses], time.monotonic() - started

        statuses, elapsed = asyncio.run(fire())
        admitted = statuses.count(200)
        assert set(statuses) <= {200, 429}
        # GCRA: the full minute's budget at once, plus what refilled while the burst ran.
        assert rpm <= admitted <= rpm + math.ceil(elapsed * rpm / 60) + 1
        assert abs(admitted - rpm) <= 0.05 * rpm
        # Both replicas served and both refused: the limit is shared, not per process.
        per_gateway = [statuses[i::2].count(200) for i in range(2)]
        assert all(n > 0 for n in per_gateway) and all(statuses[i::2].count(429) > 0 for i in range(2))
    finally:
        for g in gateways:
            g.stop()


@pytest.mark.redis
async def test_redis_down_fails_closed(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Redis unreachable at start: the app refuses to start; lost later: 503, never unlimited."""
    from forge_gateway.app import create_app
    from forge_gateway.config import load_config
    from forge_sdk.errors import ConfigurationError
    from tests.gateway.test_limits import chat, gateway_client

    db = tmp_path / "k.db"
    key, _ = KeyStore(db).create("r", rpm=100)
    headers = {"Authorization": f"Bearer {key}"}
    dead = f"redis://127.0.0.1:{free_port()}/0"
    base = {"model": str(tiny_model_dir), "auth": {"db_path": str(db)}, "engine": {"kind": "transformers"}}
    app = create_app(
        load_config(overrides={**base, "rate_limit": {"backend": "redis", "redis_url": dead}}, environ={})
    )
    with pytest.raises(BaseException) as info:
        async with app.lifespan():
            pass
    # Raised inside the lifespan's task group, so it may come wrapped in an exception group.
    assert "unreachable" in repr(info.value) or info.group_contains(ConfigurationError, match="unreachable")
    proc, url = start_redis(tmp_path)
    try:
        async with gateway_client(
            tiny_model_dir, db, rate_limit={"backend": "redis", "redis_url": url}
        ) as client:
            assert (
                await client.post("/v1/chat/completions", json=chat(), headers=headers)
            ).status_code == 200
            proc.terminate()
            proc.wait(10)
            resp = await client.get("/v1/models", headers=headers)
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "rate_limiter_unavailable"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_with_unreachable_redis_is_one_line_error(tiny_model_dir: Path) -> None:
    env = {
        **os.environ,
        "FORGE_RATE_LIMIT_BACKEND": "redis",
        "FORGE_RATE_LIMIT_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    cmd = [sys.executable, "-m", "forge_gateway.cli", "serve", "--model", str(tiny_model_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.startswith("forge-gateway: error: rate_limit.backend is redis")
    assert "\n" not in err
