"""Train -> register -> serve with no restart: ``forge-train sft --register`` feeds a live gateway.

A real ``forge-train sft`` subprocess trains a LoRA adapter on real chat rows and writes it into
the registry file a running ``forge-gateway serve`` watches. The official ``openai`` client then
gets that expert's answer by name, and its greedy text equals transformers+PEFT's greedy text of
the same adapter.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import openai
import pytest

from forge_sdk.experts import ExpertRegistry
from tests.e2e.conftest import BIN, ServedGateway, cli_env
from tests.gateway.test_lora_experts_support import MESSAGES, reference_text

pytest.importorskip("vllm")
pytest.importorskip("peft")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MAX_TOKENS = 10
FFFD = chr(0xFFFD)


@pytest.fixture(scope="module")
def sft_rows(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight short real chat rows from the shared SFT set."""
    rows = [json.loads(line) for line in (shared_data / "sft_alpaca_2k.jsonl").read_text().splitlines()]
    short = [r for r in rows if sum(len(m["content"]) for m in r["messages"]) < 220][:8]
    path = tmp_path_factory.mktemp("train-data") / "sft8.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in short))
    return path


def _chat(client: openai.OpenAI, model: str) -> tuple[str, str]:
    """Greedy chat through the gateway: (``text#completion tokens``, ``x-forge-expert``)."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0
    )
    completion = raw.parse()
    text = (completion.choices[0].message.content or "").rstrip(FFFD)
    assert completion.model == model
    return f"{text}#{completion.usage.completion_tokens}", raw.headers["x-forge-expert"]


def test_trained_adapter_is_served_by_the_running_gateway(
    vllm_gateway: ServedGateway, tiny_model_dir: Path, sft_rows: Path, tmp_path: Path
) -> None:
    client = vllm_gateway.client()
    with pytest.raises(openai.NotFoundError):
        _chat(client, "myexpert")

    out = tmp_path / "myexpert-lora"
    proc = subprocess.run(
        [
            str(BIN / "forge-train"),
            "sft",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(sft_rows),
            "--output",
            str(out),
            "--max-steps",
            "5",
            # A large rate so five steps move the random tiny model's greedy tokens (checked below).
            "--lr",
            "1e-2",
            "--register",
            "myexpert",
            "--registry",
            str(vllm_gateway.registry),
            "--specialization",
            "writing",
        ],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    expert = ExpertRegistry(vllm_gateway.registry).get("myexpert")
    assert expert is not None and expert.kind == "adapter" and expert.adapter_path == str(out.resolve())
    assert expert.training_steps == 5

    expected = reference_text(tiny_model_dir, out, MESSAGES, MAX_TOKENS)
    # Equality below means nothing unless the trained adapter changes the base model's answer.
    assert expected != reference_text(tiny_model_dir, None, MESSAGES, MAX_TOKENS)

    time.sleep(0.6)  # the gateway stats the registry file at most every 0.5 s
    text, served_by = _chat(client, "myexpert")
    assert served_by == "myexpert"
    assert text == expected
    assert "myexpert" in [m.id for m in client.models.list().data]
    listed = {e["name"]: e for e in vllm_gateway.get("/experts").json()["experts"]}
    assert listed["myexpert"]["kind"] == "adapter" and listed["myexpert"]["trained_on"] == str(sft_rows)
    # model="auto" reaches it: a writing question goes to the trained expert, not the built-in
    # `writing` alias of the base model, and the route reason names the rule.
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Write a haiku about autumn"}], max_tokens=4
    )
    assert raw.headers["x-forge-expert"] == "myexpert"
    assert raw.headers["x-forge-route-reason"].endswith(":rank=trained>alias")
