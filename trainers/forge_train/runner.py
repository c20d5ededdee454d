"""What every training method shares: model loading, trainer arguments, the run loop and its outputs.

:func:`run_training` drives a TRL/transformers trainer built by a method-specific factory: it
resumes from the latest checkpoint when asked, retries with half the batch size on CUDA
out-of-memory (SDD §9.2), turns SIGINT/SIGTERM into a saved, resumable checkpoint, then writes the
adapter or model, ``manifest.json``, ``metrics.jsonl`` and ``loss.png``, and registers the expert.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from forge_sdk.errors import ConfigurationError, DataError, ModelError, TrainingError
from forge_sdk.experts import ExpertModel, ExpertRegistry
from forge_train.config import BaseTrainingConfig

__all__ = [
    "TrainingInterrupted",
    "common_training_args",
    "load_model",
    "load_tokenizer",
    "learning_rate",
    "lora_config",
    "model_source",
    "plot_loss",
    "registry_path",
    "run_training",
]

logger = logging.getLogger("forge_train")

TrainerFactory = Callable[[int, int, list[Any]], Any]
"""``factory(batch_size, grad_accum, callbacks) -> trainer``; called again after an OOM."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a resumable checkpoint."""

    def __init__(self, message: str, checkpoint: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.checkpoint = checkpoint


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_local(name: str) -> None:
    # A path that is clearly local should not fall through to a slow, retried hub lookup.
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
        raise ModelError(f"model folder not found: {name}")


def model_source(name: str) -> str:
    """What ``from_pretrained`` should load for ``--model name``: a catalogue name or a GGUF file
    becomes its cached, converted folder (:func:`forge_sdk.models.resolve_model`)."""
    from forge_sdk.models import resolve_model

    _check_local(name)
    return resolve_model(name, progress=logger.info)


def load_tokenizer(name: str) -> Any:
    """Load a tokenizer and make sure it can pad.

    Raises:
        ModelError: the tokenizer cannot be loaded.
    """
    from transformers import AutoTokenizer

    name = model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load tokenizer for {name!r}: {str(exc).splitlines()[0]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, *, load_in_4bit: bool = False) -> Any:
    """Load a causal LM for training: full precision on CPU, bf16 on GPU, NF4 for QLoRA.

    Raises:
        ModelError: the model cannot be loaded.
        ConfigurationError: 4-bit loading was asked for without bitsandbytes installed.
    """
    import torch
    from transformers import AutoModelForCausalLM

    name = model_source(name)
    cuda = _cuda()
    kwargs: dict[str, Any] = {
        "dtype": torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    }
    if load_in_4bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(
                "--load-in-4bit needs bitsandbytes: pip install 'forge-train[qlora]'"
            ) from exc
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": local_rank} if cuda else {"": "cpu"}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {name!r}: {str(exc).splitlines()[0]}") from exc
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def lora_config(cfg: BaseTrainingConfig) -> Any:
    """PEFT ``LoraConfig`` for ``cfg`` (None for full fine-tuning).

    Raises:
        ConfigurationError: 4-bit loading without LoRA (QLoRA trains an adapter, never the base).
    """
    if not cfg.use_lora:
        if cfg.load_in_4bit:
            raise ConfigurationError("load_in_4bit (QLoRA) needs LoRA: drop --full or --load-in-4bit")
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.lora_alpha,
        lora_dropout=cfg.lora.lora_dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def common_training_args(cfg: BaseTrainingConfig, batch_size: int, grad_accum: int) -> dict[str, Any]:
    """Keyword arguments every TRL config class takes (it subclasses ``TrainingArguments``)."""
    import torch

    cuda = _cuda()
    args: dict[str, Any] = {
        "output_dir": cfg.output_dir,
        "num_train_epochs": cfg.num_train_epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "learning_rate": learning_rate(cfg),
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        # A fraction below 1 is transformers' "share of the total steps" (rounded up).
        "logging_steps": cfg.logging_steps or LOG_EVERY_SHARE,
        "logging_first_step": True,
        "report_to": "none",
        "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "max_length": cfg.max_seq_length,
        "dataloader_num_workers": 0,
    }
    for name in ("lr_scheduler_type", "save_total_limit"):
        if hasattr(cfg, name):
            args[name] = getattr(cfg, name)
    if not cfg.use_lora and args.get("save_total_limit") is None:
        args["save_total_limit"] = FULL_SAVE_TOTAL_LIMIT
    # transformers 5 folds warmup_ratio into warmup_steps (a float in [0, 1) is a ratio).
    args["warmup_steps"] = getattr(cfg, "warmup_ratio", 0.0)
    return args


LOG_EVERY_SHARE = 0.05
"""Default logging interval as a share of the run's steps: about 20 points on any run length."""
EVAL_EVERY_SHARE = 0.1
"""Default evaluation interval as a share of the run's steps: about 10 scores of the eval set."""
LORA_LEARNING_RATE = 2e-4
"""Default peak learning rate of a LoRA adapter (SDD §5.2)."""
FULL_LEARNING_RATE = 2e-5
"""Default peak learning rate of full fine-tuning: every weight moves, so ten times gentler."""
FULL_SAVE_TOTAL_LIMIT = 2
"""Checkpoints kept by default in full fine-tuning (each is a whole model plus optimizer state)."""


def learning_rate(cfg: BaseTrainingConfig) -> float:
    """The configured learning rate, else the default for LoRA or full fine-tuning."""
    if cfg.learning_rate is not None:
        return cfg.learning_rate
    return LORA_LEARNING_RATE if cfg.use_lora else FULL_LEARNING_RATE


def registry_path(cfg: BaseTrainingConfig) -> Path:
    """The registry file: ``registry_path``, else ``$FORGE_REGISTRY``, else ``./experts.json``."""
    return Path(cfg.registry_path or os.environ.get("FORGE_REGISTRY") or "experts.json")


def _check_registration(cfg: BaseTrainingConfig) -> None:
    # Fail before an hour of training, not after it.
    if cfg.register is None:
        return
    try:
        msgspec.convert({"name": cfg.register}, ExpertModel)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(
            f"invalid --register name {cfg.register!r}: use letters, digits, '.', '_' or '-' (max 64)"
        ) from exc
    ExpertRegistry(registry_path(cfg))  # raises ConfigurationError for a broken file


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def run_training(
    cfg: BaseTrainingConfig,
    method: str,
    factory: TrainerFactory,
    *,
    callbacks: list[Any] | None = None,
) -> Any:
    """Train with a trainer from ``factory`` and write all outputs to ``cfg.output_dir``.

    Args:
        cfg: the run's config.
        method: method name for the manifest (``sft``, ``dpo``, ...).
        factory: builds a fresh trainer for a batch size, gradient accumulation and callbacks.
        callbacks: extra ``TrainerCallback`` objects.

    Returns:
        The trainer after training.

    Raises:
        TrainingInterrupted: SIGINT/SIGTERM arrived; a resumable checkpoint was saved.
        TrainingError: out of memory even at batch size 1.
    """
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from forge_train.callbacks import MetricsLogger, StopOnSignal

    _check_registration(cfg)
    output = Path(cfg.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    resume: str | None = None
    if cfg.resume:
        resume = get_last_checkpoint(str(output))
        if resume is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", output)
        else:
            logger.info("resuming from %s", resume)
    batch, accum = cfg.batch_size, cfg.gradient_accumulation_steps
    started = time.time()
    while True:
        set_seed(cfg.seed)
        stopper = StopOnSignal()
        trainer = factory(
            batch, accum, [stopper, MetricsLogger(output / "metrics.jsonl"), *(callbacks or [])]
        )
        _check_not_empty(trainer, cfg)
        try:
            with stopper.handling_signals():
                cpu_started = time.process_time()
                result = trainer.train(resume_from_checkpoint=resume)
            # CPU seconds of the training loop: a throughput measure that other load on the machine
            # barely moves, unlike train_runtime (wall clock).
            result.metrics["train_cpu_seconds"] = round(time.process_time() - cpu_started, 3)
            break
        except Exception as exc:
            if not _is_oom(exc):
                raise
            if batch == 1:
                raise TrainingError(
                    "CUDA out of memory even at batch size 1: lower --max-length, or use --load-in-4bit"
                ) from exc
        # Out of the except block on purpose: the exception's traceback pins the failed step's
        # frames and tensors, so memory can only be freed once it is gone.
        batch, accum = max(1, batch // 2), accum * 2
        _release(trainer)
        del trainer
        _free_memory()
        # The same effective batch, so the last checkpoint's step count and data position still hold.
        resume = get_last_checkpoint(str(output)) or resume
        logger.warning(
            "CUDA out of memory: retrying with batch size %d and gradient accumulation %d%s",
            batch,
            accum,
            f", from {resume}" if resume else "",
        )
    if stopper.received is not None:
        checkpoint = get_last_checkpoint(str(output))
        raise TrainingInterrupted(
            f"stopped by {stopper.received} at step {trainer.state.global_step}; checkpoint saved to "
            f"{checkpoint}; rerun with --resume to continue",
            checkpoint,
        )
    trainer.save_model(str(output))
    if trainer.is_world_process_zero():
        _write_outputs(trainer, cfg, method, result.metrics, batch, accum, time.time() - started)
    return trainer


def _check_not_empty(trainer: Any, cfg: BaseTrainingConfig) -> None:
    data = getattr(trainer, "train_dataset", None)
    if data is not None and hasattr(data, "__len__") and len(data) == 0:
        raise DataError(
            f"{cfg.dataset_path or 'dataset'}: no training examples left after tokenizing and truncating to "
            f"max_length={cfg.max_seq_length}; raise --max-length or use shorter records"
        )


def _release(trainer: Any) -> None:
    """Drop the trainer's references to model, optimizer and scheduler (accelerate keeps its own)."""
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        accelerator.free_memory()
    for name in ("model", "model_wrapped", "optimizer", "lr_scheduler"):
        if hasattr(trainer, name):
            setattr(trainer, name, None)


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _write_outputs(
    trainer: Any,
    cfg: BaseTrainingConfig,
    method: str,
    metrics: dict[str, Any],
    batch: int,
    accum: int,
    seconds: float,
) -> None:
    output = Path(cfg.output_dir)
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    final = dict(metrics)
    if losses:
        final["final_loss"] = losses[-1][1]
    if evals:
        final["final_eval_loss"] = evals[-1][1]
    manifest = {
        "method": method,
        "base_model": _resolved(cfg.model_name),
        "dataset_path": cfg.dataset_path,
        "adapter": cfg.use_lora,
        "global_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "world_size": trainer.args.world_size,
        "batch_size": batch,
        "gradient_accumulation_steps": accum,
        "wall_seconds": round(seconds, 3),
        "metrics": final,
        "config": msgspec.to_builtins(cfg),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (output / "manifest.json").write_text(
        json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8"
    )
    if losses:
        title = f"forge-train {method}: {Path(cfg.model_name).name}"
        plot_loss(losses, output / "loss.png", title, evals=evals)
    if cfg.register:
        _register(cfg, method, trainer.state.global_step)


def plot_loss(
    losses: list[tuple[int, float]],
    path: Path,
    title: str,
    *,
    evals: list[tuple[int, float]] | None = None,
) -> None:
    """Draw the training loss per logged step, and the eval loss beside it when there is one.

    Args:
        losses: ``(step, training loss)`` pairs.
        path: the PNG to write.
        title: the figure's title.
        evals: ``(step, eval loss)`` pairs (none: the training loss alone).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    marker = "." if len(losses) <= 60 else None
    ax.plot([s for s, _ in losses], [v for _, v in losses], marker=marker, label="train loss")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], marker="o", label="eval loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


_register_lock = threading.Lock()


def _resolved(name: str) -> str:
    # A local base must be an absolute path: whoever reads the manifest or registry runs elsewhere;
    # a catalogue name or GGUF file is recorded as the converted folder the adapter was trained on.
    name = model_source(name)
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def _register(cfg: BaseTrainingConfig, method: str, steps: int) -> None:
    out = str(Path(cfg.output_dir).resolve())
    expert = ExpertModel(
        name=cfg.register or "",
        base_model=_resolved(cfg.model_name),
        adapter_path=out if cfg.use_lora else None,
        model_path=None if cfg.use_lora else out,
        trained_on=cfg.dataset_path or None,
        training_steps=steps,
        specialization=getattr(cfg, "specialization", "general"),
        keywords=list(getattr(cfg, "keywords", [])),
        priority=getattr(cfg, "priority", 0),
        description=f"forge-train {method} of {cfg.model_name} on {cfg.dataset_path}",
    )
    with _register_lock:
        ExpertRegistry(registry_path(cfg)).register(expert)
    logger.info("registered expert %r in %s", expert.name, registry_path(cfg))
