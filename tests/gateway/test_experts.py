"""The expert API of a live gateway: /experts, /route, /generate, /v1/models, route headers, admin.

In-process uvicorn, the transformers engine on the tiny model, the built-in plugins (default
experts, keyword/neural/hybrid classifiers) and a registry file with one remote expert.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from forge_gateway.app import create_app
from forge_gateway.config import load_config
from forge_sdk.experts import ExpertModel, ExpertRegistry
from forge_sdk.plugins import get_plugin_manager
from tests.gateway.test_lora_experts_support import serve_app

routing = pytest.importorskip("forge_plugins.routing")
default_experts = pytest.importorskip("forge_plugins.default_experts")
pytestmark = pytest.mark.asyncio(loop_scope="session")


class Env:
    def __init__(self, http: httpx.AsyncClient, registry: Path) -> None:
        self.http = http
        self.registry = registry


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    from forge_gateway.engines import create_engine

    registry = tmp_path_factory.mktemp("experts") / "experts.json"
    ExpertRegistry(registry).register(
        ExpertModel(
            name="legal", endpoint="http://127.0.0.1:9/v1", specialization="legal", keywords=["contract"]
        )
    )
    config = load_config(
        overrides={
            "model": str(tiny_model_dir),
            "served_model_name": "tiny",
            "registry": str(registry),
            "router": {"classifier": "keyword"},
        },
        environ={},
    )
    engine = create_engine("transformers", str(tiny_model_dir), max_model_len=256, enable_lora=False)
    pm = get_plugin_manager(load_entrypoints=False, plugins=[default_experts, routing])
    app = create_app(config, engine=engine, pm=pm)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        yield Env(http, registry)


async def test_experts_lists_plugin_and_registry_experts_with_state(env: Env) -> None:
    resp = await env.http.get("/experts")
    assert resp.status_code == 200
    body = resp.json()
    experts = {e["name"]: e for e in body["experts"]}
    assert body["base_model"] == "tiny"
    assert {"general", "code", "math", "writing", "legal"} <= set(experts)
    assert experts["code"]["endpoint"] == "local" and experts["code"]["kind"] == "base"
    assert experts["code"]["description"] and "python" in experts["code"]["keywords"]
    assert experts["legal"]["endpoint"] == "http://127.0.0.1:9/v1" and experts["legal"]["kind"] == "remote"
    assert experts["legal"]["status"]["state"] == "ok"


async def test_route_returns_expert_endpoint_and_confidence(env: Env) -> None:
    resp = await env.http.post("/route", params={"query": "Write a python function to reverse a list"})
    assert resp.status_code == 200
    decision = resp.json()
    assert decision["expert"] == "code" and decision["endpoint"] == "local"
    assert decision["classifier"] == "keyword" and 0.5 <= decision["confidence"] <= 1
    assert decision["reason"].startswith("router:keyword")
    assert resp.headers["x-forge-expert"] == "code"
    vague = (await env.http.post("/route", params={"query": "hmm"})).json()
    assert vague["expert"] == "general" and vague["confidence"] < decision["confidence"]
    remote = (await env.http.post("/route", params={"query": "review this contract"})).json()
    assert remote["expert"] == "legal" and remote["endpoint"] == "http://127.0.0.1:9/v1"


async def test_generate_with_prompt_messages_and_forced_expert(env: Env) -> None:
    resp = await env.http.post("/generate", json={"prompt": "Solve the equation x + 2 = 5", "max_tokens": 4})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"text", "expert", "tokens_used"} and body["expert"] == "math"
    assert isinstance(body["text"], str) and body["tokens_used"] > 4 - 1
    assert resp.headers["x-forge-route-reason"].startswith("router:keyword")
    msgs = await env.http.post(
        "/generate",
        json={"messages": [{"role": "user", "content": "write a poem about the sea"}], "max_tokens": 3},
    )
    assert msgs.status_code == 200 and msgs.json()["expert"] == "writing"
    forced = await env.http.post("/generate", json={"prompt": "anything", "expert": "code", "max_tokens": 2})
    assert forced.json()["expert"] == "code" and forced.headers["x-forge-route-reason"] == "requested"
    # legal's upstream does not exist: the answer comes from general, and says so.
    fallback = await env.http.post("/generate", json={"prompt": "a contract question", "max_tokens": 2})
    assert fallback.status_code == 200 and fallback.json()["expert"] == "general"
    assert fallback.headers["x-forge-route-reason"] == "fallback:legal-error"


async def test_generate_rejects_bad_bodies(env: Env) -> None:
    both = await env.http.post(
        "/generate", json={"prompt": "a", "messages": [{"role": "user", "content": "b"}]}
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "prompt"
    neither = await env.http.post("/generate", json={"max_tokens": 3})
    assert neither.status_code == 400
    typo = await env.http.post("/generate", json={"prompt": "a", "max_token": 3})
    assert typo.status_code == 400 and "max_token" in typo.json()["error"]["message"]
    unknown = await env.http.post("/generate", json={"prompt": "a", "expert": "nobody"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


async def test_models_and_chat_headers_say_who_served_and_why(env: Env) -> None:
    models = (await env.http.get("/v1/models")).json()
    ids = [m["id"] for m in models["data"]]
    assert ids[0] == "tiny" and ids[-1] == "auto" and "legal" in ids
    assert not {"general", "code"} & set(ids)  # aliases of the base model: not listed by default
    assert all(m["object"] == "model" and m["root"] == "tiny" for m in models["data"][1:])
    chat = {"messages": [{"role": "user", "content": "debug my javascript code"}], "max_tokens": 2}
    auto = await env.http.post("/v1/chat/completions", json={"model": "auto", **chat})
    assert auto.status_code == 200
    assert auto.headers["x-forge-expert"] == "code" and auto.json()["model"] == "code"
    assert auto.headers["x-forge-route-reason"].startswith("router:keyword")
    assert float(auto.headers["x-forge-route-confidence"]) > 0
    base = await env.http.post("/v1/chat/completions", json={"model": "tiny", **chat})
    assert base.headers["x-forge-expert"] == "tiny" and base.headers["x-forge-route-reason"] == "requested"


async def test_admin_registers_and_removes_remote_experts(env: Env) -> None:
    body = {
        "name": "medic",
        "endpoint": "http://127.0.0.1:9/v1",
        "specialization": "medicine",
        "keywords": ["fever"],
    }
    created = await env.http.post("/admin/experts", json=body)
    assert (
        created.status_code == 201
        and created.json()["kind"] == "remote"
        and created.json()["replaced"] is False
    )
    assert ExpertRegistry(env.registry).get("medic") is not None
    route = (await env.http.post("/route", params={"query": "my child has a fever"})).json()
    assert route["expert"] == "medic"  # the classifier sees new experts at once
    again = await env.http.post("/admin/experts", json={**body, "description": "v2"})
    assert again.status_code == 201 and again.json()["replaced"] is True
    deleted = await env.http.delete("/admin/experts/medic")
    assert deleted.status_code == 200 and deleted.json() == {
        "deleted": "medic",
        "kind": "remote",
        "unloaded": [],
    }
    assert (await env.http.delete("/admin/experts/medic")).status_code == 404
    assert "medic" not in [m["id"] for m in (await env.http.get("/v1/models")).json()["data"]]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"name": "x", "endpoint": "ftp://host/v1"}, "endpoint", "http"),
        ({"name": "tiny", "endpoint": "http://h/v1"}, "name", "reserved"),
        ({"name": "auto"}, "name", "reserved"),
        ({"name": "x", "endpoint": "http://h/v1", "adapter_path": "/a"}, "adapter_path", "at most one"),
        ({"name": "x", "adapter_path": "/a"}, "adapter_path", "LoRA"),  # this engine has LoRA off
        ({"name": "x", "colour": "red"}, None, "colour"),
        ({"name": "bad name!"}, "name", "regex"),
        ({"endpoint": "http://h/v1"}, None, "name"),
    ],
)
async def test_admin_rejects_invalid_experts(env: Env, body: dict, param: str | None, fragment: str) -> None:
    resp = await env.http.post("/admin/experts", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and fragment in error["message"]
    if param:
        assert error["param"] == param
    assert body.get("name") not in {e["name"] for e in (await env.http.get("/experts")).json()["experts"]} - {
        "tiny"
    }


async def test_admin_rejects_non_json_and_adapter_routes_on_non_adapters(env: Env) -> None:
    garbage = await env.http.post(
        "/admin/experts", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == "invalid_json"
    not_adapter = await env.http.post("/admin/adapters/legal/load")
    assert not_adapter.status_code == 400 and "not a LoRA adapter" in not_adapter.json()["error"]["message"]
    assert (await env.http.post("/admin/adapters/nobody/unload")).status_code == 404
