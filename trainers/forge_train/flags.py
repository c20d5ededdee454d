"""The flag table of ``forge-train`` commands: each flag names the config field it sets.

Every command (sft, pretrain, dpo, orpo, distill, synth) declares its flags as :class:`Flag`
rows over its config Struct; :func:`add_flags` turns them into argparse options (defaults shown
from the Struct) plus ``--config FILE``, and :func:`config_from_args` builds the config from the
file, ``FORGE_TRAIN_<FIELD>`` env vars and the flags given (last wins), with the SDK's rules.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from forge_train.config import build_config

__all__ = ["COMMON_FLAGS", "Flag", "add_flags", "config_from_args"]

S = TypeVar("S", bound=msgspec.Struct)


def _keyword_list(text: str) -> list[str]:
    return [word.strip() for word in text.split(",") if word.strip()]


class Flag(msgspec.Struct, frozen=True):
    """One command-line flag and the config field it sets."""

    flag: str
    """The option, e.g. ``--lora-r``."""
    path: str
    """Dotted config field the flag sets (``lora.r``)."""
    help: str
    """Help text (the config's default is appended)."""
    type: Callable[[str], Any] | None = None
    """Converter of the flag's value (default ``str``)."""
    metavar: str | None = None
    """Placeholder in the help."""
    action: str | type[argparse.Action] | None = None
    """An argparse action instead of a value (``store_const``, ``BooleanOptionalAction``)."""
    const: Any = None
    """The value ``store_const`` stores."""
    group: str = "training"
    """Help section."""


COMMON_FLAGS: list[Flag] = [
    Flag(
        "--model",
        "model_name",
        "base model: a local folder or a hub id",
        metavar="PATH|ID",
        group="model and data",
    ),
    Flag(
        "--dataset",
        "dataset_path",
        "training data: .jsonl/.json/.csv/.parquet, a saved datasets folder, or a hub id",
        metavar="PATH|ID",
        group="model and data",
    ),
    Flag(
        "--output",
        "output_dir",
        "folder for the adapter/model, checkpoints, manifest.json, metrics.jsonl, loss.png",
        metavar="DIR",
        group="model and data",
    ),
    Flag("--max-samples", "max_samples", "use only the first N records", int, "N", group="model and data"),
    Flag(
        "--epochs", "num_train_epochs", "passes over the data (ignored when --max-steps is set)", float, "N"
    ),
    Flag("--max-steps", "max_steps", "stop after N optimizer steps (-1: use --epochs)", int, "N"),
    Flag(
        "--batch-size",
        "batch_size",
        "per-device batch size (halved automatically on CUDA out-of-memory)",
        int,
        "N",
    ),
    Flag("--grad-accum", "gradient_accumulation_steps", "micro-batches per optimizer step", int, "N"),
    Flag("--lr", "learning_rate", "peak learning rate (default: 2e-4 LoRA, 2e-5 with --full)", float, "LR"),
    Flag(
        "--lr-scheduler", "lr_scheduler_type", "linear, cosine, constant or constant_with_warmup", str, "NAME"
    ),
    Flag(
        "--warmup-ratio", "warmup_ratio", "fraction of steps spent warming up the learning rate", float, "R"
    ),
    Flag(
        "--max-length", "max_seq_length", "longest sequence in tokens (longer ones are truncated)", int, "N"
    ),
    Flag("--seed", "seed", "random seed for init and data order", int, "N"),
    Flag("--lora-r", "lora.r", "LoRA rank", int, "R", group="LoRA / QLoRA"),
    Flag(
        "--lora-alpha",
        "lora.lora_alpha",
        "LoRA scaling numerator (update scaled by alpha/r)",
        int,
        "A",
        group="LoRA / QLoRA",
    ),
    Flag(
        "--lora-dropout", "lora.lora_dropout", "dropout on the LoRA input", float, "P", group="LoRA / QLoRA"
    ),
    Flag(
        "--full",
        "use_lora",
        "full fine-tuning instead of a LoRA adapter (defaults: --lr 2e-5, --save-total-limit 2)",
        action="store_const",
        const=False,
        group="LoRA / QLoRA",
    ),
    Flag(
        "--load-in-4bit",
        "load_in_4bit",
        "QLoRA: load the base in 4-bit NF4 with bitsandbytes (CPU or GPU)",
        action="store_const",
        const=True,
        group="LoRA / QLoRA",
    ),
    Flag(
        "--save-steps",
        "save_steps",
        "save a resumable checkpoint every N steps",
        int,
        "N",
        group="checkpoints",
    ),
    Flag(
        "--save-total-limit",
        "save_total_limit",
        "keep only the newest N checkpoints",
        int,
        "N",
        group="checkpoints",
    ),
    Flag(
        "--logging-steps",
        "logging_steps",
        "log metrics every N steps (default: ceil(steps / 20), about 20 points a run)",
        int,
        "N",
        group="checkpoints",
    ),
    Flag(
        "--resume",
        "resume",
        "continue from the latest checkpoint in --output",
        action="store_const",
        const=True,
        group="checkpoints",
    ),
    Flag(
        "--register",
        "register",
        "add the result to the expert registry under NAME",
        metavar="NAME",
        group="expert registry",
    ),
    Flag(
        "--registry",
        "registry_path",
        "registry file (default: $FORGE_REGISTRY or ./experts.json)",
        metavar="FILE",
        group="expert registry",
    ),
    Flag(
        "--specialization",
        "specialization",
        "domain label of the registered expert (code, math, ...)",
        metavar="LABEL",
        group="expert registry",
    ),
    Flag(
        "--keywords",
        "keywords",
        "comma-separated routing keywords of the registered expert",
        _keyword_list,
        "K1,K2",
        group="expert registry",
    ),
    Flag(
        "--priority",
        "priority",
        "registry priority: the highest wins among experts of one specialization",
        int,
        "N",
        group="expert registry",
    ),
]


def _default(cls: type[msgspec.Struct], path: str) -> Any:
    owner: Any = cls
    *parents, leaf = path.split(".")
    for parent in parents:
        owner = next(f.type for f in msgspec.structs.fields(owner) if f.name == parent)
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


def add_flags(parser: argparse.ArgumentParser, config_class: type[msgspec.Struct], flags: list[Flag]) -> None:
    """Add ``--config`` and one option per :class:`Flag` (defaults shown come from ``config_class``)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="YAML or TOML file of settings; flags override it",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in flags:
        group = groups.get(spec.group) or groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        default = _default(config_class, spec.path)
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


def config_from_args(config_class: type[S], args: argparse.Namespace) -> S:
    """The config from ``--config``, env and the flags given (raises ConfigurationError)."""
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if "." in key or key in config_class.__struct_fields__:
            _set(overrides, key, value)
    return build_config(config_class, file=getattr(args, "config", None), overrides=overrides)
