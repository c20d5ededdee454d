"""forge-train defaults that depend on the run: full fine-tuning, registry fields, GPTQ group size, models."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from forge_sdk.errors import ConfigurationError
from forge_train.config import SFTConfig
from forge_train.deploy.quantize import fit_group_size
from forge_train.methods import SFTMethod
from forge_train.runner import common_training_args, model_source


def _cfg(**extra) -> SFTConfig:
    return msgspec.convert({"model_name": "m", "output_dir": "o", **extra}, SFTConfig)


def test_full_finetuning_gets_its_own_defaults() -> None:
    lora, full = common_training_args(_cfg(), 4, 1), common_training_args(_cfg(use_lora=False), 4, 1)
    assert (lora["learning_rate"], lora["save_total_limit"]) == (2e-4, None)
    assert (full["learning_rate"], full["save_total_limit"]) == (2e-5, 2)
    chosen = common_training_args(_cfg(use_lora=False, learning_rate=1e-5, save_total_limit=5), 4, 1)
    assert (chosen["learning_rate"], chosen["save_total_limit"]) == (1e-5, 5)


def test_register_flags_reach_the_config() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    SFTMethod.add_arguments(parser)
    flags = ["--model", "m", "--output", "o", "--register", "gsm", "--specialization", "math"]
    args = parser.parse_args(
        [*flags, "--keywords", "gsm8k, arithmetic,", "--priority", "5", "--no-assistant-only-loss"]
    )
    cfg = SFTMethod.build_config(args)
    assert (cfg.register, cfg.specialization, cfg.keywords, cfg.priority) == (
        "gsm",
        "math",
        ["gsm8k", "arithmetic"],
        5,
    )
    assert cfg.assistant_only_loss is False


def test_gptq_group_size_falls_back_for_576_wide_layers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64})
    )
    with caplog.at_level("WARNING", logger="forge_train"):
        assert fit_group_size(str(tmp_path), 128) == 64
    assert "group size 128 does not divide" in caplog.text
    assert fit_group_size(str(tmp_path), 64) == 64
    assert fit_group_size(str(tmp_path), -1) == -1
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 600, "intermediate_size": 1500}))
    with pytest.raises(ConfigurationError, match="--group-size"):
        fit_group_size(str(tmp_path), 128)


def test_trainers_resolve_catalogue_names(real_model_dir: Path, tiny_model_dir: Path) -> None:
    assert model_source("smollm2-135m-instruct") == str(real_model_dir)
    assert model_source(str(tiny_model_dir)) == str(tiny_model_dir)
