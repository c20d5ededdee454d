"""The training functions of SDD §7.2: ``train_sft``, ``train_pretrain``, ``train_dpo``, ``train_orpo``.

Each loads data and model, builds TRL's trainer (``SFTTrainer``, ``DPOTrainer``, or
``trl.experimental`` ``ORPOTrainer``) and hands it to :func:`forge_train.runner.run_training`,
which runs it and writes the outputs. Each returns the trainer.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from forge_sdk.errors import ConfigurationError
from forge_train.chat_labels import tokenize_chat_dataset
from forge_train.config import BaseTrainingConfig, DPOConfig, ORPOConfig, PretrainConfig, SFTConfig
from forge_train.data import load_dpo_dataset, load_pretrain_dataset, load_sft_dataset
from forge_train.runner import (
    EVAL_EVERY_SHARE,
    common_training_args,
    load_model,
    load_tokenizer,
    lora_config,
    run_training,
)

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["train_dpo", "train_orpo", "train_pretrain", "train_sft"]


def _need_dataset(cfg: BaseTrainingConfig, dataset: Dataset | None) -> None:
    if dataset is None and not cfg.dataset_path:
        raise ConfigurationError("dataset_path is required (--dataset FILE)")


def _limit(cfg: BaseTrainingConfig) -> int | None:
    return getattr(cfg, "max_samples", None)


def train_sft(
    config: SFTConfig, *, dataset: Dataset | None = None, callbacks: list[Any] | None = None
) -> Any:
    """Supervised fine-tuning with TRL's ``SFTTrainer`` (LoRA, QLoRA or full).

    Args:
        config: the run's settings.
        dataset: a ready ``messages`` (or ``text``) dataset; default: load ``config.dataset_path``.
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        The ``trl.SFTTrainer`` after training; the adapter/model is in ``config.output_dir``.

    Raises:
        forge_sdk.errors.LargeForgeAIError: bad config, data or model.
    """
    _need_dataset(config, dataset)
    data = dataset if dataset is not None else load_sft_dataset(config.dataset_path, limit=_limit(config))
    held = load_sft_dataset(config.eval_dataset_path) if config.eval_dataset_path else None
    tokenizer = load_tokenizer(config.model_name)
    if config.assistant_only_loss and "messages" in data.column_names:
        # Labels from the model's own template, prefix by prefix: TRL's assistant_only_loss would
        # need {% generation %} markers that real templates lack (see forge_train.chat_labels).
        data = tokenize_chat_dataset(data, tokenizer)
    if held is not None and config.assistant_only_loss and "messages" in held.column_names:
        held = tokenize_chat_dataset(held, tokenizer)  # scored exactly as the training data is
    extra: dict[str, Any] = {}
    if held is not None:
        # A fraction below 1 is transformers' "share of the total steps"; it also evaluates at
        # the last step when that is off the interval.
        extra = {
            "eval_strategy": "steps",
            "eval_steps": config.eval_steps or EVAL_EVERY_SHARE,
            "per_device_eval_batch_size": config.batch_size,
        }

    def factory(batch: int, accum: int, cbs: list[Any]) -> Any:
        from trl import SFTConfig as TRLSFTConfig
        from trl import SFTTrainer

        args = TRLSFTConfig(**common_training_args(config, batch, accum), packing=config.packing, **extra)
        kwargs = {"eval_dataset": held} if held is not None else {}
        return _build_trainer(SFTTrainer, config, args, data, tokenizer, cbs, **kwargs)

    return run_training(config, "sft", factory, callbacks=callbacks)


def train_pretrain(
    config: PretrainConfig, *, dataset: Dataset | None = None, callbacks: list[Any] | None = None
) -> Any:
    """Continued pre-training on raw text (causal LM loss on every token) with ``SFTTrainer``.

    Packing concatenates the texts and cuts them into ``max_seq_length`` windows.

    Args:
        config: the run's settings.
        dataset: a ready ``text`` dataset; default: load ``config.dataset_path``.
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        The ``trl.SFTTrainer`` after training.

    Raises:
        forge_sdk.errors.LargeForgeAIError: bad config, data or model.
    """
    _need_dataset(config, dataset)
    data = (
        dataset
        if dataset is not None
        else load_pretrain_dataset(config.dataset_path, field=config.text_field, limit=_limit(config))
    )
    tokenizer = load_tokenizer(config.model_name)

    def factory(batch: int, accum: int, cbs: list[Any]) -> Any:
        from trl import SFTConfig as TRLSFTConfig
        from trl import SFTTrainer

        args = TRLSFTConfig(
            **common_training_args(config, batch, accum),
            dataset_text_field="text",
            packing=config.packing,
            # Classic pre-training packing: concatenate, then cut into full windows.
            packing_strategy="wrapped",
            completion_only_loss=False,
        )
        return _build_trainer(SFTTrainer, config, args, data, tokenizer, cbs)

    return run_training(config, "pretrain", factory, callbacks=callbacks)


def train_dpo(
    config: DPOConfig, *, dataset: Dataset | None = None, callbacks: list[Any] | None = None
) -> Any:
    """Direct preference optimisation with TRL's ``DPOTrainer``.

    With LoRA the reference model is the base with the adapter switched off, so no second copy
    is loaded; ``config.ref_model`` names another one.

    Args:
        config: the run's settings.
        dataset: a ready ``prompt``/``chosen``/``rejected`` dataset; default: load ``config.dataset_path``.
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        The ``trl.DPOTrainer`` after training.

    Raises:
        forge_sdk.errors.LargeForgeAIError: bad config, data or model.
    """
    _need_dataset(config, dataset)
    tokenizer = load_tokenizer(config.model_name)
    data = dataset if dataset is not None else _preference_data(config, tokenizer)

    def factory(batch: int, accum: int, cbs: list[Any]) -> Any:
        from trl import DPOConfig as TRLDPOConfig
        from trl import DPOTrainer

        args = TRLDPOConfig(
            **common_training_args(config, batch, accum),
            beta=config.beta,
            loss_type=[config.loss_type],
        )
        ref = load_model(config.ref_model) if config.ref_model else None
        return _build_trainer(DPOTrainer, config, args, data, tokenizer, cbs, ref_model=ref)

    return run_training(config, "dpo", factory, callbacks=callbacks)


def train_orpo(
    config: ORPOConfig, *, dataset: Dataset | None = None, callbacks: list[Any] | None = None
) -> Any:
    """Odds-ratio preference optimisation with ``trl.experimental.orpo.ORPOTrainer``.

    Args:
        config: the run's settings.
        dataset: a ready ``prompt``/``chosen``/``rejected`` dataset; default: load ``config.dataset_path``.
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        The ``ORPOTrainer`` after training.

    Raises:
        forge_sdk.errors.LargeForgeAIError: bad config, data or model.
    """
    _need_dataset(config, dataset)
    tokenizer = load_tokenizer(config.model_name)
    data = dataset if dataset is not None else _preference_data(config, tokenizer)

    def factory(batch: int, accum: int, cbs: list[Any]) -> Any:
        # ORPO lives in trl.experimental; we pin TRL, so its "unstable API" warning is noise.
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.orpo import ORPOConfig as TRLORPOConfig
        from trl.experimental.orpo import ORPOTrainer

        args = TRLORPOConfig(**common_training_args(config, batch, accum), beta=config.beta)
        return _build_trainer(ORPOTrainer, config, args, data, tokenizer, cbs)

    return run_training(config, "orpo", factory, callbacks=callbacks)


def _preference_data(config: BaseTrainingConfig, tokenizer: Any) -> Dataset:
    """Preference pairs, conversational when the model has a chat template.

    The gateway serves every chat through the template, so plain prompt/chosen/rejected strings
    become a user turn and assistant turns, and TRL renders them as the model will see them.
    """
    fmt = "conversational" if getattr(tokenizer, "chat_template", None) else "standard"
    return load_dpo_dataset(config.dataset_path, format=fmt, limit=_limit(config))


LM_HEAD_TILE = 4096
"""Vocabulary columns per tile of TRL's fused LM head. TRL's default (32,768) with up to 4,096
tokens per tile makes a ``tokens x 32,768`` float32 tile plus the same-sized temporaries of its
CPU fallback (softmax statistics, entropy and top-1 for its metrics): about 2 GB of the 4.6 GB
peak of a SmolLM2 step at batch 8 x 384. 4,096 columns cut that eightfold for a few more matmuls."""


def _bound_lm_head_tiles() -> None:
    # TRL passes this module global at every call and exposes no option for it; narrower tiles
    # only add loop iterations (the backward recomputes tiles either way).
    import trl.trainer.utils as trl_utils

    if getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", 0) > LM_HEAD_TILE:
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = LM_HEAD_TILE


def _build_trainer(
    trainer_cls: Any, config: Any, args: Any, data: Any, tokenizer: Any, callbacks: list[Any], **extra: Any
) -> Any:
    """A TRL trainer on a freshly loaded model (4-bit for QLoRA), with the run's LoRA config."""
    _bound_lm_head_tiles()
    return trainer_cls(
        model=load_model(config.model_name, load_in_4bit=config.load_in_4bit),
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(config),
        callbacks=callbacks,
        **extra,
    )
