"""The gateway's LoRA switch (:mod:`forge_gateway.lora_switch`) on real transformers engines.

The switch is engine-agnostic; the vLLM engine is what uses it in production (its live test is
tests/gateway/test_lora_autoswitch.py, slow). Here two tiny transformers engines stand for the
LoRA-less and the LoRA engine, so the rules run in seconds: a request for an adapter waits for the
new engine, falls back with ``fallback:<expert>-loading`` past the request timeout, and with
``fallback:<expert>-engine`` when the LoRA engine cannot start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from forge_gateway.app import create_app
from forge_gateway.config import load_config
from forge_gateway.engines import create_engine
from forge_gateway.engines.base import Engine
from forge_gateway.engines.transformers_engine import TransformersEngine
from forge_gateway.lora_switch import LoraSwitch
from forge_sdk.experts import ExpertModel, ExpertRegistry
from forge_sdk.plugins import get_plugin_manager
from tests.gateway.test_lora_experts_support import (
    MESSAGES,
    chat_text,
    make_adapter,
    reference_text,
    serve_app,
)

pytest.importorskip("peft")
pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_TOKENS = 8


class GatedEngine(TransformersEngine):
    """A real transformers engine whose start waits for the test to open a gate (the slow start
    of a vLLM engine, made controllable)."""

    gate: asyncio.Event

    async def start(self) -> None:
        await self.gate.wait()
        await super().start()


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("switch") / "adapter", seed=5)


@pytest.fixture(scope="module")
def refs(tiny_model_dir: Path, adapter: Path) -> tuple[str, str]:
    base = reference_text(tiny_model_dir, None, MESSAGES, MAX_TOKENS)
    tuned = reference_text(tiny_model_dir, adapter, MESSAGES, MAX_TOKENS)
    assert base != tuned
    return base, tuned


def _app(model: Path, registry: Path, factory: Callable[[], Engine], request_timeout: float) -> object:
    config = load_config(
        environ={},
        overrides={
            "model": str(model),
            "served_model_name": "tiny",
            "registry": str(registry),
            "limits": {"request_timeout": request_timeout},
        },
    )
    engine = create_engine("transformers", str(model), enable_lora=False, dtype="float32")
    app = create_app(config, engine=engine, pm=get_plugin_manager(load_entrypoints=False))
    gateway = app.state.gateway
    # The switch the vLLM engine gets from lora_engine_factory, here with transformers engines.
    gateway.lora = LoraSwitch(gateway, factory)
    return app


def _register(registry: Path, adapter: Path) -> None:
    ExpertRegistry(registry).register(
        ExpertModel(name="math-smol", adapter_path=str(adapter), specialization="math")
    )


async def test_adapter_request_falls_back_while_loading_then_gets_the_adapter(
    tiny_model_dir: Path, tmp_path: Path, adapter: Path, refs: tuple[str, str]
) -> None:
    base_ref, adapter_ref = refs
    gate = asyncio.Event()

    def factory() -> Engine:
        engine = GatedEngine(str(tiny_model_dir), enable_lora=True, dtype="float32")
        engine.gate = gate
        return engine

    app = _app(tiny_model_dir, tmp_path / "experts.json", factory, request_timeout=3)
    gateway = app.state.gateway  # type: ignore[attr-defined]
    old = gateway.engine
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        assert (await http.get("/health")).json()["lora"] == {"state": "off"}
        _register(tmp_path / "experts.json", adapter)
        await asyncio.sleep(0.6)  # the catalog stats the registry file at most every 0.5 s
        # The LoRA engine cannot finish starting: past the request timeout, the default (here the
        # base model, no "general" expert) answers, and says why.
        text, resp = await chat_text(http, "math-smol", MAX_TOKENS)
        assert resp.headers["x-forge-route-reason"] == "fallback:math-smol-loading"
        assert text == base_ref and resp.headers["x-forge-expert"] == "tiny"
        assert (await http.get("/health")).json()["lora"] == {"state": "starting"}
        experts = {e["name"]: e for e in (await http.get("/experts")).json()["experts"]}
        assert experts["math-smol"]["status"] == {"state": "loading", "lora": "starting"}
        # The next request waits for the engine's real start: give it a bound a loaded machine meets.
        gateway.config.limits.request_timeout = 120
        waiting = asyncio.create_task(chat_text(http, "math-smol", MAX_TOKENS))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # it waits for the new engine
        gate.set()
        text, resp = await waiting
        assert text == adapter_ref and resp.headers["x-forge-route-reason"] == "requested"
        assert gateway.engine is not old and gateway.engine.supports_lora
        health = (await http.get("/health")).json()
        assert health["lora"]["state"] == "on" and health["engine"]["loras"] == ["math-smol"]
        assert (await chat_text(http, "tiny", MAX_TOKENS))[0] == base_ref


async def test_an_adapter_registered_through_the_admin_api_turns_lora_on(
    tiny_model_dir: Path, tmp_path: Path, adapter: Path, refs: tuple[str, str]
) -> None:
    def factory() -> Engine:
        return create_engine("transformers", str(tiny_model_dir), enable_lora=True, dtype="float32")

    app = _app(tiny_model_dir, tmp_path / "experts.json", factory, request_timeout=120)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=120) as http:
        body = {"name": "math-smol", "adapter_path": str(adapter), "specialization": "math"}
        resp = await http.post("/admin/experts", json=body)
        assert resp.status_code == 201, resp.text
        assert (await http.get("/health")).json()["lora"]["state"] in ("starting", "on")
        text, resp = await chat_text(http, "math-smol", MAX_TOKENS)
        assert text == refs[1] and resp.headers["x-forge-expert"] == "math-smol"
        assert (await http.get("/health")).json()["lora"]["state"] == "on"


async def test_a_lora_engine_that_cannot_start_falls_back_with_the_reason(
    tiny_model_dir: Path, tmp_path: Path, adapter: Path, refs: tuple[str, str]
) -> None:
    def factory() -> Engine:
        return create_engine("transformers", str(tmp_path / "no-such-model"), enable_lora=True)

    app = _app(tiny_model_dir, tmp_path / "experts.json", factory, request_timeout=60)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        _register(tmp_path / "experts.json", adapter)
        await asyncio.sleep(0.6)
        text, resp = await chat_text(http, "math-smol", MAX_TOKENS)
        assert resp.headers["x-forge-route-reason"] == "fallback:math-smol-engine"
        assert text == refs[0]
        lora = (await http.get("/health")).json()["lora"]
        assert lora["state"] == "failed" and "no-such-model" in lora["error"]
        experts = {e["name"]: e for e in (await http.get("/experts")).json()["experts"]}
        status = experts["math-smol"]["status"]
        assert status["state"] == "unservable" and "LoRA engine failed to start" in status["error"]


async def test_no_lora_keeps_adapters_unservable_with_a_clear_message(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    config = load_config(
        environ={},
        overrides={
            "model": str(tiny_model_dir),
            "registry": str(tmp_path / "experts.json"),
            "served_model_name": "tiny",
            "engine": {"kind": "transformers", "enable_lora": False},
        },
    )
    app = create_app(config, pm=get_plugin_manager(load_entrypoints=False))
    assert app.state.gateway.lora.status() == {"state": "disabled"}
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        _register(tmp_path / "experts.json", make_adapter(tiny_model_dir, tmp_path / "a", seed=1))
        await asyncio.sleep(0.6)
        resp = await http.post("/v1/chat/completions", json={"model": "math-smol", "messages": MESSAGES})
        assert resp.status_code == 404 and "--no-lora" in resp.json()["error"]["message"]
        assert (await http.get("/health")).json()["lora"] == {"state": "disabled"}
