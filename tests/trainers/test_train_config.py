"""Config classes and loading: file < FORGE_TRAIN_* env < flags, and one readable line per mistake."""

from __future__ import annotations

import pytest

from forge_sdk.errors import ConfigurationError
from forge_train.config import (
    BaseTrainingConfig,
    DPOConfig,
    ORPOConfig,
    PretrainConfig,
    SFTConfig,
    build_config,
)


def test_method_configs_extend_the_base_with_sdd_defaults():
    for cls in (SFTConfig, PretrainConfig, DPOConfig, ORPOConfig):
        assert issubclass(cls, BaseTrainingConfig)
    dpo = DPOConfig(model_name="m", output_dir="o")
    assert (dpo.beta, dpo.loss_type, dpo.lora.r, dpo.lora.lora_alpha) == (0.1, "sigmoid", 8, 16)
    assert PretrainConfig(model_name="m", output_dir="o").packing is True
    assert SFTConfig(model_name="m", output_dir="o").use_lora is True


def test_yaml_then_env_then_overrides(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text(
        "model_name: base\noutput_dir: out\nlearning_rate: 1.0e-3\nbatch_size: 2\nlora:\n  r: 4\n"
    )
    monkeypatch.setenv("FORGE_TRAIN_BATCH_SIZE", "8")
    monkeypatch.setenv("FORGE_TRAIN_PACKING", "true")
    cfg = build_config(SFTConfig, file=path, overrides={"lora": {"lora_alpha": 32}, "seed": 7})
    assert (cfg.learning_rate, cfg.batch_size, cfg.packing, cfg.seed) == (1e-3, 8, True, 7)
    assert (cfg.lora.r, cfg.lora.lora_alpha) == (4, 32)
    cfg = build_config(SFTConfig, file=path, overrides={"batch_size": 16})
    assert cfg.batch_size == 16


def test_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'model_name = "base"\noutput_dir = "out"\nbeta = 0.25\nloss_type = "ipo"\n[lora]\nr = 16\n'
    )
    cfg = build_config(DPOConfig, file=path, use_env=False)
    assert (cfg.beta, cfg.loss_type, cfg.lora.r) == (0.25, "ipo", 16)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "model_name: m\noutput_dir: o\nlora:\n  r: many\n",
            r"in .*bad\.yaml: field 'lora\.r': Expected `int`, got `str`",
        ),
        ("model_name: m\noutput_dir: o\nlearnin_rate: 1\n", r"unknown field 'learnin_rate'"),
        ("output_dir: o\n", r"field 'model_name' is required"),
        ("model_name: m\noutput_dir: o\nbatch_size: 0\n", r"field 'batch_size': Expected `int` >= 1"),
        ("model_name: m\noutput_dir: o\nloss_type: nope\n", r"field 'loss_type'"),
        ("model_name: [\n", r"bad\.yaml is not valid YAML"),
        ("- a\n- b\n", r"must hold a mapping of settings, not list"),
    ],
)
def test_bad_files_give_one_readable_line(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=match) as info:
        build_config(DPOConfig, file=path, use_env=False)
    assert "\n" not in info.value.message


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        build_config(SFTConfig, file=tmp_path / "nope.yaml")
    (tmp_path / "run.ini").write_text("x=1")
    with pytest.raises(ConfigurationError, match=r"unknown extension '\.ini'"):
        build_config(SFTConfig, file=tmp_path / "run.ini")
    (tmp_path / "bad.toml").write_text("model_name = \n")
    with pytest.raises(ConfigurationError, match=r"bad\.toml is not valid TOML"):
        build_config(SFTConfig, file=tmp_path / "bad.toml")
