"""Benchmark forge-train: throughput against plain TRL, and peak memory of LoRA vs QLoRA vs full.

1. Tokens/s of the real ``forge-train sft`` command against a plain TRL ``SFTTrainer`` script with
   identical settings (model, data, batch, length, LoRA, seed), with and without packing, run
   alternately in fresh processes. Throughput is trained tokens / the training loop's time (wall
   ``train_runtime`` and CPU seconds; start-up and the final save count for neither). The CPU-time
   ratio is the one to trust on a shared machine, where wall time swings with others' load.
   Target ratio >= 0.95.
2. Peak resident memory (``ru_maxrss`` of each child process, via ``os.wait4``) of ``forge-train sft``
   as LoRA, QLoRA (``--load-in-4bit``, bitsandbytes on CPU) and full fine-tuning.

The model is a random Qwen2 built locally (hidden 512, 4 layers by default: big enough that the
weights, not Python overhead, dominate), trained on real rows of ../shared/data/sft_alpaca_2k.jsonl.
Prints a table; it asserts nothing. Run:

    OMP_NUM_THREADS=1 python tests/performance/bench_training.py [--only throughput|memory] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
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
    m = manifest["metrics"]
    return {"tok_s": tokens / m["train_runtime"], "tok_cpu_s": tokens / m["train_cpu_seconds"], "rss": rss}


def _plain(model: Path, out: Path, a: argparse.Namespace, packing: bool) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--plain-child", "--model", str(model), "--out", str(out)]
    cmd += ["--steps", str(a.steps), "--batch-size", str(a.batch_size), "--max-length", str(a.max_length)]
    _, rss = _run([*cmd, *(["--packing"] if packing else [])])
    result = json.loads((out / "plain.json").read_text())
    tokens = result["tokens"]
    return {
        "tok_s": tokens / result["train_runtime"],
        "tok_cpu_s": tokens / result["train_cpu_seconds"],
        "rss": rss,
    }


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
    cpu_started = time.process_time()
    result = trainer.train()
    result.metrics["train_cpu_seconds"] = time.process_time() - cpu_started
    trainer.save_model(a.out)
    tokens = max(h.get("num_tokens", 0) for h in trainer.state.log_history)
    Path(a.out, "plain.json").write_text(json.dumps({"tokens": tokens, **result.metrics}))


def _build(tmp: Path, name: str, hidden: int, layers: int) -> Path:
    from forge_gateway.tiny_model import build_tiny_model

    heads = hidden // 64  # vLLM-friendly head_dim 64
    return build_tiny_model(
        tmp / name, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=max(1, heads // 2), intermediate_size=hidden * 11 // 4,
    )  # fmt: skip


def throughput(tmp: Path, a: argparse.Namespace) -> None:
    """forge-train sft vs plain TRL, alternating, with and without packing."""
    model = _build(tmp, "model", a.hidden, a.layers)
    print(f"throughput: Qwen2 hidden {a.hidden}, {a.layers} layers; {a.steps} steps, batch {a.batch_size}, "
          f"max_length {a.max_length}, LoRA r 8; OMP_NUM_THREADS={_env()['OMP_NUM_THREADS']}; "
          f"median of {a.repeats} alternating runs")  # fmt: skip
    print("tokens/s over the training loop's wall time, and per CPU-second (robust to other load)")
    print(
        f"{'variant':<16}{'forge wall':>12}{'TRL wall':>10}{'ratio':>7}{'forge cpu':>12}{'TRL cpu':>10}{'ratio':>7}"
    )
    for packing in (False, True):
        forge, plain = [], []
        for i in range(a.repeats):
            flags = ["--packing"] if packing else ["--no-packing"]
            forge.append(_forge(model, tmp / f"f{packing}{i}", a, flags))
            plain.append(_plain(model, tmp / f"p{packing}{i}", a, packing))
        cells = []
        for key in ("tok_s", "tok_cpu_s"):
            f = statistics.median(r[key] for r in forge)
            p = statistics.median(r[key] for r in plain)
            cells.append(f"{f:>12.1f}{p:>10.1f}{f / p:>7.3f}")
        print(f"{f'packing={packing}':<16}{''.join(cells)}")


def memory(tmp: Path, a: argparse.Namespace) -> None:
    """Peak RSS of forge-train sft as LoRA, QLoRA and full fine-tuning."""
    from safetensors.torch import load_file

    model = _build(tmp, "big", a.mem_hidden, a.mem_layers)
    params = sum(t.numel() for t in load_file(model / "model.safetensors").values())
    a.steps, a.batch_size, a.max_length = a.mem_steps, a.mem_batch_size, a.mem_max_length
    print(f"\npeak RSS: Qwen2 hidden {a.mem_hidden}, {a.mem_layers} layers, {params / 1e6:.1f}M params (fp32 "
          f"{params * 4 / 2**20:.0f} MiB); {a.steps} steps, batch {a.batch_size}, max_length {a.max_length}")  # fmt: skip
    print(f"{'mode':<10}{'peak RSS MiB':>14}{'tokens/s':>12}")
    for name, flags in (("LoRA", []), ("QLoRA", ["--load-in-4bit"]), ("full", ["--full"])):
        r = _forge(model, tmp / f"m-{name}", a, flags)
        print(f"{name:<10}{r['rss']:>14.0f}{r['tok_s']:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating runs per variant (median reported)"
    )
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mem-hidden", type=int, default=1536, help="model width for the memory runs")
    parser.add_argument("--mem-layers", type=int, default=6, help="model depth for the memory runs")
    parser.add_argument(
        "--mem-steps", type=int, default=3, help="steps per memory run (the peak comes early)"
    )
    parser.add_argument("--mem-batch-size", type=int, default=1)
    parser.add_argument("--mem-max-length", type=int, default=64)
    parser.add_argument("--only", choices=["throughput", "memory"], help="run one part only")
    parser.add_argument("--plain-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--packing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.plain_child:
        plain_trl_child(a)
        return
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp_name:
        if a.only != "memory":
            throughput(Path(tmp_name), a)
        if a.only != "throughput":
            memory(Path(tmp_name), a)


if __name__ == "__main__":
    main()
