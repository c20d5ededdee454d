"""Training configuration classes (SDD §5.2), as msgspec Structs that reject unknown fields.

``BaseTrainingConfig`` holds what every method shares; each method's config extends it.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct, field

__all__ = ["BaseTrainingConfig", "LoraConfig"]


class LoraConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """LoRA hyper-parameters (SDD §5.2 defaults)."""

    r: Annotated[int, Meta(ge=1)] = 8
    """Rank of the update matrices."""
    lora_alpha: Annotated[int, Meta(ge=1)] = 16
    """Scaling numerator: the update is scaled by ``lora_alpha / r``."""
    lora_dropout: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] | str = "all-linear"
    """Modules to adapt: names, or ``"all-linear"``."""


class BaseTrainingConfig(Struct, forbid_unknown_fields=True, kw_only=True):
    """What every training method shares (SDD §5.2 ``BaseTrainingConfig``)."""

    model_name: str
    """Base model: a local folder or a hub id."""
    output_dir: str
    """Where the adapter/model, checkpoints, manifest and metrics go."""
    dataset_path: str = ""
    """Training data: jsonl/json/csv/parquet file, a saved datasets folder, or a hub id."""
    num_train_epochs: Annotated[float, Meta(gt=0)] = 1.0
    """Passes over the data (ignored when ``max_steps`` > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use epochs)."""
    batch_size: Annotated[int, Meta(ge=1)] = 4
    """Per-device batch size."""
    gradient_accumulation_steps: Annotated[int, Meta(ge=1)] = 1
    """Micro-batches per optimizer step."""
    learning_rate: Annotated[float, Meta(gt=0)] = 2e-4
    """Peak learning rate."""
    max_seq_length: Annotated[int, Meta(ge=8)] = 1024
    """Longest sequence in tokens (TRL's ``max_length``)."""
    seed: int = 42
    """Random seed for data order and init."""
    use_lora: bool = True
    """Train a LoRA adapter (False: full fine-tuning)."""
    load_in_4bit: bool = False
    """QLoRA: load the base in 4-bit NF4 via bitsandbytes."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings (used when ``use_lora``)."""
    save_steps: Annotated[int, Meta(ge=1)] = 100
    """Save a resumable checkpoint every N steps."""
    logging_steps: Annotated[int, Meta(ge=1)] = 10
    """Log metrics every N steps."""
    resume: bool = False
    """Continue from the latest checkpoint in ``output_dir``."""
    register: str | None = None
    """After training, add the adapter to the expert registry under this name."""
    registry_path: str | None = None
    """Expert registry file (default: ``$FORGE_REGISTRY`` or ``./experts.json``)."""
