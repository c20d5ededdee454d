"""The real model end to end: SmolLM2-135M-Instruct, pulled by the product, served by name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.conftest import REAL_MODEL
from tests.support import GatewayProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_gateway(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """``forge-gateway serve --model smollm2-135m-instruct`` with nothing else that changes the engine:
    the suite-wide ``FORGE_ENGINE_ENFORCE_EAGER`` (tests/conftest.py) is removed, so vLLM compiles
    where a C++ compiler is present, as a user's gateway does."""
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("real-gateway")
    env = {"FORGE_AUTH_DB_PATH": str(root / "auth.db"), "FORGE_ENGINE_ENFORCE_EAGER": None}
    # --engine vllm: without vLLM the default is the transformers engine, which the skip above rules out.
    args = ["--model", REAL_MODEL, "--engine", "vllm"]
    # A compiled start took 226-243 s on the loaded 2-core box (README, Engines): room for it.
    with GatewayProcess(args, env=env, log_path=root / "gateway.log", startup_timeout=900) as gw:
        yield gw


def test_the_default_engine_settings_are_logged(real_gateway: GatewayProcess) -> None:
    """The gateway says at start what it runs (dtype, compiled or eager, LoRA), as decided by the
    engine's defaults (float32 on CPU: docs/serving.md, Engine defaults)."""
    import json

    settings = [
        json.loads(line)
        for line in real_gateway.log_text().splitlines()
        if line.startswith("{") and '"engine_settings"' in line
    ]
    assert len(settings) == 1 and settings[0]["engine"] == "vllm" and settings[0]["lora"] is False
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        import os
        import shutil

        assert settings[0]["dtype"] == "float32"
        # Compiled wherever inductor finds a C++ compiler; eager without one.
        assert settings[0]["compiled"] is (shutil.which(os.environ.get("CXX") or "g++") is not None)


def test_greedy_capital_of_france(real_gateway: GatewayProcess) -> None:
    client = openai.OpenAI(
        base_url=f"{real_gateway.base_url}/v1", api_key="unused", max_retries=0, timeout=300
    )
    assert REAL_MODEL in {m.id for m in client.models.list().data}
    reply = client.chat.completions.create(
        model=REAL_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=24,
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=REAL_MODEL,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=24,
            stream=True,
        )
        if chunk.choices
    )
    assert streamed == reply.choices[0].message.content


def test_eval_through_the_gateway_matches_local(
    real_gateway: GatewayProcess, shared_data: Path, tmp_path: Path
) -> None:
    """forge-train eval's gateway path (echo + logprobs) scores what the local path scores."""
    from forge_train.evaluate import gateway_answer_nll, local_answer_nll

    rows = (shared_data / "expert_math_gsm8k_2k.jsonl").read_text().splitlines()[-3:]
    data = tmp_path / "heldout.jsonl"
    data.write_text("\n".join(rows) + "\n")
    local = local_answer_nll(REAL_MODEL, str(data))
    served = gateway_answer_nll(real_gateway.base_url, REAL_MODEL, str(data), REAL_MODEL)
    assert served.conversations == local.conversations == 3
    assert served.answer_tokens == local.answer_tokens
    assert served.nll == pytest.approx(local.nll, rel=2e-3)
