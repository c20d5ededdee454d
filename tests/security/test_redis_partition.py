"""A partitioned Redis (the shared rate limiter) fails closed in about a second, and its password
never shows in a response or a log line.

The partition is real: the redis-server process is stopped (SIGSTOP), so connections stay open
and nothing answers, the case a missing socket timeout turns into a hang.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import structlog

from forge_gateway.config import load_config
from forge_gateway.security import KeyStore
from forge_gateway.security.layer import preflight
from forge_gateway.security.ratelimit import redact_url
from forge_sdk.errors import ConfigurationError
from tests.security.support import serve_app
from tests.support import free_port

pytestmark = pytest.mark.redis
PASSWORD = "hunter2-redis-canary"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not installed (apt-get install -y redis-server)")
    import redis

    port = free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--requirepass", PASSWORD, "--dir", str(tmp_path_factory.mktemp("redis"))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield proc, url
    os.kill(proc.pid, signal.SIGCONT)
    proc.terminate()
    proc.wait(10)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited(
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: tuple[subprocess.Popen[bytes], str],
) -> AsyncIterator[tuple[httpx.AsyncClient, subprocess.Popen[bytes]]]:
    proc, url = redis_server
    db = tmp_path_factory.mktemp("redis-keys") / "keys.db"
    key = KeyStore(db).create("limited", rpm=1000)[0]
    overrides = {"auth": {"db_path": str(db)}, "rate_limit": {"backend": "redis", "redis_url": url}}
    async with serve_app(tiny_model_dir, overrides) as (_, port, _):
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30
        ) as http:
            yield http, proc


@pytest.mark.asyncio(loop_scope="session")
async def test_partition_fails_closed_within_a_second_then_recovers(
    limited: tuple[httpx.AsyncClient, subprocess.Popen[bytes]],
) -> None:
    http, proc = limited
    assert (await http.get("/v1/models")).status_code == 200
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            refused = await http.get("/v1/models")
            elapsed = time.monotonic() - started
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "rate_limiter_unavailable"
    assert elapsed < 2.5, f"a partition held the request {elapsed:.2f} s"  # a hang, not a benchmark
    assert PASSWORD not in refused.text
    assert logs and PASSWORD not in repr(logs)
    assert (await http.get("/v1/models")).status_code == 200  # Redis answers again: so do we


def test_start_up_errors_never_show_the_password(tmp_path: Path) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    config = load_config(
        overrides={
            "model": "x",
            "auth": {"db_path": str(tmp_path / "k.db")},
            "rate_limit": {"backend": "redis", "redis_url": url},
        },
        environ={},
    )
    with pytest.raises(ConfigurationError) as err:
        preflight(config)
    assert PASSWORD not in str(err.value) and "***" in str(err.value)
    assert redact_url("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
