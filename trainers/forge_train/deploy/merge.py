"""Merge a LoRA adapter into its base model, producing a plain checkpoint any engine can serve."""

from __future__ import annotations

import json
from pathlib import Path

from forge_sdk.errors import ModelError, ModelNotFoundError

__all__ = ["merge_lora_weights"]


def _is_local_dir(path: str) -> bool:
    return Path(path).is_dir()


def merge_lora_weights(base: str | Path, lora: str | Path, output: str | Path) -> str:
    """Fold a PEFT LoRA adapter into its base model and save model and tokenizer.

    The merged weights are ``W + (lora_alpha / r) · B·A`` for every adapted layer
    (PEFT ``merge_and_unload``), so the result generates exactly what base + adapter did,
    without PEFT at inference time.

    Args:
        base: base model folder or hub id the adapter was trained on.
        lora: adapter folder (holding ``adapter_config.json``).
        output: folder to write the merged model and tokenizer to.

    Returns:
        The output folder, as a string.

    Raises:
        ModelNotFoundError: the adapter folder does not exist.
        ModelError: the folder is not a LoRA adapter, or it does not fit the base model.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forge_sdk.models import resolve_model

    base, lora, output = resolve_model(str(base)), Path(lora), Path(output)
    if not lora.is_dir():
        raise ModelNotFoundError(f"adapter folder not found: {lora}")
    adapter_cfg_path = lora / "adapter_config.json"
    if not adapter_cfg_path.is_file():
        raise ModelError(f"{lora} is not a PEFT adapter: it has no adapter_config.json")
    adapter_cfg = json.loads(adapter_cfg_path.read_text())
    if adapter_cfg.get("peft_type", "LORA").upper() != "LORA":
        raise ModelError(f"only LoRA adapters can be merged, {lora} is {adapter_cfg.get('peft_type')}")
    if base.startswith((".", "/")) and not _is_local_dir(base):
        raise ModelNotFoundError(f"base model folder not found: {base}")

    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load base model {base!r}: {exc}") from exc
    try:
        peft_model = PeftModel.from_pretrained(model, str(lora))
    except (RuntimeError, ValueError, KeyError) as exc:
        # A shape mismatch here means the adapter was trained on a different base.
        raise ModelError(f"adapter {lora} does not fit base model {base!r}: {exc}") from exc
    with torch.no_grad():
        merged = peft_model.merge_and_unload()

    output.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output)
    # The adapter folder's tokenizer wins: training may have added tokens or a chat template.
    tok_source = str(lora) if (lora / "tokenizer_config.json").is_file() else base
    AutoTokenizer.from_pretrained(tok_source).save_pretrained(output)
    return str(output)
