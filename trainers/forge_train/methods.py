"""The built-in ``forge-train`` methods: sft, pretrain, dpo and orpo, registered as a forge plugin.

Each is a :class:`forge_sdk.TrainingMethod`; its flags map onto its config class, so a setting
comes from the ``--config`` file, then ``FORGE_TRAIN_<FIELD>`` env vars, then flags (last wins).
This module stays light: torch, transformers and TRL load only when a method runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

from forge_sdk import TrainingMethod, TrainingResult, hookimpl
from forge_train.config import (
    BaseTrainingConfig,
    DPOConfig,
    LoraConfig,
    ORPOConfig,
    PretrainConfig,
    SFTConfig,
    build_config,
)

__all__ = ["DPOMethod", "ORPOMethod", "PretrainMethod", "SFTMethod", "register_training_methods"]


def _keyword_list(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


class _Flag(msgspec.Struct, frozen=True):
    flag: str
    path: str
    """Dotted config field the flag sets (``lora.r``)."""
    help: str
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    action: str | type[argparse.Action] | None = None
    const: Any = None
    group: str = "training"


_COMMON: list[_Flag] = [
    _Flag(
        "--model",
        "model_name",
        "base model: a local folder or a hub id",
        metavar="PATH|ID",
        group="model and data",
    ),
    _Flag(
        "--dataset",
        "dataset_path",
        "training data: .jsonl/.json/.csv/.parquet, a saved datasets folder, or a hub id",
        metavar="PATH|ID",
        group="model and data",
    ),
    _Flag(
        "--output",
        "output_dir",
        "folder for the adapter/model, checkpoints, manifest.json, metrics.jsonl, loss.png",
        metavar="DIR",
        group="model and data",
    ),
    _Flag("--max-samples", "max_samples", "use only the first N records", int, "N", group="model and data"),
    _Flag(
        "--epochs", "num_train_epochs", "passes over the data (ignored when --max-steps is set)", float, "N"
    ),
    _Flag("--max-steps", "max_steps", "stop after N optimizer steps (-1: use --epochs)", int, "N"),
    _Flag(
        "--batch-size",
        "batch_size",
        "per-device batch size (halved automatically on CUDA out-of-memory)",
        int,
        "N",
    ),
    _Flag("--grad-accum", "gradient_accumulation_steps", "micro-batches per optimizer step", int, "N"),
    _Flag("--lr", "learning_rate", "peak learning rate (default: 2e-4 LoRA, 2e-5 with --full)", float, "LR"),
    _Flag(
        "--lr-scheduler", "lr_scheduler_type", "linear, cosine, constant or constant_with_warmup", str, "NAME"
    ),
    _Flag(
        "--warmup-ratio", "warmup_ratio", "fraction of steps spent warming up the learning rate", float, "R"
    ),
    _Flag(
        "--max-length", "max_seq_length", "longest sequence in tokens (longer ones are truncated)", int, "N"
    ),
    _Flag("--seed", "seed", "random seed for init and data order", int, "N"),
    _Flag("--lora-r", "lora.r", "LoRA rank", int, "R", group="LoRA / QLoRA"),
    _Flag(
        "--lora-alpha",
        "lora.lora_alpha",
        "LoRA scaling numerator (update scaled by alpha/r)",
        int,
        "A",
        group="LoRA / QLoRA",
    ),
    _Flag(
        "--lora-dropout", "lora.lora_dropout", "dropout on the LoRA input", float, "P", group="LoRA / QLoRA"
    ),
    _Flag(
        "--full",
        "use_lora",
        "full fine-tuning instead of a LoRA adapter (defaults: --lr 2e-5, --save-total-limit 2)",
        action="store_const",
        const=False,
        group="LoRA / QLoRA",
    ),
    _Flag(
        "--load-in-4bit",
        "load_in_4bit",
        "QLoRA: load the base in 4-bit NF4 with bitsandbytes (CPU or GPU)",
        action="store_const",
        const=True,
        group="LoRA / QLoRA",
    ),
    _Flag(
        "--save-steps",
        "save_steps",
        "save a resumable checkpoint every N steps",
        int,
        "N",
        group="checkpoints",
    ),
    _Flag(
        "--save-total-limit",
        "save_total_limit",
        "keep only the newest N checkpoints",
        int,
        "N",
        group="checkpoints",
    ),
    _Flag(
        "--logging-steps",
        "logging_steps",
        "log metrics every N steps (default: ceil(steps / 20), about 20 points a run)",
        int,
        "N",
        group="checkpoints",
    ),
    _Flag(
        "--resume",
        "resume",
        "continue from the latest checkpoint in --output",
        action="store_const",
        const=True,
        group="checkpoints",
    ),
    _Flag(
        "--register",
        "register",
        "add the result to the expert registry under NAME",
        metavar="NAME",
        group="expert registry",
    ),
    _Flag(
        "--registry",
        "registry_path",
        "registry file (default: $FORGE_REGISTRY or ./experts.json)",
        metavar="FILE",
        group="expert registry",
    ),
    _Flag(
        "--specialization",
        "specialization",
        "domain label of the registered expert (code, math, ...)",
        metavar="LABEL",
        group="expert registry",
    ),
    _Flag(
        "--keywords",
        "keywords",
        "comma-separated routing keywords of the registered expert",
        _keyword_list,
        "K1,K2",
        group="expert registry",
    ),
    _Flag(
        "--priority",
        "priority",
        "registry priority: the highest wins among experts of one specialization",
        int,
        "N",
        group="expert registry",
    ),
]

_PACKING = "pack several examples into each --max-length window"


def _default(cls: type[BaseTrainingConfig], path: str) -> Any:
    owner: type[msgspec.Struct] = cls
    *parents, leaf = path.split(".")
    for _ in parents:
        owner = LoraConfig
    for info in msgspec.structs.fields(owner):
        if info.name == leaf:
            if info.default is not msgspec.NODEFAULT:
                return info.default
            if info.default_factory is not msgspec.NODEFAULT:
                return info.default_factory()
            return None
    return None


def _set(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


class _CoreMethod(TrainingMethod):
    """Shared flag handling of the built-in methods."""

    config_class: ClassVar[type[BaseTrainingConfig]]
    train_function: ClassVar[str]
    example: ClassVar[str]
    extra_flags: ClassVar[list[_Flag]] = []

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add ``--config`` and one flag per config field (defaults shown come from the config class)."""
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.description = f"{cls.help}.\n\nexample:\n  {cls.example}"
        parser.epilog = (
            "Settings come from --config FILE (YAML or TOML, field names of "
            f"{cls.config_class.__name__}), then FORGE_TRAIN_<FIELD> env vars, then these flags. "
            "Outputs: the adapter or model, manifest.json, metrics.jsonl, loss.png and checkpoint-N/ folders."
        )
        parser.add_argument(
            "--config",
            metavar="FILE",
            default=argparse.SUPPRESS,
            help="YAML or TOML file of settings; flags override it",
        )
        groups: dict[str, argparse._ArgumentGroup] = {}
        for spec in [*_COMMON, *cls.extra_flags]:
            group = groups.get(spec.group) or groups.setdefault(
                spec.group, parser.add_argument_group(spec.group)
            )
            default = _default(cls.config_class, spec.path)
            text = spec.help
            if spec.action is None or spec.action is argparse.BooleanOptionalAction:
                text += f" (default: {default})" if default not in (None, "") else ""
            # argparse %-formats help strings; "{% generation %}" must not reach it raw.
            kwargs: dict[str, Any] = {
                "dest": spec.path,
                "default": argparse.SUPPRESS,
                "help": text.replace("%", "%%"),
            }
            if spec.action is not None:
                kwargs["action"] = spec.action
                if spec.action == "store_const":
                    kwargs["const"] = spec.const
            else:
                kwargs["type"] = spec.type or str
                kwargs["metavar"] = spec.metavar
            group.add_argument(spec.flag, **kwargs)

    @classmethod
    def build_config(cls, args: argparse.Namespace) -> BaseTrainingConfig:
        """The config from ``--config``, env and the flags given (raises ConfigurationError)."""
        overrides: dict[str, Any] = {}
        for key, value in vars(args).items():
            if "." in key or key in cls.config_class.__struct_fields__:
                _set(overrides, key, value)
        return build_config(cls.config_class, file=getattr(args, "config", None), overrides=overrides)

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Train and return where the result is and its final metrics."""
        config = self.build_config(args)
        train = getattr(importlib.import_module("forge_train.train"), self.train_function)
        trainer = train(config)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        metrics: dict[str, Any] = {"global_step": trainer.state.global_step}
        if losses:
            metrics["final_loss"] = losses[-1]
        return TrainingResult(output_dir=config.output_dir, metrics=metrics)


class SFTMethod(_CoreMethod):
    """``forge-train sft``: supervised fine-tuning on chat data."""

    name = "sft"
    help = "Supervised fine-tuning (LoRA, QLoRA or full) on chat data with TRL's SFTTrainer"
    config_class = SFTConfig
    train_function = "train_sft"
    example = "forge-train sft --model Qwen/Qwen2.5-0.5B --dataset chat.jsonl --output out/code --epochs 3"
    extra_flags: ClassVar[list[_Flag]] = [
        _Flag("--packing", "packing", _PACKING, action=argparse.BooleanOptionalAction, group="method"),
        _Flag(
            "--assistant-only-loss",
            "assistant_only_loss",
            "learn from assistant turns only, on any chat template (--no-assistant-only-loss: every token)",
            action=argparse.BooleanOptionalAction,
            group="method",
        ),
        _Flag(
            "--eval-dataset",
            "eval_dataset_path",
            "held-out chat data scored during training (eval_loss, drawn in loss.png)",
            metavar="PATH|ID",
            group="model and data",
        ),
        _Flag(
            "--eval-steps",
            "eval_steps",
            "score --eval-dataset every N steps (default: ceil(steps / 10), and at the end)",
            int,
            "N",
            group="model and data",
        ),
    ]


class PretrainMethod(_CoreMethod):
    """``forge-train pretrain``: continued pre-training on raw text."""

    name = "pretrain"
    help = "Continued pre-training on raw text (.txt, or records with a text column)"
    config_class = PretrainConfig
    train_function = "train_pretrain"
    example = "forge-train pretrain --model Qwen/Qwen2.5-0.5B --dataset corpus.txt --output out/domain"
    extra_flags: ClassVar[list[_Flag]] = [
        _Flag("--packing", "packing", _PACKING, action=argparse.BooleanOptionalAction, group="method"),
        _Flag("--text-field", "text_field", "text column of record data", metavar="NAME", group="method"),
    ]


class DPOMethod(_CoreMethod):
    """``forge-train dpo``: direct preference optimisation."""

    name = "dpo"
    help = "Direct preference optimisation on prompt/chosen/rejected pairs with TRL's DPOTrainer"
    config_class = DPOConfig
    train_function = "train_dpo"
    example = "forge-train dpo --model out/code-merged --dataset prefs.jsonl --output out/code-dpo --beta 0.1"
    extra_flags: ClassVar[list[_Flag]] = [
        _Flag(
            "--beta", "beta", "strength of the pull towards the reference model", float, "B", group="method"
        ),
        _Flag(
            "--loss-type",
            "loss_type",
            "DPO loss variant: sigmoid, ipo, hinge, robust, ...",
            metavar="NAME",
            group="method",
        ),
        _Flag(
            "--ref-model",
            "ref_model",
            "reference model (default: the base itself)",
            metavar="PATH|ID",
            group="method",
        ),
    ]


class ORPOMethod(_CoreMethod):
    """``forge-train orpo``: odds-ratio preference optimisation."""

    name = "orpo"
    help = "Odds-ratio preference optimisation (SFT + preference in one pass, no reference model)"
    config_class = ORPOConfig
    train_function = "train_orpo"
    example = "forge-train orpo --model Qwen/Qwen2.5-0.5B --dataset prefs.jsonl --output out/orpo"
    extra_flags: ClassVar[list[_Flag]] = [
        _Flag("--beta", "beta", "weight of the odds-ratio term", float, "B", group="method"),
    ]


@hookimpl
def register_training_methods(register: Callable[[Any], None]) -> None:
    """Register sft, pretrain, dpo, orpo and eval."""
    from forge_train.evaluate import EvalMethod

    for method in (SFTMethod, PretrainMethod, DPOMethod, ORPOMethod, EvalMethod):
        register(method)
