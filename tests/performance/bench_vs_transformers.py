"""Section 2 of ``bench_vs_vllm_server.py``: the gateway's transformers engine vs plain transformers.

In one process, on the same model and prompts (chat-templated, greedy, exactly ``--max-tokens``
new tokens each), float32 on CPU, ``torch`` threads = ``--threads``:

* ``forge TransformersEngine``: ``--requests`` streams, ``c`` at a time (continuous batching,
  ``max_batch_size`` 32); TTFT is the time to the first streamed token.
* ``transformers generate``: static batches of ``c`` left-padded prompts, one after the other
  (``min_new_tokens`` stands in for ``ignore_eos``); no streaming, so no TTFT.
* ``transformers generate_batch``: transformers 5's continuous batching with
  ``max_requests_per_batch = c``; TTFT from its per-token timestamps.

Run it alone: ``python tests/performance/bench_vs_transformers.py --model DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.performance.bench_vs_vllm_server import TOPICS, Level, Row, print_table


def _prompts(tok: object, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": f"Request {i}: tell me about {TOPICS[i % len(TOPICS)]}."}]
        out.append(
            list(
                tok.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        )  # type: ignore[attr-defined]
    return out


async def _forge(engine: object, prompts: list[list[int]], conc: int, max_tokens: int) -> Level:
    from forge_gateway.engines import EngineRequest, SamplingOptions

    sem = asyncio.Semaphore(conc)

    async def one(i: int, prompt: list[int]) -> tuple[float, int]:
        async with sem:
            opts = SamplingOptions(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
            req = EngineRequest(f"tf-{time.monotonic_ns()}-{i}", prompt, opts)
            t0 = time.perf_counter()
            ttft, n = math.nan, 0
            async for out in engine.generate(req):  # type: ignore[attr-defined]
                if math.isnan(ttft) and out.token_ids:
                    ttft = time.perf_counter() - t0
                n = out.completion_tokens
            return ttft, n

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - t0
    assert all(n == max_tokens for _, n in results), [n for _, n in results]
    return Level(sum(n for _, n in results) / wall, 1000 * statistics.median(t for t, _ in results))


def _generate(model: object, tok: object, prompts: list[list[int]], conc: int, max_tokens: int) -> Level:
    import torch

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id  # type: ignore[attr-defined]
    total = 0
    t0 = time.perf_counter()
    for start in range(0, len(prompts), conc):
        chunk = prompts[start : start + conc]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(  # type: ignore[attr-defined]
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        total += (out.shape[1] - width) * len(chunk)
    return Level(total / (time.perf_counter() - t0), math.nan)


def _generate_batch(model: object, prompts: list[list[int]], conc: int, max_tokens: int) -> Level:
    from transformers import ContinuousBatchingConfig, GenerationConfig

    gen = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    # Sized by hand: left to itself on CPU it sizes the KV cache from free host memory.
    blocks = 4 + 2 * len(prompts)  # 256-token pages: a prompt plus 64 tokens fits in one or two
    cb = ContinuousBatchingConfig(max_requests_per_batch=conc, num_blocks=blocks, max_batch_tokens=2048)
    t0 = time.perf_counter()
    outs = model.generate_batch(  # type: ignore[attr-defined]
        inputs=prompts,
        generation_config=gen,
        continuous_batching_config=cb,
        record_timestamps=True,
        warmup=False,
    )
    wall = time.perf_counter() - t0
    counts = [len(o.generated_tokens) for o in outs.values()]
    assert all(n == max_tokens for n in counts), counts
    ttfts = [o.timestamps[0] - o.created_time for o in outs.values() if o.timestamps]
    return Level(sum(counts) / wall, 1000 * statistics.median(ttfts) if ttfts else math.nan)


def run_transformers_section(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forge_gateway.engines import create_engine

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    engine = create_engine("transformers", args.model, max_batch_size=32, dtype="float32", max_model_len=2048)
    names = [
        "forge TransformersEngine",
        "transformers generate (static batches)",
        "transformers generate_batch",
    ]
    rows = [Row(names[0]), Row(names[1], names[0]), Row(names[2], names[0])]
    by_name = {r.name: r for r in rows}
    loop = asyncio.new_event_loop()
    loop.run_until_complete(engine.start())
    try:
        # Warm every path once (first-call costs are not throughput).
        warm = _prompts(tok, 2)
        loop.run_until_complete(_forge(engine, warm, 2, 4))
        _generate(model, tok, warm, 2, 4)
        _generate_batch(model, warm, 2, 4)
        for rnd in range(args.rounds):
            for conc in args.concurrency:
                prompts = _prompts(tok, args.single_requests if conc == 1 else args.requests)
                order = names if rnd % 2 == 0 else list(reversed(names))
                for name in order:
                    if name == names[0]:
                        level = loop.run_until_complete(_forge(engine, prompts, conc, args.max_tokens))
                    elif name == names[1]:
                        level = _generate(model, tok, prompts, conc, args.max_tokens)
                    else:
                        level = _generate_batch(model, prompts, conc, args.max_tokens)
                    by_name[name].runs.setdefault(conc, []).append(level)
                    print(
                        f"#   {name} @{conc}: {level.tok_s:.1f} tok/s, TTFT p50 {level.ttft_p50_ms:.0f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        loop.run_until_complete(engine.stop())
        loop.close()
    print(
        f"\ntransformers engine vs plain transformers: {Path(args.model).name}, float32, greedy, "
        f"{args.requests} requests x {args.max_tokens} tokens per level ({args.single_requests} at 1 stream), "
        f"torch threads {args.threads}; ratios: plain transformers / forge, same round; load avg {os.getloadavg()[0]:.2f}"
    )
    # Ratios read "the plain library's speed relative to forge's": below 1 means forge is faster.
    print_table(
        "transformers: tok/s and TTFT p50 (generate has no TTFT: not streamed)", rows, args.concurrency
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("FORGE_BENCH_MODEL"))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--requests", type=int, default=48)
    p.add_argument("--single-requests", type=int, default=8)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if not args.model:
        p.error("give --model DIR (or FORGE_BENCH_MODEL)")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    run_transformers_section(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
