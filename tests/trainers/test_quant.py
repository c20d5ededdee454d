"""GPTQ / AWQ quantization: real llm-compressor runs on the tiny model, loaded back by vLLM (CPU).

The first run builds the isolated quant venv (~1 min with the local torch wheel); later runs reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forge_sdk.errors import ConfigurationError, DataError, ModelError, ModelNotFoundError

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from forge_gateway.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("quant") / "tiny", seed=11)


@pytest.fixture(scope="module")
def quantized(tiny, tmp_path_factory):
    """Both methods through the public API and the command, quantized once per module."""
    from forge_train.deploy import quantize_awq
    from forge_train.deploy.plugin import QuantizeCommand

    root = tmp_path_factory.mktemp("quantized")
    calib = root / "calib.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
                {"role": "assistant", "content": f"The answer is {2 * i}."},
            ]
        }
        for i in range(16)
    ]
    calib.write_text("\n".join(json.dumps(r) for r in rows))
    argv = [
        "--method",
        "gptq",
        "--model",
        str(tiny),
        "--output",
        str(root / "gptq"),
        "--group-size",
        "32",
        "--calibration",
        str(calib),
    ]
    exe = shutil.which("forge-train") or str(Path(sys.executable).with_name("forge-train"))
    if Path(exe).exists():  # through the real command, as a user runs it
        proc = subprocess.run([exe, "quantize", *argv], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "quantize done" in proc.stdout
    else:
        parser = argparse.ArgumentParser()
        QuantizeCommand.add_arguments(parser)
        QuantizeCommand().run(parser.parse_args(argv))
    awq = quantize_awq(tiny, root / "awq", bits=4, group_size=64)  # built-in calibration sample
    return {"gptq": str(root / "gptq"), "awq": awq}


@pytest.mark.parametrize(("method", "group_size", "symmetric"), [("gptq", 32, True), ("awq", 64, False)])
def test_checkpoint_is_compressed_tensors(quantized, method, group_size, symmetric):
    cfg = json.loads(open(os.path.join(quantized[method], "config.json")).read())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "compressed-tensors"
    weights = q["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, group_size, symmetric)
    assert "lm_head" in q["ignore"]
    assert os.path.isfile(os.path.join(quantized[method], "tokenizer.json"))


def _hf_greedy(model_dir: str, prompts: list[str], n: int) -> list[list[int]]:
    """Greedy tokens from transformers' own compressed-tensors path (independent of vLLM's kernels)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    out = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            gen = model.generate(
                ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id
            )
        out.append(gen[0, ids.shape[1] :].tolist())
    return out


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_loads_and_generates(quantized, monkeypatch):
    pytest.importorskip("vllm")
    for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}.items():
        monkeypatch.setenv(key, value)
    from vllm import LLM, SamplingParams

    prompts = ["The quick brown fox", "def add(a, b):", "What is the capital of France?"]
    for method in ("gptq", "awq"):
        llm = LLM(model=quantized[method], enforce_eager=True, max_model_len=256, seed=0)
        params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        first = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        again = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
        del llm
        assert all(len(t) == 8 for t in first)
        assert first == again
        # vLLM decodes the packed int4 weights as transformers does: the first tokens agree (float
        # noise between kernels may flip a late near-tie, so only a prefix is compared).
        reference = _hf_greedy(quantized[method], prompts, 8)
        agree = sum(f[:4] == r[:4] for f, r in zip(first, reference, strict=True))
        assert agree >= 2, (method, first, reference)


def test_bad_inputs_fail_clearly(tiny, tmp_path):
    from forge_train.deploy import load_calibration, quantize_gptq

    with pytest.raises(DataError, match="calibration file not found"):
        quantize_gptq(tiny, tmp_path / "o", calibration=tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(DataError, match="no calibration text"):
        load_calibration(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1"):
        load_calibration(tmp_path / "bad.jsonl")
    assert len(load_calibration(None)) > 20
    with pytest.raises(ModelNotFoundError):
        quantize_gptq(tmp_path / "no-model", tmp_path / "o")
    enc = tmp_path / "encoder"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(ModelError, match="unsupported architecture"):
        quantize_gptq(enc, tmp_path / "o")
    with pytest.raises(ConfigurationError, match="bits"):
        quantize_gptq(tiny, tmp_path / "o", bits=3)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelError, match="merge"):
        quantize_gptq(adapter, tmp_path / "o")


def test_already_quantized_and_bad_group_size(quantized, tiny, tmp_path):
    from forge_train.deploy import quantize_gptq

    with pytest.raises(ModelError, match="already quantized"):
        quantize_gptq(quantized["gptq"], tmp_path / "o")
    # 48 divides neither 128 nor 256: the worker refuses before calibrating.
    with pytest.raises(ConfigurationError, match="group size 48"):
        quantize_gptq(tiny, tmp_path / "o", group_size=48, calibration=["some text"])


def test_missing_quant_env_names_install_command(tiny, tmp_path, monkeypatch):
    from forge_train.deploy import quantize_awq

    monkeypatch.setenv("FORGE_QUANT_VENV", str(tmp_path / "no-venv"))
    monkeypatch.setenv("FORGE_QUANT_AUTO_INSTALL", "0")
    with pytest.raises(ConfigurationError, match=r"pip install torch==\S+ llmcompressor==") as err:
        quantize_awq(tiny, tmp_path / "o")
    assert str(tmp_path / "no-venv") in str(err.value)


def test_unknown_method_lists_available(tiny, tmp_path):
    from forge_train.deploy.plugin import QuantizeCommand

    parser = argparse.ArgumentParser()
    QuantizeCommand.add_arguments(parser)
    args = parser.parse_args(["--method", "hqq", "--model", str(tiny), "--output", str(tmp_path / "o")])
    with pytest.raises(ConfigurationError, match=r"available: .*awq.*gptq"):
        QuantizeCommand().run(args)


def test_forge_train_quantize_cli_bad_calibration(tiny, tmp_path):
    exe = shutil.which("forge-train") or str(Path(sys.executable).with_name("forge-train"))
    if not Path(exe).exists():
        pytest.skip("forge-train console script not installed")
    proc = subprocess.run(
        [
            exe,
            "quantize",
            "--method",
            "awq",
            "--model",
            str(tiny),
            "--output",
            str(tmp_path / "o"),
            "--calibration",
            str(tmp_path / "missing.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "calibration file not found" in proc.stderr and "Traceback" not in proc.stderr
