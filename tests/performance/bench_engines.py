"""Throughput of the inference engines on the tiny model: output tokens/s at 1, 8 and 32 streams.

Run: ``python tests/performance/bench_engines.py [--tokens 64] [--engines transformers vllm]``.
Every stream asks for exactly ``--tokens`` tokens (``ignore_eos``), so no engine stops early.
For vLLM it also prints the throughput of 32 streams spread over 4 LoRA adapters relative to 32
base-model streams on the same LoRA-enabled engine. Prints a table; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

CONCURRENCY = (1, 8, 32)


def make_adapters(model_dir: Path, root: Path, n: int) -> list:
    """``n`` PEFT LoRA adapters with random non-zero weights on the tiny model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forge_gateway.engines import LoraSpec

    specs = []
    for i in range(1, n + 1):
        torch.manual_seed(i)
        cfg = LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False
        )
        get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), cfg).save_pretrained(
            root / f"lora{i}"
        )
        specs.append(LoraSpec(name=f"bench{i}", path=str(root / f"lora{i}"), lora_id=i))
    return specs


async def run_streams(
    engine, prompt: list[int], streams: int, tokens: int, loras: list | None = None
) -> float:
    """Run ``streams`` concurrent requests; return output tokens per second."""
    from forge_gateway.engines import EngineRequest, SamplingOptions

    async def one(i: int) -> int:
        lora = loras[i % len(loras)] if loras else None
        opts = SamplingOptions(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        req = EngineRequest(
            request_id=f"bench-{time.monotonic_ns()}-{i}", prompt_token_ids=prompt, sampling=opts, lora=lora
        )
        n = 0
        async for out in engine.generate(req):
            n = out.completion_tokens
        return n

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    elapsed = time.perf_counter() - start
    assert all(c == tokens for c in counts), f"an engine stopped early: {counts}"
    return sum(counts) / elapsed


async def bench(kind: str, model_dir: Path, adapters: list, tokens: int) -> list[tuple[str, str]]:
    from forge_gateway.engines import create_engine

    options: dict = {"max_model_len": 512}
    if kind == "vllm":
        options.update(enable_lora=True, max_loras=len(adapters), dtype="float32")
    else:
        options.update(max_batch_size=max(CONCURRENCY))
    engine = create_engine(kind, str(model_dir), **options)
    t0 = time.perf_counter()
    await engine.start()
    rows = [(f"{kind}: start (s)", f"{time.perf_counter() - t0:.2f}")]
    try:
        prompt = engine.tokenize(
            engine.render_chat([{"role": "user", "content": "Write a short poem about the sea."}])
        )
        await run_streams(engine, prompt, 2, 8)  # warm-up
        for streams in CONCURRENCY:
            rows.append(
                (
                    f"{kind}: {streams} streams (tok/s)",
                    f"{await run_streams(engine, prompt, streams, tokens):.0f}",
                )
            )
        if kind == "vllm" and adapters:
            for spec in adapters:
                await engine.add_lora(spec)
            await run_streams(engine, prompt, len(adapters), 8, adapters)  # warm-up
            base = await run_streams(engine, prompt, 32, tokens)
            mixed = await run_streams(engine, prompt, 32, tokens, adapters)
            rows.append(("vllm: 32 streams, base only, LoRA on (tok/s)", f"{base:.0f}"))
            rows.append((f"vllm: 32 streams, {len(adapters)} adapters mixed (tok/s)", f"{mixed:.0f}"))
            rows.append(("vllm: mixed / base throughput", f"{mixed / base:.2f}"))
    finally:
        await engine.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per stream")
    parser.add_argument(
        "--engines", nargs="+", default=None, help="transformers and/or vllm (default: all available)"
    )
    args = parser.parse_args()

    from forge_gateway.engines import vllm_available
    from forge_gateway.tiny_model import build_tiny_model

    kinds = args.engines or (["transformers", "vllm"] if vllm_available() else ["transformers"])
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        root = Path(tmp)
        model_dir = build_tiny_model(root / "tiny")
        adapters = make_adapters(model_dir, root, 4) if "vllm" in kinds else []
        rows: list[tuple[str, str]] = []
        for kind in kinds:
            rows += asyncio.run(bench(kind, model_dir, adapters, args.tokens))
    width = max(len(name) for name, _ in rows)
    print(
        f"\nTiny Qwen2 model, {args.tokens} output tokens per stream, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print(f"{'measure':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
