"""Input limits, admission control, timeouts, TPM reservations and open (dev) mode.

In-process apps on a real transformers engine (tiny model), driven through httpx's ASGI
transport so concurrent requests really overlap on one event loop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import structlog.testing

from forge_gateway.app import create_app
from forge_gateway.config import load_config
from forge_gateway.security import KeyStore

# Greedy decoding of the tiny model (seed 0) runs this prompt past 1800 tokens without EOS, so
# requests with it take a predictable, long time (checked by _generation_is_long).
LONG_PROMPT = "sea a long"


@asynccontextmanager
async def gateway_client(model_dir: Path, db: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A started app (engine, security layer) and an httpx client talking to it in-process."""
    base: dict[str, Any] = {
        "model": str(model_dir),
        "served_model_name": "tiny",
        "engine": {"kind": "transformers"},
        "router": {"classifier": "keyword"},
        "auth": {"db_path": str(db)},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    app = create_app(load_config(overrides=base, environ={}))
    async with app.lifespan():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as client:
            yield client


def chat(max_tokens: int = 4, content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        **extra,
    }


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error


@pytest.fixture(scope="module")
def keyed_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    db = tmp_path_factory.mktemp("limits") / "keys.db"
    full, _ = KeyStore(db).create("limits-user")
    return db, full


async def test_input_limits(tiny_model_dir: Path, keyed_db: tuple[Path, str]) -> None:
    db, key = keyed_db
    headers = {"Authorization": f"Bearer {key}"}
    limits = {"max_body_bytes": 4096, "max_messages": 3, "max_tokens": 64}
    async with gateway_client(tiny_model_dir, db, limits=limits, engine={"max_model_len": 128}) as client:
        big = chat(content="x" * 5000)
        error = assert_error(await client.post("/v1/chat/completions", json=big, headers=headers), 413)
        assert error["type"] == "invalid_request_error"
        many = chat()
        many["messages"] = [{"role": "user", "content": "a"}] * 4
        error = assert_error(await client.post("/v1/chat/completions", json=many, headers=headers), 400)
        assert error["param"] == "messages" and "too many messages" in error["message"]
        error = assert_error(
            await client.post("/v1/chat/completions", json=chat(max_tokens=65), headers=headers), 400
        )
        assert error["param"] == "max_tokens"
        for bad in (0, -1):
            error = assert_error(
                await client.post("/v1/chat/completions", json=chat(max_tokens=bad), headers=headers), 400
            )
            assert error["param"] == "max_tokens"
        long_prompt = chat(content="word " * 200, max_tokens=8)
        error = assert_error(
            await client.post("/v1/chat/completions", json=long_prompt, headers=headers),
            400,
            "context_length_exceeded",
        )
        assert "maximum context length is 128" in error["message"]
        error = assert_error(
            await client.post("/v1/chat/completions", content=b"{not json", headers=headers), 400
        )
        ok = await client.post("/v1/chat/completions", json=chat(), headers=headers)
        assert ok.status_code == 200, ok.text


async def _generation_is_long(client: httpx.AsyncClient, headers: dict[str, str], n: int) -> None:
    """Greedy output of LONG_PROMPT runs to ``n`` tokens (no early EOS), so timings below hold."""
    resp = await client.post(
        "/v1/chat/completions", json=chat(max_tokens=n, content=LONG_PROMPT, temperature=0), headers=headers
    )
    assert resp.status_code == 200 and resp.json()["choices"][0]["finish_reason"] == "length"


async def test_admission_queue_then_503(tiny_model_dir: Path, keyed_db: tuple[Path, str]) -> None:
    db, key = keyed_db
    headers = {"Authorization": f"Bearer {key}"}
    limits = {"max_concurrent": 1, "max_queue": 1, "queue_timeout": 30}
    async with gateway_client(tiny_model_dir, db, limits=limits) as client:
        await _generation_is_long(client, headers, 1800)  # the other timing tests rely on this too
        body = chat(max_tokens=48, content=LONG_PROMPT, temperature=0)
        results: list[httpx.Response] = []

        async def one() -> None:
            results.append(await client.post("/v1/chat/completions", json=body, headers=headers))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        statuses = sorted(r.status_code for r in results)
        assert statuses == [200, 200, 503], [r.text for r in results]
        refused = next(r for r in results if r.status_code == 503)
        assert_error(refused, 503, "overloaded")
        assert refused.headers["retry-after"] == "1"
        # Slots are all given back.
        assert (await client.post("/v1/chat/completions", json=chat(), headers=headers)).status_code == 200


async def test_queue_timeout_and_request_timeout(tiny_model_dir: Path, keyed_db: tuple[Path, str]) -> None:
    db, key = keyed_db
    headers = {"Authorization": f"Bearer {key}"}
    limits = {"max_concurrent": 1, "max_queue": 4, "queue_timeout": 0.05, "request_timeout": 0.1}
    async with gateway_client(tiny_model_dir, db, limits=limits) as client:
        slow = chat(max_tokens=1800, content=LONG_PROMPT, temperature=0)  # seconds of work
        results: list[httpx.Response] = []

        async def one() -> None:
            results.append(await client.post("/v1/chat/completions", json=slow, headers=headers))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.sleep(0.02)
            tg.start_soon(one)
        codes = sorted(r.json()["error"]["code"] for r in results)
        assert codes == ["overloaded", "request_timeout"], [r.text for r in results]
        timed_out = next(r for r in results if r.status_code == 504)
        assert timed_out.json()["error"]["type"] == "timeout_error"


async def test_tpm_reserve_then_reconcile(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "tpm.db"
    key, _ = KeyStore(db).create("tpm", tpm=60)  # 1 token per second refill: drift stays < 1-2
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway_client(tiny_model_dir, db) as client:
        first = await client.post(
            "/v1/chat/completions", json=chat(max_tokens=10, temperature=0), headers=headers
        )
        assert first.status_code == 200, first.text
        usage = first.json()["usage"]
        prompt = usage["prompt_tokens"]
        # Remaining after this request's reservation (prompt + max_tokens).
        assert int(first.headers["x-ratelimit-remaining-tokens"]) == 60 - (prompt + 10)
        assert first.headers["x-ratelimit-limit-tokens"] == "60"
        used = usage["total_tokens"]
        # Too big for what is left: 429 with Retry-After, nothing charged.
        big = 60 - used + 5 - prompt
        refused = await client.post("/v1/chat/completions", json=chat(max_tokens=big), headers=headers)
        error = assert_error(refused, 429, "rate_limit_exceeded")
        assert error["type"] == "rate_limit_error" and "tokens" in error["message"]
        assert 1 <= int(refused.headers["retry-after"]) <= 6
        assert int(refused.headers["x-ratelimit-remaining-tokens"]) in range(60 - used, 60 - used + 3)
        # Exactly what is left (minus refill slack) still fits.
        fits = 60 - used - prompt - 1
        ok = await client.post("/v1/chat/completions", json=chat(max_tokens=fits), headers=headers)
        assert ok.status_code == 200, ok.text
        # Larger than the whole minute's budget: a clear message, not a retry loop.
        huge = await client.post("/v1/chat/completions", json=chat(max_tokens=100), headers=headers)
        assert "your limit is 60 tokens per minute" in assert_error(huge, 429)["message"]


async def test_tpm_refund_on_failed_request(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "refund.db"
    key, _ = KeyStore(db).create("refund", tpm=60000)
    headers = {"Authorization": f"Bearer {key}"}
    limits = {"request_timeout": 0.1}
    async with gateway_client(tiny_model_dir, db, limits=limits) as client:
        slow = chat(max_tokens=1800, content=LONG_PROMPT, temperature=0)
        assert (await client.post("/v1/chat/completions", json=slow, headers=headers)).status_code == 504
        probe = await client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=headers)
        prompt = probe.json()["usage"]["prompt_tokens"]
        # The timed-out request's ~1800-token reservation was given back.
        assert int(probe.headers["x-ratelimit-remaining-tokens"]) >= 60000 - (prompt + 1) - 2


async def test_open_mode_on_loopback_without_keys(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    with structlog.testing.capture_logs() as logs:
        async with gateway_client(tiny_model_dir, db) as client:
            await _open_mode_requests(client)
    assert any(e["event"] == "auth_open" and e["log_level"] == "warning" for e in logs), logs
    assert not db.exists()  # the gateway never creates the key store by itself


async def _open_mode_requests(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v1/models")).status_code == 200
    assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
    assert (await client.get("/admin/keys")).status_code == 200  # loopback dev mode
    assert (await client.get("/metrics")).status_code == 200


async def test_allow_open_on_public_host_keeps_admin_closed(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "missing.db"
    async with gateway_client(tiny_model_dir, db, host="0.0.0.0", auth={"allow_open": True}) as client:
        assert (await client.get("/v1/models")).status_code == 200
        assert_error(await client.get("/admin/keys"), 403, "permission_denied")


async def test_tpm_streaming_reconciled_to_actual_usage(tiny_model_dir: Path, tmp_path: Path) -> None:
    db = tmp_path / "stream.db"
    key, _ = KeyStore(db).create("streamer", tpm=600)  # refills 10 tokens/s: small against a 30+ refund
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway_client(tiny_model_dir, db) as client:
        body = chat(max_tokens=80, temperature=0, stream=True, stream_options={"include_usage": True})
        resp = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert resp.status_code == 200
        events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        assert usage["completion_tokens"] <= 50  # greedy "hi" stops early: the premise of a refund
        reserved = usage["prompt_tokens"] + 80
        assert int(resp.headers["x-ratelimit-remaining-tokens"]) == 600 - reserved
        probe = await client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=headers)
        charged_probe = probe.json()["usage"]["prompt_tokens"] + 1
        remaining = int(probe.headers["x-ratelimit-remaining-tokens"])
        expected = 600 - usage["total_tokens"] - charged_probe  # the stream was charged what it used
        assert expected <= remaining <= expected + 5
