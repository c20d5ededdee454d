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
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("real-gateway")
    env = {"FORGE_AUTH_DB_PATH": str(root / "auth.db"), "FORGE_ENGINE_DTYPE": "float32"}
    args = ["--model", REAL_MODEL, "--engine", "vllm", "--max-model-len", "1024", "--no-lora"]
    with GatewayProcess(args, env=env, log_path=root / "gateway.log") as gw:
        yield gw


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
