"""``enable_lora = "auto"`` on a running vLLM gateway: the first adapter expert turns LoRA on.

A gateway started as a user starts it (no ``--enable-lora``, no adapters) runs a LoRA-less vLLM
engine. An adapter written into its registry file (what ``forge-train sft --register`` does) must
then be served by that adapter, with no restart: the gateway builds a LoRA engine in the
background, swaps it in, and base requests running meanwhile all succeed with the base model's
greedy tokens.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

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
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

MAX_TOKENS = 10
WORKERS = 4


async def test_adapter_registered_while_running_is_served_after_a_background_engine_swap(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter", seed=11)
    base_ref = reference_text(tiny_model_dir, None, MESSAGES, MAX_TOKENS)
    adapter_ref = reference_text(tiny_model_dir, adapter, MESSAGES, MAX_TOKENS)
    assert base_ref != adapter_ref  # the adapter must change the answer, or the test proves nothing
    registry = tmp_path / "experts.json"
    config = load_config(
        environ={},
        overrides={
            "model": str(tiny_model_dir),
            "served_model_name": "tiny",
            "registry": str(registry),
            # float32: the references are transformers in float32 (the CPU default from the
            # engine-defaults change; set here so this test does not depend on it).
            "engine": {"dtype": "float32"},
            # The LoRA engine's start on a loaded 2-core CI machine may take longer than the
            # 60 s default; the adapter request waits for it up to this bound.
            "limits": {"request_timeout": 600},
        },
    )
    app = create_app(config, pm=get_plugin_manager(load_entrypoints=False))
    gateway = app.state.gateway
    old = gateway.engine
    assert old.name == "vllm" and not old.supports_lora  # the default with no adapters: LoRA off

    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=600) as http:
        health = (await http.get("/health")).json()
        assert health["lora"]["state"] == "off"
        assert (await chat_text(http, "tiny", MAX_TOKENS))[0] == base_ref

        done = asyncio.Event()
        spans: list[tuple[float, float, str]] = []

        async def base_worker() -> None:
            while not done.is_set():
                began = time.time()
                text, _ = await chat_text(http, "tiny", MAX_TOKENS)  # asserts a 200
                spans.append((began, time.time(), text))

        workers = [asyncio.create_task(base_worker()) for _ in range(WORKERS)]
        try:
            # What `forge-train sft ... --register math-smol --specialization math` writes.
            ExpertRegistry(registry).register(
                ExpertModel(name="math-smol", adapter_path=str(adapter), specialization="math")
            )
            await asyncio.sleep(0.6)  # the catalog stats the registry file at most every 0.5 s
            experts = {e["name"]: e for e in (await http.get("/experts")).json()["experts"]}
            assert experts["math-smol"]["status"] == {"state": "loading", "lora": "starting"}
            assert (await http.get("/health")).json()["lora"]["state"] == "starting"
            # Waits for the LoRA engine, then is answered by the adapter.
            text, resp = await chat_text(http, "math-smol", MAX_TOKENS)
            assert text == adapter_ref
            assert resp.headers["x-forge-expert"] == "math-smol"
            assert resp.headers["x-forge-route-reason"] == "requested"
        finally:
            done.set()
            await asyncio.gather(*workers)

        health = (await http.get("/health")).json()
        assert health["lora"]["state"] == "on" and "math-smol" in health["engine"]["loras"]
        assert gateway.engine is not old and gateway.engine.supports_lora
        swapped = gateway.lora.swapped_at
        assert spans and all(text == base_ref for _, _, text in spans)
        assert any(began < swapped < ended for began, ended, _ in spans), "no base request spanned the swap"
        # Both served together on the new engine, each with its own tokens.
        both = await asyncio.gather(
            chat_text(http, "math-smol", MAX_TOKENS), chat_text(http, "tiny", MAX_TOKENS)
        )
        assert [text for text, _ in both] == [adapter_ref, base_ref]
        experts = {e["name"]: e for e in (await http.get("/experts")).json()["experts"]}
        assert experts["math-smol"]["status"] == {"state": "ok"}
        # The old engine stops once its requests are done (after the admission queue's bound).
        for _ in range(240):
            if not (await old.health())["ok"]:
                break
            await asyncio.sleep(0.25)
        else:
            pytest.fail("the replaced engine was not stopped")
        # Stopping the old engine leaves the new one serving both.
        both = await asyncio.gather(
            chat_text(http, "math-smol", MAX_TOKENS), chat_text(http, "tiny", MAX_TOKENS)
        )
        assert [text for text, _ in both] == [adapter_ref, base_ref]
