"""Engine configurations side by side: parity with transformers float32, and speed.

For each configuration (engine x dtype x compiled/eager x LoRA on/off) one engine is started in its
own process (vLLM holds process-wide state), checked with ``forge_gateway.parity`` against
transformers' float32 ``generate`` on the same checkpoint (computed once), then timed: greedy
streams of ``--max-tokens`` tokens (``ignore_eos``) at 1 and 8 concurrent streams, after a short
warm-up. ``--rounds`` > 1 repeats the whole list in turn (A, B, A, B ...) so every configuration
sees the same shared, noisy machine; figures are medians over rounds, with the load average.

    python tests/performance/bench_engine_defaults.py [--model smollm2-135m-instruct]
        [--configs vllm:bfloat16:default,vllm:float32:default,...] [--rounds 1] [--no-speed]

A configuration is ``ENGINE:DTYPE:MODE[:lora]``: ENGINE ``vllm`` or ``transformers``; DTYPE as
``--dtype`` (``auto`` is the engine's default); MODE ``default`` (vLLM's choice: compiled, except
with LoRA on CPU) or ``eager``; ``:lora`` starts the engine with LoRA enabled (base requests only).
Asserts nothing about speed; exits non-zero when a worker fails.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ALL = [
    "vllm:bfloat16:default",
    "vllm:float32:default",
    "vllm:bfloat16:eager",
    "vllm:float32:eager",
    "vllm:bfloat16:default:lora",
    "vllm:float32:default:lora",
    "vllm:auto:default",
    "transformers:auto:default",
]


def _worker(spec: str, model: str, reference_file: str, max_tokens: int, speed: bool) -> dict[str, object]:
    from forge_gateway.cli_check import describe
    from forge_gateway.engines import create_engine
    from forge_gateway.engines.base import EngineRequest, SamplingOptions
    from forge_gateway.parity import Reference, run_parity

    engine_kind, dtype, mode, *rest = spec.split(":")
    reference = Reference(**json.loads(Path(reference_file).read_text()))
    options: dict[str, object] = {"dtype": dtype, "enable_lora": rest == ["lora"], "max_model_len": 1024}
    if engine_kind == "vllm" and mode == "eager":
        options["enforce_eager"] = True
    engine = create_engine(engine_kind, model, **options)  # type: ignore[arg-type]

    async def run() -> dict[str, object]:
        started = time.monotonic()
        await engine.start()
        out: dict[str, object] = {"spec": spec, "start_s": time.monotonic() - started}
        try:
            settings = engine.settings()
            report = await run_parity(engine, reference, describe(settings))
            out.update(
                configuration=report.configuration,
                passed=report.passed,
                exact=report.exact,
                drift=max(p.drift for p in report.prompts),
                table=report.table(),
            )
            if speed:

                async def one(i: int, n: int) -> int:
                    request = EngineRequest(
                        request_id=f"bench-{i}-{time.monotonic_ns()}",
                        prompt_token_ids=reference.prompt_ids[i % len(reference.prompt_ids)],
                        sampling=SamplingOptions(max_tokens=n, temperature=0.0, ignore_eos=True),
                    )
                    return sum([len(chunk.token_ids) async for chunk in engine.generate(request)])

                await asyncio.gather(*(one(i, 8) for i in range(8)))  # warm-up
                for streams in (1, 8):
                    t0 = time.monotonic()
                    tokens = sum(await asyncio.gather(*(one(i, max_tokens) for i in range(streams))))
                    out[f"tok_s_{streams}"] = tokens / (time.monotonic() - t0)
                out["load"] = os.getloadavg()[0]
        finally:
            await engine.stop()
        return out

    return asyncio.run(run())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="folder, catalogue name or hub id")
    ap.add_argument("--configs", default=",".join(ALL), help="comma-separated ENGINE:DTYPE:MODE[:lora]")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--no-speed", dest="speed", action="store_false")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--reference", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from forge_sdk.models import resolve_model

    model = resolve_model(args.model)
    if args.worker:
        print(
            "RESULT " + json.dumps(_worker(args.worker, model, args.reference, args.max_tokens, args.speed))
        )
        return 0

    from forge_gateway.parity import reference_generations

    specs = [s.strip() for s in args.configs.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        reference_file = Path(tmp) / "reference.json"
        reference_file.write_text(json.dumps(dataclasses.asdict(reference_generations(model))))
        results: dict[str, list[dict[str, object]]] = {spec: [] for spec in specs}
        for rnd in range(args.rounds):
            for spec in specs:
                cmd = [sys.executable, __file__, "--model", model, "--worker", spec]
                cmd += ["--reference", str(reference_file), "--max-tokens", str(args.max_tokens)]
                cmd += [] if args.speed else ["--no-speed"]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    print(
                        f"{spec}: worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr
                    )
                    return 1
                result = json.loads(lines[-1][len("RESULT ") :])
                results[spec].append(result)
                print(f"[round {rnd + 1}] {result['table']}\n", flush=True)

    def med(rows: list[dict[str, object]], key: str) -> str:
        values = [float(r[key]) for r in rows if key in r]  # type: ignore[arg-type]
        return f"{statistics.median(values):.1f}" if values else "-"

    print(
        f"model {args.model}; medians over {args.rounds} round(s); tok/s of {args.max_tokens}-token greedy streams"
    )
    print("| configuration | parity | identical | max drift | start s | tok/s @1 | tok/s @8 | load |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for rows in results.values():
        first = rows[0]
        verdict = "pass" if all(r["passed"] for r in rows) else "FAIL"
        print(
            f"| {first['configuration']} | {verdict} | {first['exact']}/8 | {float(first['drift']):.1e} | "  # type: ignore[arg-type]
            f"{med(rows, 'start_s')} | {med(rows, 'tok_s_1')} | {med(rows, 'tok_s_8')} | {med(rows, 'load')} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
