"""Benchmark forge-train: throughput against plain TRL, and peak memory of LoRA vs QLoRA vs full.

1. Tokens/s of the real ``forge-train sft`` command against a plain TRL ``SFTTrainer`` script with
   identical settings (model, data, batch, length, LoRA, seed), with and without packing, run
   alternately in fresh processes. Throughput is trained tokens / the trainer's ``train_runtime``
   (the training loop only, so start-up and the final save count for neither). Target ratio >= 0.95.
2. Peak resident memory (``ru_maxrss`` of each child process, via ``os.wait4``) of ``forge-train sft``
   as LoRA, QLoRA (``--load-in-4bit``, bitsandbytes on CPU) and full fine-tuning.

The model is a random Qwen2 built locally (hidden 512, 4 layers by default: big enough that the
weights, not Python overhead, dominate), trained on real rows of ../shared/data/sft_alpaca_2k.jsonl.
Prints a table; it asserts nothing. Run:

    OMP_NUM_THREADS=1 python tests/performance/bench_training.py [--steps 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "sft_alpaca_2k.jsonl"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _run(cmd: list[str]) -> tuple[int, float]:
    """Run a child; return its exit code and peak RSS in MiB (Linux reports ru_maxrss in KiB)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(err.decode(errors="replace")[-3000:])
        raise SystemExit(f"child failed: {' '.join(cmd)}")
    return proc.returncode, usage.ru_maxrss / 1024


def _common_flags(a: argparse.Namespace) -> list[str]:
    return [
        "--max-steps", str(a.steps), "--batch-size", str(a.batch_size), "--max-length", str(a.max_length),
        "--lr", "1e-4", "--seed", "0", "--logging-steps", "4", "--save-steps", "100000", "--max-samples", "256",
    ]  # fmt: skip


def _forge(model: Path, out: Path, a: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    cmd = [
        str(BIN / "forge-train"),
        "sft",
        "--model",
        str(model),
        "--dataset",
        str(DATA),
        "--output",
        str(out),
    ]
    _, rss = _run([*cmd, *_common_flags(a), *extra])
    manifest = json.loads((out / "manifest.json").read_text())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tokens = max(rec.get("num_tokens", 0) for rec in lines)
    return {"tok_s": tokens / manifest["metrics"]["train_runtime"], "rss": rss, "tokens": tokens}


def _plain(model: Path, out: Path, a: argparse.Namespace, packing: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--plain-child", "--model", str(model), "--out", str(out)]
    cmd += ["--steps", str(a.steps), "--batch-size", str(a.batch_size), "--max-length", str(a.max_length)]
    _, rss = _run([*cmd, *(["--packing"] if packing else [])])
    result = json.loads((out / "plain.json").read_text())
    return {"tok_s": result["tokens"] / result["train_runtime"], "rss": rss, "tokens": result["tokens"]}


def plain_trl_child(a: argparse.Namespace) -> None:
    """The baseline: what a user would write by hand with TRL, with the same settings as forge-train."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    data = load_dataset("json", data_files=str(DATA), split="train").select(range(256))
    data = data.select_columns(["messages"])
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    args = SFTConfig(
        output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.batch_size, max_length=a.max_length,
        learning_rate=1e-4, seed=0, data_seed=0, logging_steps=4, save_steps=100000, report_to="none",
        use_cpu=True, bf16=False, packing=a.packing, dataloader_num_workers=0, logging_first_step=True,
    )  # fmt: skip
    peft = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft
    )
    result = trainer.train()
    trainer.save_model(a.out)
    tokens = max(h.get("num_tokens", 0) for h in trainer.state.log_history)
    Path(a.out, "plain.json").write_text(json.dumps({"tokens": tokens, **result.metrics}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating runs per variant (median reported)"
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mem-hidden", type=int, default=1024, help="model width for the memory runs")
    parser.add_argument(
        "--mem-steps", type=int, default=3, help="steps per memory run (the peak comes early)"
    )
    parser.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.plain_child:
        plain_trl_child(a)
        return

    from safetensors.torch import load_file

    from forge_gateway.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        heads = a.hidden // 64
        model = build_tiny_model(
            tmp / "model", hidden_size=a.hidden, num_layers=a.layers, num_heads=heads,
            num_kv_heads=max(1, heads // 2), intermediate_size=a.hidden * 11 // 4,
        )  # fmt: skip
        print(f"model: Qwen2 hidden {a.hidden}, {a.layers} layers; {a.steps} steps, batch {a.batch_size}, "
              f"max_length {a.max_length}; OMP_NUM_THREADS={_env()['OMP_NUM_THREADS']}")  # fmt: skip
        rows = []
        for packing in (False, True):
            forge, plain = [], []
            for i in range(a.repeats):
                flags = ["--packing"] if packing else ["--no-packing"]
                forge.append(_forge(model, tmp / f"f{packing}{i}", a, flags)["tok_s"])
                plain.append(_plain(model, tmp / f"p{packing}{i}", a, packing)["tok_s"])
            f, p = statistics.median(forge), statistics.median(plain)
            rows.append((f"packing={packing}", f, p, f / p))
        print(f"\nthroughput (tokens/s, median of {a.repeats})")
        print(f"{'variant':<16}{'forge-train':>14}{'plain TRL':>14}{'ratio':>9}")
        for name, f, p, r in rows:
            print(f"{name:<16}{f:>14.1f}{p:>14.1f}{r:>9.3f}")

        heads = a.mem_hidden // 64
        big = build_tiny_model(
            tmp / "big", hidden_size=a.mem_hidden, num_layers=a.layers, num_heads=heads,
            num_kv_heads=max(1, heads // 2), intermediate_size=a.mem_hidden * 11 // 4,
        )  # fmt: skip
        params = sum(t.numel() for t in load_file(big / "model.safetensors").values())
        print(f"\npeak RSS of `forge-train sft` (MiB), Qwen2 hidden {a.mem_hidden}, {a.layers} layers, "
              f"{params / 1e6:.1f}M params, {a.mem_steps} steps")  # fmt: skip
        print(f"{'mode':<10}{'peak RSS':>12}{'tokens/s':>12}")
        a.steps = a.mem_steps
        for name, flags in (("LoRA", []), ("QLoRA", ["--load-in-4bit"]), ("full", ["--full"])):
            r = _forge(big, tmp / f"m-{name}", a, flags)
            print(f"{name:<10}{r['rss']:>12.0f}{r['tok_s']:>12.1f}")


if __name__ == "__main__":
    main()
