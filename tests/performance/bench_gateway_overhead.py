"""Gateway overhead: a 1-token chat completion through HTTP vs the same call on the engine in-process.

Prints p50/p99 latency and requests/s at concurrency 1 and 32 for each path, per engine. The HTTP
side is driven by ``wrk`` (``apt-get install -y wrk``); the in-process side by asyncio tasks.

    python tests/performance/bench_gateway_overhead.py [--engine vllm|transformers|both] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from forge_gateway.engines import create_engine
from forge_gateway.engines.base import EngineRequest, SamplingOptions
from forge_gateway.tiny_model import build_tiny_model
from tests.performance.bench_gateway_load import _CHAT_LUA, run_wrk
from tests.support import GatewayProcess

MESSAGES = [{"role": "user", "content": "Say one word."}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(call, total: int, concurrency: int) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - start)

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - begin


async def bench_inprocess(kind: str, model: Path, total: int) -> dict[int, tuple[float, float, float]]:
    engine = create_engine(kind, str(model), max_model_len=256, enable_lora=False)
    await engine.start()
    ids = engine.tokenize(engine.render_chat(MESSAGES))

    async def call(i: int) -> None:
        req = EngineRequest(
            f"r{i}-{time.perf_counter_ns()}", ids, SamplingOptions(max_tokens=1, temperature=0)
        )
        async for _ in engine.generate(req):
            pass

    results = {}
    await drive(call, 20, 4)  # warm-up
    for conc in (1, 32):
        lat, wall = await drive(call, total, conc)
        results[conc] = (pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3, total / wall)
    await engine.stop()
    return results


def bench_http(base: str, seconds: float) -> dict[int, tuple[float, float, float]]:
    """wrk drives the gateway: a Python client would cost more CPU than the gateway itself."""
    results = {}
    run_wrk(f"{base}/v1/chat/completions", 2, 4, {}, _CHAT_LUA)  # warm-up
    for conc in (1, 32):
        r = run_wrk(f"{base}/v1/chat/completions", seconds, conc, {}, _CHAT_LUA)
        if r["errors"]:
            raise RuntimeError(f"{r['errors']} failed requests at concurrency {conc}")
        results[conc] = (r["p50"], r["p99"], r["rps"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["vllm", "transformers", "both"], default="both")
    parser.add_argument("--requests", type=int, default=200, help="in-process requests per cell")
    parser.add_argument("--seconds", type=float, default=5, help="wrk run length per HTTP cell")
    args = parser.parse_args()
    kinds = ["vllm", "transformers"] if args.engine == "both" else [args.engine]
    model = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    rows = []
    for kind in kinds:
        inproc = asyncio.run(bench_inprocess(kind, model, args.requests))
        with GatewayProcess(
            ["--model", str(model), "--served-model-name", "tiny", "--engine", kind, "--max-model-len", "256"]
        ) as gw:
            http = bench_http(gw.base_url, args.seconds)
        for conc in (1, 32):
            for path, res in (("in-process", inproc), ("HTTP gateway", http)):
                p50, p99, rps = res[conc]
                rows.append((kind, path, conc, p50, p99, rps))
            rows.append(
                (
                    kind,
                    "added by gateway",
                    conc,
                    http[conc][0] - inproc[conc][0],
                    http[conc][1] - inproc[conc][1],
                    float("nan"),
                )
            )
    print(
        f"\n1-token chat completion, tiny model; in-process {args.requests} requests, HTTP wrk {args.seconds:g} s per cell"
    )
    print(f"{'engine':<13}{'path':<18}{'conc':>5}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for kind, path, conc, p50, p99, rps in rows:
        print(f"{kind:<13}{path:<18}{conc:>5}{p50:>10.2f}{p99:>10.2f}{rps:>10.1f}")


if __name__ == "__main__":
    main()
