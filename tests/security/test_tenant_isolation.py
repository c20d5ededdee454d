"""One tenant's request never fails another's: hostile sampling values are refused or contained.

The attack: while key A streams, key B sends sampling values that pass naive validation but break
float32 sampling (``repetition_penalty: 5e-324`` divides logits by what rounds to 0). Before the fix,
the exception in B's row failed the shared batch step and A's stream died with it. Now the API refuses
such values (400 in the OpenAI shape), and the engine contains whatever still reaches it: a sequence
whose row fails is that request's error alone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from forge_gateway.engines.base import EngineRequest, SamplingOptions
from forge_gateway.security import KeyStore
from tests.security.support import serve_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

HOSTILE_BODIES: list[dict[str, Any]] = [
    {"repetition_penalty": 5e-324},
    {"repetition_penalty": 1e-300, "temperature": 2.0},
    {"top_p": 5e-324},
    {"temperature": 5e-324},
    {"top_k": 2**63 - 1},
    {"top_k": 2**64},
    {"min_tokens": 2**64 - 1},
    {"seed": 2**64},
    {"seed": -(2**63) - 1},
    {"max_tokens": 2**63},
    {"logit_bias": {str(i): 100 for i in range(2000)}},
    {"logit_bias": {"5": 100, "05": 100, "005": 100}},
    {"stop_token_ids": [2**40]},
    {"presence_penalty": 2, "frequency_penalty": -2, "repetition_penalty": 2, "min_p": 1.0},
]
"""Bodies a hostile tenant sends; each is refused (4xx) or served, never a 5xx, never someone else's failure."""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def two_keys(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    db = tmp_path_factory.mktemp("isolation") / "keys.db"
    store = KeyStore(db)
    keys = {"victim": store.create("victim")[0], "attacker": store.create("attacker")[0]}
    store.close()
    async with serve_app(tiny_model_dir, {"auth": {"db_path": str(db)}}) as (_, port, _):
        yield port, keys


def _error_shape(resp: httpx.Response) -> None:
    body = resp.json()
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    assert body["error"]["type"] == "invalid_request_error", body


async def test_hostile_sampling_values_do_not_break_a_concurrent_stream(two_keys: Any) -> None:
    port, keys = two_keys
    base = f"http://127.0.0.1:{port}/v1"
    victim = {"authorization": f"Bearer {keys['victim']}"}
    attacker = {"authorization": f"Bearer {keys['attacker']}"}
    wanted = 200
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": wanted,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    overlapped = 0
    async with httpx.AsyncClient(timeout=120) as client:
        async with client.stream("POST", f"{base}/chat/completions", json=body, headers=victim) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            events: list[Any] = []
            while not events:  # the victim is in the engine's batch before the attacker arrives
                line = await anext(lines)
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))

            async def attack(extra: dict[str, Any], path: str) -> None:
                nonlocal overlapped
                payload: dict[str, Any] = {"model": "tiny", "max_tokens": 8, "ignore_eos": True, **extra}
                if path == "chat/completions":
                    payload["messages"] = [{"role": "user", "content": "hi"}]
                else:
                    payload["prompt"] = "hi"
                resp = await client.post(f"{base}/{path}", json=payload, headers=attacker)
                assert resp.status_code < 500, (extra, resp.text)
                if resp.status_code >= 400:
                    _error_shape(resp)
                overlapped += 1

            for extra in HOSTILE_BODIES:
                await attack(extra, "chat/completions")
                await attack(extra, "completions")
            done = False
            async for line in lines:
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    events.append(json.loads(line[6:]))
    assert done, events[-1:]
    assert not any("error" in e for e in events), [e for e in events if "error" in e]
    finish = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
    assert finish == ["length"]
    assert events[-1]["usage"]["completion_tokens"] == wanted
    assert overlapped == 2 * len(HOSTILE_BODIES)


async def test_engine_contains_a_sequence_whose_values_break_sampling(tiny_model_dir: Path) -> None:
    """Values the API refuses, given straight to the engine (a plugin could): only that row is affected."""
    from forge_gateway.engines import create_engine

    engine = create_engine("transformers", str(tiny_model_dir), max_model_len=256)
    await engine.start()
    try:
        hostile = [
            SamplingOptions(max_tokens=8, temperature=1.0, repetition_penalty=5e-324, ignore_eos=True),
            SamplingOptions(max_tokens=8, temperature=1.0, top_p=5e-324, ignore_eos=True),
            SamplingOptions(max_tokens=8, temperature=1e-45, ignore_eos=True),
            SamplingOptions(max_tokens=8, temperature=1.0, logit_bias={3: 1e39}, ignore_eos=True),
        ]
        victim = EngineRequest("victim", list(range(5, 30)), SamplingOptions(max_tokens=64, ignore_eos=True))

        async def run(request: EngineRequest) -> list[Any]:
            return [out async for out in engine.generate(request)]

        victim_task = asyncio.create_task(run(victim))
        results = await asyncio.gather(
            *(run(EngineRequest(f"hostile-{i}", list(range(5, 12)), s)) for i, s in enumerate(hostile)),
            return_exceptions=True,
        )
        outputs = await victim_task
    finally:
        await engine.stop()
    assert outputs[-1].finish_reason == "length"
    assert sum(len(o.token_ids) for o in outputs) == 64
    for result in results:  # each hostile request is served on its own (degraded to greedy)
        assert not isinstance(result, BaseException), result
        assert result[-1].finish_reason == "length"


@pytest.mark.vllm
async def test_vllm_engine_contains_a_sequence_whose_values_break_sampling(tiny_model_dir: Path) -> None:
    pytest.importorskip("vllm")
    from forge_gateway.engines import create_engine

    engine = create_engine("vllm", str(tiny_model_dir), enable_lora=False, max_model_len=256, dtype="float32")
    await engine.start()
    try:
        victim = EngineRequest("victim", list(range(5, 30)), SamplingOptions(max_tokens=64, ignore_eos=True))
        hostile = [
            SamplingOptions(max_tokens=8, temperature=1.0, repetition_penalty=5e-324, ignore_eos=True),
            SamplingOptions(max_tokens=8, temperature=1.0, top_k=2**40, ignore_eos=True),
            SamplingOptions(max_tokens=8, temperature=1.0, logit_bias={3: 1e39}, ignore_eos=True),
        ]

        async def run(request: EngineRequest) -> list[Any]:
            return [out async for out in engine.generate(request)]

        victim_task = asyncio.create_task(run(victim))
        await asyncio.gather(
            *(run(EngineRequest(f"hostile-{i}", list(range(5, 12)), s)) for i, s in enumerate(hostile)),
            return_exceptions=True,
        )
        outputs = await victim_task
        health = await engine.health()
    finally:
        await engine.stop()
    assert outputs[-1].finish_reason == "length"
    assert sum(len(o.token_ids) for o in outputs) == 64
    assert health["ok"]
