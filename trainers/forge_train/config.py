"""Training configuration classes (SDD §5.2), as msgspec Structs that reject unknown fields.

``BaseTrainingConfig`` holds what every method shares; each method's config extends it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct, field

from forge_sdk.config import env_layer, load_layered, read_config_file
from forge_sdk.experts import check_keywords

__all__ = [
    "BaseTrainingConfig",
    "DPOConfig",
    "LoraConfig",
    "ORPOConfig",
    "PretrainConfig",
    "SFTConfig",
    "build_config",
    "env_overrides",
    "read_config_file",
]


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
    learning_rate: Annotated[float, Meta(gt=0)] | None = None
    """Peak learning rate (None: 2e-4 for a LoRA adapter, 2e-5 for full fine-tuning)."""
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
    logging_steps: Annotated[int, Meta(ge=1)] | None = None
    """Log metrics every N steps (None: about 20 points a run, every ``ceil(steps / 20)``, so a
    16-step run logs every step and ``loss.png`` shows a curve; plus the first step)."""
    resume: bool = False
    """Continue from the latest checkpoint in ``output_dir``."""
    register: str | None = None
    """After training, add the adapter to the expert registry under this name."""
    registry_path: str | None = None
    """Expert registry file (default: ``$FORGE_REGISTRY`` or ``./experts.json``)."""


class _MethodConfig(BaseTrainingConfig, kw_only=True):
    """Settings the built-in methods (sft, pretrain, dpo, orpo) share beyond the base."""

    max_samples: Annotated[int, Meta(ge=1)] | None = None
    """Use only the first N records of the dataset (None: all)."""
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    """Learning-rate schedule."""
    warmup_ratio: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.0
    """Fraction of the steps spent warming the learning rate up."""
    save_total_limit: Annotated[int, Meta(ge=1)] | None = None
    """Keep at most this many checkpoints (None: all for LoRA; 2 for full fine-tuning, whose
    checkpoints are whole models plus optimizer state)."""
    specialization: str = "general"
    """Domain label written to the registry entry when ``register`` is set."""
    keywords: list[str] = field(default_factory=list)
    """Routing keywords written to the registry entry (the keyword classifier matches them): at
    most 512, each 1-64 printable characters (checked before training, not after)."""

    def __post_init__(self) -> None:
        check_keywords(self.keywords)

    priority: int = 0
    """Registry priority of the entry: higher wins when several experts match a query."""


class SFTConfig(_MethodConfig, kw_only=True):
    """Supervised fine-tuning on chat data (SDD §5.2 ``SFTConfig``)."""

    packing: bool = False
    """Pack several short examples into each ``max_seq_length`` window."""
    assistant_only_loss: bool = True
    """Learn from the assistant turns only (prompt, system and user tokens get label -100), on
    any chat template; False: every token of the rendered conversation."""
    eval_dataset_path: str | None = None
    """Held-out chat data (same formats as ``dataset_path``) scored during training: its loss is
    logged as ``eval_loss`` and drawn beside the training loss in ``loss.png``."""
    eval_steps: Annotated[int, Meta(ge=1)] | None = None
    """Score ``eval_dataset_path`` every N steps (None: about 10 times a run, every
    ``ceil(steps / 10)``, and at the last step)."""


class PretrainConfig(_MethodConfig, kw_only=True):
    """Continued pre-training on raw text (SDD §5.2 ``PretrainConfig``)."""

    packing: bool = True
    """Pack text into full ``max_seq_length`` windows (the usual choice for raw text)."""
    text_field: str = "text"
    """Column holding the text in jsonl/json/csv/parquet data."""


class DPOConfig(_MethodConfig, kw_only=True):
    """Direct preference optimisation (SDD §5.2 ``DPOConfig``)."""

    learning_rate: Annotated[float, Meta(gt=0)] = 5e-6
    """Peak learning rate (DPO wants a smaller one than SFT)."""
    beta: Annotated[float, Meta(gt=0)] = 0.1
    """Strength of the KL penalty towards the reference model."""
    loss_type: Literal[
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "aot",
        "aot_unpaired",
        "apo_zero",
        "apo_down",
        "discopop",
        "sigmoid_norm",
    ] = "sigmoid"
    """DPO loss variant (TRL's names)."""
    ref_model: str | None = None
    """Reference model (None: the base itself; with LoRA, the base with the adapter disabled)."""


class ORPOConfig(_MethodConfig, kw_only=True):
    """Odds-ratio preference optimisation: SFT and preference in one pass, no reference model."""

    learning_rate: Annotated[float, Meta(gt=0)] = 8e-6
    """Peak learning rate."""
    beta: Annotated[float, Meta(gt=0)] = 0.1
    """Weight of the odds-ratio term (the paper's lambda)."""


ENV_PREFIX = "FORGE_TRAIN_"

C = TypeVar("C", bound=Struct)


def env_overrides(cls: type[Struct], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Settings from ``FORGE_TRAIN_<FIELD>`` variables (``FORGE_TRAIN_LEARNING_RATE``), and
    ``FORGE_TRAIN_<TABLE>_<FIELD>`` for nested tables (``FORGE_TRAIN_LORA_R``): the SDK's rules
    (:func:`forge_sdk.config.env_layer`), the same as the gateway's ``FORGE_*``."""
    tables = [
        f.name
        for f in msgspec.structs.fields(cls)
        if isinstance(f.type, type) and issubclass(f.type, msgspec.Struct)
    ]
    return env_layer(os.environ if environ is None else environ, ENV_PREFIX, cls.__struct_fields__, tables)


def build_config(
    cls: type[C],
    *,
    file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    use_env: bool = True,
) -> C:
    """Build a config from a file, ``FORGE_TRAIN_*`` env vars and explicit overrides (in that order).

    Args:
        cls: the config class (e.g. :class:`SFTConfig`).
        file: optional YAML or TOML file.
        overrides: settings that win over everything else (CLI flags); nested dicts merge.
        use_env: read ``FORGE_TRAIN_<FIELD>`` variables.

    Raises:
        ConfigurationError: one line naming the bad field (and the file, if any).
    """
    return load_layered(cls, file=file, env=env_overrides(cls) if use_env else None, overrides=overrides)
