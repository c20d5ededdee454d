"""merge_lora_weights / ``forge-train merge``: the merged model generates what base + adapter did."""

from __future__ import annotations

import argparse

import pytest

from forge_sdk.errors import ModelError, ModelNotFoundError

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forge_gateway.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("merge")
    base = build_tiny_model(root / "base", seed=3)
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(7)
    # init_lora_weights=False gives B != 0, so the adapter really changes the outputs.
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, cfg)
    peft_model.save_pretrained(root / "adapter")
    return base, root / "adapter", root


def _greedy(model, tok, prompt: str, n: int = 12) -> list[int]:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids.shape[1] :].tolist()


def test_merged_model_generates_like_base_plus_adapter(base_and_adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forge_train.deploy import merge_lora_weights

    base, adapter, root = base_and_adapter
    out = merge_lora_weights(base, adapter, root / "merged")
    tok = AutoTokenizer.from_pretrained(out)
    plain = AutoModelForCausalLM.from_pretrained(base)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in name for name, _ in merged.named_parameters())

    for prompt in ["The quick brown fox", "def add(a, b):", "What is the capital"]:
        expected = _greedy(with_adapter, tok, prompt)
        assert _greedy(merged, tok, prompt) == expected
    ids = tok("Solve 2x + 3 = 7.", return_tensors="pt").input_ids
    with torch.no_grad():
        l_adapter, l_merged, l_base = (m(ids).logits for m in (with_adapter, merged, plain))
    torch.testing.assert_close(l_merged, l_adapter, atol=1e-4, rtol=1e-4)
    # The adapter is not a no-op, so equality above is meaningful.
    assert (l_base - l_adapter).abs().max() > 1e-2


def test_merge_command_runs_and_registers(base_and_adapter):
    from forge_sdk.plugins import collect, get_plugin_manager
    from forge_train.deploy import plugin

    base, adapter, root = base_and_adapter
    pm = get_plugin_manager(load_entrypoints=False, plugins=[plugin])
    methods = collect(pm, "register_training_methods", key=lambda c: c.name)
    assert {"merge", "quantize"} <= set(methods)
    parser = argparse.ArgumentParser()
    methods["merge"].add_arguments(parser)
    args = parser.parse_args(["--base", str(base), "--adapter", str(adapter), "--output", str(root / "cli")])
    result = methods["merge"]().run(args)
    assert (root / "cli" / "model.safetensors").is_file()
    assert (root / "cli" / "tokenizer.json").is_file()
    assert result.output_dir == str(root / "cli")


def test_merge_errors(base_and_adapter, tmp_path):
    from forge_gateway.tiny_model import build_tiny_model
    from forge_train.deploy import merge_lora_weights

    base, adapter, _ = base_and_adapter
    with pytest.raises(ModelNotFoundError):
        merge_lora_weights(base, tmp_path / "nope", tmp_path / "out")
    with pytest.raises(ModelError, match="not a PEFT adapter"):
        merge_lora_weights(base, base, tmp_path / "out")
    narrow = build_tiny_model(
        tmp_path / "narrow", hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=128
    )
    with pytest.raises(ModelError, match="does not fit"):
        merge_lora_weights(narrow, adapter, tmp_path / "out")


def test_forge_train_merge_cli(base_and_adapter, tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    exe = shutil.which("forge-train") or str(Path(sys.executable).with_name("forge-train"))
    if not Path(exe).exists():
        pytest.skip("forge-train console script not installed")
    base, adapter, _ = base_and_adapter
    ok = subprocess.run(
        [exe, "merge", "--base", str(base), "--adapter", str(adapter), "--output", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "m" / "config.json").is_file()
    bad = subprocess.run(
        [
            exe,
            "merge",
            "--base",
            str(base),
            "--adapter",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "m2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1
    assert "adapter folder not found" in bad.stderr and "Traceback" not in bad.stderr
