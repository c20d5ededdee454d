"""forge-train: training methods for LargeForge experts (SDD §7.2 Python API).

::

    from forge_train import SFTConfig, train_sft

    trainer = train_sft(SFTConfig(model_name="Qwen/Qwen2.5-0.5B", dataset_path="chat.jsonl", output_dir="out"))
"""

from forge_train.config import (
    BaseTrainingConfig,
    DPOConfig,
    LoraConfig,
    ORPOConfig,
    PretrainConfig,
    SFTConfig,
)
from forge_train.data import (
    load_dpo_dataset,
    load_jsonl,
    load_pretrain_dataset,
    load_sft_dataset,
    prepare_chat_format,
    save_jsonl,
)
from forge_train.runner import TrainingInterrupted
from forge_train.train import train_dpo, train_orpo, train_pretrain, train_sft

__all__ = [
    "BaseTrainingConfig",
    "DPOConfig",
    "LoraConfig",
    "ORPOConfig",
    "PretrainConfig",
    "SFTConfig",
    "TrainingInterrupted",
    "load_dpo_dataset",
    "load_jsonl",
    "load_pretrain_dataset",
    "load_sft_dataset",
    "prepare_chat_format",
    "save_jsonl",
    "train_dpo",
    "train_orpo",
    "train_pretrain",
    "train_sft",
]
