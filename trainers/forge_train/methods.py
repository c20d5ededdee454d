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

from forge_sdk import TrainingMethod, TrainingResult, hookimpl
from forge_train.config import (
    BaseTrainingConfig,
    DPOConfig,
    ORPOConfig,
    PretrainConfig,
    SFTConfig,
)
from forge_train.flags import COMMON_FLAGS, Flag, add_flags, config_from_args

__all__ = ["DPOMethod", "ORPOMethod", "PretrainMethod", "SFTMethod", "register_training_methods"]


_PACKING = "pack several examples into each --max-length window"


class _CoreMethod(TrainingMethod):
    """Shared flag handling of the built-in methods."""

    config_class: ClassVar[type[BaseTrainingConfig]]
    train_function: ClassVar[str]
    example: ClassVar[str]
    extra_flags: ClassVar[list[Flag]] = []

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
        add_flags(parser, cls.config_class, [*COMMON_FLAGS, *cls.extra_flags])

    @classmethod
    def build_config(cls, args: argparse.Namespace) -> BaseTrainingConfig:
        """The config from ``--config``, env and the flags given (raises ConfigurationError)."""
        return config_from_args(cls.config_class, args)

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
    extra_flags: ClassVar[list[Flag]] = [
        Flag("--packing", "packing", _PACKING, action=argparse.BooleanOptionalAction, group="method"),
        Flag(
            "--assistant-only-loss",
            "assistant_only_loss",
            "learn from assistant turns only, on any chat template (--no-assistant-only-loss: every token)",
            action=argparse.BooleanOptionalAction,
            group="method",
        ),
        Flag(
            "--eval-dataset",
            "eval_dataset_path",
            "held-out chat data scored during training (eval_loss, drawn in loss.png)",
            metavar="PATH|ID",
            group="model and data",
        ),
        Flag(
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
    extra_flags: ClassVar[list[Flag]] = [
        Flag("--packing", "packing", _PACKING, action=argparse.BooleanOptionalAction, group="method"),
        Flag("--text-field", "text_field", "text column of record data", metavar="NAME", group="method"),
    ]


class DPOMethod(_CoreMethod):
    """``forge-train dpo``: direct preference optimisation."""

    name = "dpo"
    help = "Direct preference optimisation on prompt/chosen/rejected pairs with TRL's DPOTrainer"
    config_class = DPOConfig
    train_function = "train_dpo"
    example = "forge-train dpo --model out/code-merged --dataset prefs.jsonl --output out/code-dpo --beta 0.1"
    extra_flags: ClassVar[list[Flag]] = [
        Flag(
            "--beta", "beta", "strength of the pull towards the reference model", float, "B", group="method"
        ),
        Flag(
            "--loss-type",
            "loss_type",
            "DPO loss variant: sigmoid, ipo, hinge, robust, ...",
            metavar="NAME",
            group="method",
        ),
        Flag(
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
    extra_flags: ClassVar[list[Flag]] = [
        Flag("--beta", "beta", "weight of the odds-ratio term", float, "B", group="method"),
    ]


@hookimpl
def register_training_methods(register: Callable[[Any], None]) -> None:
    """Register sft, pretrain, dpo, orpo and eval."""
    from forge_train.evaluate import EvalMethod

    for method in (SFTMethod, PretrainMethod, DPOMethod, ORPOMethod, EvalMethod):
        register(method)
