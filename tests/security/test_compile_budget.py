"""Output constraints compile within a budget: size limits first, a time limit, a cache, abandonment.

The attack: a ``json_schema`` with a 100,000-string enum kept xgrammar busy for minutes (504 after
60 s, a core gone long after). Deep nesting made the strict-schema conversion and ``guided_json``
given as a string raise ``RecursionError`` (a 500). Now all of these are 400s in the OpenAI shape,
and the compiler is free for the next request at once.
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

from forge_gateway.engines.base import Constraint
from forge_gateway.engines.compile_budget import DEFAULT_BUDGET, BudgetedCompiler, CompileBudget
from forge_sdk.errors import InvalidRequestError
from tests.security.support import serve_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

BOMB = {"type": "string", "enum": [f"value-{i}" for i in range(100_000)]}


def _nested(levels: int) -> str:
    """A schema nested ``levels`` objects deep, as JSON text (json.dumps itself would overflow)."""
    return (
        '{"type":"object","required":["x"],"properties":{"x":' * levels + '{"type":"string"}' + "}}" * levels
    )


def _with(body: dict[str, Any], field: str, raw: str) -> bytes:
    """``body`` plus ``field`` set to the JSON text ``raw``, spliced in as it is."""
    return (json.dumps(body)[:-1] + f', "{field}": {raw}}}').encode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(tiny_model_dir: Path) -> AsyncIterator[tuple[str, Any]]:
    # max_body_bytes raised: the bomb (~1.5 MB) must reach the constraint check, not the body cap.
    async with serve_app(tiny_model_dir, {"limits": {"max_body_bytes": 8 * 1024 * 1024}}) as (app, port, _):
        yield f"http://127.0.0.1:{port}/v1", app


def _assert_400(resp: httpx.Response, param: str) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["type"] == "invalid_request_error", body
    assert body["error"]["param"] == param, body
    return dict(body["error"])


def _chat(extra: dict[str, Any]) -> dict[str, Any]:
    return {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **extra}


async def test_enum_bomb_is_a_400_and_the_next_constrained_request_is_served(gateway: Any) -> None:
    base, _ = gateway
    fmt = {"type": "json_schema", "json_schema": {"name": "bomb", "schema": BOMB}}
    async with httpx.AsyncClient(timeout=60) as client:
        for extra in ({"response_format": fmt}, {"guided_json": BOMB}, {"guided_choice": BOMB["enum"]}):
            resp = await client.post(f"{base}/chat/completions", json=_chat(extra))
            error = _assert_400(resp, next(iter(extra)))
            assert error["code"] == "constraint_too_large", error
        ok = {
            "type": "json_schema",
            "json_schema": {"name": "ok", "schema": {"type": "string", "enum": ["a", "b"]}},
        }
        resp = await client.post(f"{base}/chat/completions", json=_chat({"response_format": ok}))
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.json()["choices"][0]["message"]["content"]) in ("a", "b")


async def test_deep_schemas_are_400s_not_500s(gateway: Any) -> None:
    base, _ = gateway
    deep = _nested(450)  # ~900 JSON levels: decodes, but recursing over it overflows the stack
    fmt = '{"type": "json_schema", "json_schema": {"name": "d", "strict": %s, "schema": %s}}'
    cases = [
        ("response_format", fmt % ("true", deep)),
        ("response_format", fmt % ("false", deep)),
        ("guided_json", json.dumps(_nested(5000))),  # a string: parsed by us
        ("guided_json", json.dumps("[" * 100_000)),
        ("guided_json", deep),
    ]
    headers = {"content-type": "application/json"}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    completion = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
    async with httpx.AsyncClient(timeout=60) as client:
        for param, raw in cases:
            resp = await client.post(
                f"{base}/chat/completions", content=_with(chat, param, raw), headers=headers
            )
            _assert_400(resp, param)
            if param == "guided_json":
                resp = await client.post(
                    f"{base}/completions", content=_with(completion, param, raw), headers=headers
                )
                _assert_400(resp, param)


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


async def test_time_limit_kills_the_compile_and_the_compiler_comes_back(tiny_model_dir: Path) -> None:
    tok = _tokenizer(tiny_model_dir)
    # A budget far below the default, so a schema that is within the size limits and compiles in
    # well under a second here still runs past it: the time limit is what is under test.
    budget = CompileBudget(max_enum=50_000, max_nodes=10**6, max_bytes=10**7, timeout_s=0.001)
    compiler = BudgetedCompiler(tok, len(tok), [0], budget)
    slow = Constraint(
        "json", {"type": "string", "enum": [f"v{i}" for i in range(5_000)]}, param="response_format"
    )
    try:
        with pytest.raises(InvalidRequestError, match="took longer than") as info:
            await compiler.compile(slow)
        assert info.value.param == "response_format"
        assert compiler.kills == 1 and compiler._worker is None  # the process running it is gone
        with pytest.raises(InvalidRequestError, match="took longer than"):  # remembered: no new compile
            await compiler.compile(slow)
        assert compiler.compiles == 1
        compiler.budget = DEFAULT_BUDGET
        small = Constraint("json", {"type": "integer"})
        assert (await compiler.compile(small)) is not None  # a fresh compiler process serves it
        assert (await compiler.compile(small)) is not None  # from the cache
        assert compiler.compiles == 2
    finally:
        compiler.close()


async def test_a_compile_is_abandoned_when_its_request_ends(tiny_model_dir: Path) -> None:
    tok = _tokenizer(tiny_model_dir)
    budget = CompileBudget(
        max_enum=100_000, max_nodes=10**6, max_bytes=10**7, timeout_s=600
    )  # only cancellation can end it
    compiler = BudgetedCompiler(tok, len(tok), [0], budget)
    slow = Constraint("json", {"type": "string", "enum": [f"v{i}" for i in range(50_000)]})
    try:
        task = asyncio.create_task(compiler.compile(slow))
        while compiler.compiles == 0:  # the compile has been handed to the compiler process
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)
        worker = compiler._worker
        assert worker is not None and worker.process.is_alive()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not worker.process.is_alive() and compiler.kills == 1
    finally:
        compiler.close()


@pytest.mark.vllm
async def test_vllm_engine_refuses_the_bomb_and_gates_its_compiles(tiny_model_dir: Path) -> None:
    pytest.importorskip("vllm")
    from forge_gateway.engines import create_engine
    from forge_gateway.engines.base import EngineRequest, SamplingOptions

    engine = create_engine("vllm", str(tiny_model_dir), enable_lora=False, max_model_len=256, dtype="float32")
    await engine.start()
    try:
        bomb = SamplingOptions(max_tokens=8, constraint=Constraint("json", BOMB, param="response_format"))
        with pytest.raises(InvalidRequestError, match="too large to compile"):
            engine.generate(EngineRequest("bomb", list(range(5, 12)), bomb))
        choice = Constraint("choice", ("yes", "no"), param="guided_choice")
        ok = SamplingOptions(max_tokens=8, temperature=0.0, constraint=choice)
        for i in range(2):
            outputs = [o async for o in engine.generate(EngineRequest(f"ok-{i}", list(range(5, 12)), ok))]
            assert "".join(o.text for o in outputs) in ("yes", "no")
        gate = engine._gate  # type: ignore[attr-defined]
        assert gate is not None and gate.compiles == 1  # compiled once within the budget, then cached
    finally:
        await engine.stop()
