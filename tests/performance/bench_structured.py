"""Cost of constrained decoding: output tokens/s with a ``json_schema`` constraint vs free text,
at 1 and 8 concurrent streams, on each engine (SmolLM2-135M-Instruct).

Run: ``python tests/performance/bench_structured.py [--tokens 64] [--engines transformers vllm]``.
The model comes from ``forge-gateway models pull smollm2-135m-instruct`` (cached). Both modes are
greedy with the same chat prompt and ``max_tokens``; the free run ignores EOS so it always makes
``--tokens`` tokens, the constrained run stops where the schema ends it, so the table shows tokens
made and tokens/s (a warm-up request first, so xgrammar's one-off schema compile is not counted).
Prints a table; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

STREAMS = (1, 8)
SCHEMA = {
    "type": "object",
    "properties": {"cities": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 40}},
    "required": ["cities"],
}
MESSAGES = [{"role": "user", "content": "List as many French cities as you can, as JSON."}]


def model_dir() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "models", "pull", "smollm2-135m-instruct"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


async def run(engine, prompt: list[int], streams: int, tokens: int, constrained: bool) -> tuple[int, float]:
    """``streams`` concurrent requests; (completion tokens, seconds)."""
    from forge_gateway.engines import EngineRequest, SamplingOptions
    from forge_gateway.engines.base import Constraint

    constraint = Constraint("json", SCHEMA) if constrained else None

    async def one(i: int) -> int:
        opts = SamplingOptions(
            max_tokens=tokens, temperature=0.0, ignore_eos=not constrained, constraint=constraint
        )
        req = EngineRequest(f"bench-{time.monotonic_ns()}-{i}", prompt, opts)
        n = 0
        async for out in engine.generate(req):
            n = out.completion_tokens
        return n

    start = time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    return sum(counts), time.perf_counter() - start


async def bench(kind: str, path: str, tokens: int) -> list[tuple[str, int, str, int, float]]:
    from forge_gateway.engines import create_engine

    engine = create_engine(kind, path, max_model_len=1024, enable_lora=False)
    await engine.start()
    rows = []
    try:
        prompt = engine.tokenize(engine.render_chat(MESSAGES))
        for constrained in (False, True):
            await run(engine, prompt, 1, 4, constrained)  # warm-up (and the schema compile)
        for streams in STREAMS:
            for constrained in (False, True):
                made, secs = await run(engine, prompt, streams, tokens, constrained)
                rows.append((kind, streams, "json_schema" if constrained else "free text", made, made / secs))
    finally:
        await engine.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"])
    args = parser.parse_args()
    path = model_dir()
    rows = []
    for kind in args.engines:
        rows += asyncio.run(bench(kind, path, args.tokens))
    print(f"{'engine':<13}{'streams':>8}  {'mode':<12}{'tokens':>8}{'tok/s':>9}{'vs free':>9}")
    free = {(r[0], r[1]): r[4] for r in rows if r[2] == "free text"}
    for kind, streams, mode, made, rate in rows:
        ratio = rate / free[(kind, streams)]
        print(f"{kind:<13}{streams:>8}  {mode:<12}{made:>8}{rate:>9.1f}{ratio:>9.2f}")


if __name__ == "__main__":
    main()
