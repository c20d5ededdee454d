"""Data-parallel ``forge-train`` for real: two CPU ranks over gloo, and the shipped accelerate configs.

``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs starts two ranks
with torchrun; forge-train trains with ``use_cpu`` there, so accelerate joins them over gloo.
Both ranks step (the global batch is twice the per-rank batch), only rank 0 writes outputs,
registers and reports, and the adapter it wrote loads and generates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forge_sdk.experts import ExpertRegistry
from tests.support import free_port

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = REPO / "trainers" / "accelerate"


@pytest.mark.slow  # three interpreters (launcher + 2 ranks): ~60 s on this 2-core machine
def test_data_parallel_two_processes(tiny_model_dir: Path, sft_file: Path, tmp_path: Path) -> None:
    out, registry = tmp_path / "dp", tmp_path / "experts.json"
    per_rank_batch, steps = 2, 3
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "forge_train.cli",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sft_file),
        "--output",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-size",
        str(per_rank_batch),
        "--max-length",
        "128",
        "--logging-steps",
        "1",
        "--register",
        "dp-expert",
        "--registry",
        str(registry),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["global_step"] == steps
    rows = sum(1 for line in sft_file.read_text().splitlines() if line.strip())
    # Both ranks stepped in lockstep on different rows: each step consumed 2 x per-rank batch.
    assert manifest["epochs"] == pytest.approx(steps * per_rank_batch * 2 / rows)
    # Rank 0 alone logged, registered and reported.
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, steps + 1))
    assert [e.name for e in ExpertRegistry(registry).experts.values()] == ["dp-expert"]
    assert proc.stdout.count("sft done:") == 1
    assert (proc.stdout + proc.stderr).count("registered expert 'dp-expert'") == 1

    # The adapter rank 0 saved loads on its base and generates.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    generated = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 4 or generated[0, -1].item() == tok.eos_token_id
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # training moved the adapter


@pytest.mark.parametrize(
    ("name", "kind"),
    [("deepspeed_zero2", "DEEPSPEED"), ("deepspeed_zero3", "DEEPSPEED"), ("fsdp", "FSDP")],
)
def test_shipped_accelerate_configs_load(name: str, kind: str) -> None:
    """accelerate's own loader accepts every shipped config (unknown keys would fail here)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert str(config.distributed_type).endswith(kind)
    assert config.num_processes >= 2 and config.use_cpu is False
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    else:
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
