"""Trained experts are reached by ``model="auto"``; base-model aliases stay out of ``/v1/models``.

The standard install: the built-in plugins (default experts, the router) and the example plugin's
``mathexpert`` (the base model under another name, priority 10), plus experts registered the way
``forge-train sft --register NAME --specialization math`` does, on the tiny model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from forge_gateway.app import create_app
from forge_gateway.config import load_config
from forge_gateway.routing import AUTO, ExpertCatalog
from forge_sdk.experts import ExpertModel, ExpertRegistry
from forge_sdk.plugins import get_plugin_manager
from tests.gateway.test_lora_experts_support import make_adapter, serve_app

routing = pytest.importorskip("forge_plugins.routing")
default_experts = pytest.importorskip("forge_plugins.default_experts")
mathexpert = pytest.importorskip("forge_plugin_mathexpert")
on_loop = pytest.mark.asyncio(loop_scope="session")

MATH = "Solve for x: 3x + 7 = 22"
ALIASES = {"general", "code", "math", "writing", "mathexpert"}


def _trained(name: str, adapter: Path, **fields: Any) -> ExpertModel:
    """An entry as ``forge-train sft --register NAME --specialization math`` writes it."""
    return ExpertModel(name=name, adapter_path=str(adapter), specialization="math", **fields)


def _plugins() -> list[ExpertModel]:
    return [*default_experts.DEFAULT_EXPERTS, mathexpert.math_expert()]


def _catalog(registry: Path) -> ExpertCatalog:
    from forge_plugins import NeuralClassifier

    catalog = ExpertCatalog("tiny", _plugins(), str(registry), lora_enabled=True)
    catalog.classifier = NeuralClassifier(list(catalog.experts.values()))
    return catalog


def test_auto_prefers_the_trained_expert_over_aliases_of_its_specialization(tmp_path: Path) -> None:
    registry = tmp_path / "experts.json"
    catalog = _catalog(registry)
    # Before any training: the example plugin's alias takes math by its priority.
    before = catalog.route(MATH)
    assert before.expert_name == "mathexpert" and before.reason.endswith(":rank=priority")
    ExpertRegistry(registry).register(_trained("math-smol", tmp_path / "a"))
    catalog.refresh(force=True)
    target = catalog.route(MATH)
    assert target.expert_name == "math-smol" and target.rank == "trained>alias"
    assert target.reason.startswith("router:neural:neural:math:") and target.reason.endswith(
        ":rank=trained>alias"
    )
    assert target.lora is not None
    # The keyword classifier's alias pick ("equation" is mathexpert's) gives way the same way.
    from forge_plugins import KeywordClassifier

    keyword = KeywordClassifier(list(catalog.experts.values())).classify_with_confidence("an equation")
    assert (keyword.expert, keyword.reason, keyword.rank) == (
        "math-smol",
        "keyword:equation",
        "trained>alias",
    )
    # Named explicitly, an alias still answers.
    assert catalog.resolve("mathexpert", lambda: "").expert_name == "mathexpert"


def test_among_trained_experts_priority_then_the_latest_registration_wins(tmp_path: Path) -> None:
    registry = tmp_path / "experts.json"
    catalog = _catalog(registry)
    store = ExpertRegistry(registry)
    store.register(_trained("math-v1", tmp_path / "v1"))
    store.register(_trained("math-v2", tmp_path / "v2"))  # registered later: stamped later
    catalog.refresh(force=True)
    assert (catalog.route(MATH).expert_name, catalog.route(MATH).rank) == ("math-v2", "recent")
    store.register(_trained("math-v1", tmp_path / "v1", priority=1))
    catalog.refresh(force=True)
    assert (catalog.route(MATH).expert_name, catalog.route(MATH).rank) == ("math-v1", "priority")
    # Equal priorities again, math-v2 re-registered (a retrain): now the most recent wins.
    store.register(_trained("math-v2", tmp_path / "v2", priority=1))
    catalog.refresh(force=True)
    assert (catalog.route(MATH).expert_name, catalog.route(MATH).rank) == ("math-v2", "recent")


class Live:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http


async def _serve(tiny_model_dir: Path, registry: Path, **overrides: Any) -> AsyncIterator[Live]:
    config = load_config(
        overrides={
            "model": str(tiny_model_dir),
            "served_model_name": "tiny",
            "registry": str(registry),
            # The transformers engine: a vLLM engine takes minutes to start on a CPU test machine.
            "engine": {"kind": "transformers", "max_model_len": 256},
            **overrides,
        },
        environ={},
    )
    pm = get_plugin_manager(load_entrypoints=False, plugins=[default_experts, routing, mathexpert])
    async with (
        serve_app(create_app(config, pm=pm)) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        yield Live(http)


@pytest.fixture(scope="module")
def trained_registry(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    registry = root / "experts.json"
    ExpertRegistry(registry).register(_trained("math-tiny", make_adapter(tiny_model_dir, root / "math", 1)))
    return registry


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def live(tiny_model_dir: Path, trained_registry: Path) -> AsyncIterator[Live]:
    async for served in _serve(tiny_model_dir, trained_registry):  # every routing default
        yield served


@on_loop
async def test_auto_answers_from_the_trained_expert_and_says_which_rule_decided(live: Live) -> None:
    body = {"model": AUTO, "messages": [{"role": "user", "content": MATH}], "max_tokens": 2}
    resp = await live.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-forge-expert"] == "math-tiny" and resp.json()["model"] == "math-tiny"
    reason = resp.headers["x-forge-route-reason"]
    assert reason.startswith("router:neural:neural:math:") and reason.endswith(":rank=trained>alias")
    route = (await live.http.post("/route", params={"query": MATH})).json()
    assert route["expert"] == "math-tiny" and route["rank"] == "trained>alias" and route["reason"] == reason
    named = await live.http.post("/v1/chat/completions", json={**body, "model": "mathexpert"})
    assert named.status_code == 200 and named.headers["x-forge-route-reason"] == "requested"


@on_loop
async def test_models_lists_no_aliases_by_default(live: Live) -> None:
    ids = [m["id"] for m in (await live.http.get("/v1/models")).json()["data"]]
    assert ids == ["tiny", "math-tiny", "auto"]


@on_loop
async def test_models_lists_aliases_when_configured(tiny_model_dir: Path, trained_registry: Path) -> None:
    async for served in _serve(tiny_model_dir, trained_registry, api={"list_aliases": True}):
        ids = [m["id"] for m in (await served.http.get("/v1/models")).json()["data"]]
        assert ids[0] == "tiny" and ids[-1] == "auto" and {*ALIASES, "math-tiny"} <= set(ids)
