"""sft, pretrain, dpo and orpo train a tiny model on real data: the loss falls, the outputs are written."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from forge_train import (
    DPOConfig,
    ORPOConfig,
    PretrainConfig,
    SFTConfig,
    train_dpo,
    train_orpo,
    train_pretrain,
    train_sft,
)
from tests.trainers.helpers import assert_loss_falls, fast_settings, losses


def _check_outputs(out: Path, method: str, steps: int, *, adapter: bool = True) -> dict:
    weights = "adapter_model.safetensors" if adapter else "model.safetensors"
    assert (out / weights).is_file()
    assert (out / "tokenizer.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == method
    assert manifest["global_step"] == steps
    assert manifest["adapter"] is adapter
    assert Path(manifest["base_model"]).is_absolute()
    assert manifest["metrics"]["final_loss"] > 0
    assert manifest["config"]["max_steps"] == steps
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines if "loss" in rec] == list(range(1, steps + 1))
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return manifest


def test_sft_loss_falls_and_writes_outputs(tiny_model_dir, sft_file, tmp_path):
    cfg = msgspec.convert(fast_settings(tmp_path, tiny_model_dir, sft_file), SFTConfig)
    trainer = train_sft(cfg)
    assert trainer.state.global_step == 30
    assert_loss_falls(losses(trainer))
    _check_outputs(Path(cfg.output_dir), "sft", 30)
    import trl.trainer.utils as trl_utils

    from forge_train.train import LM_HEAD_TILE

    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == LM_HEAD_TILE  # bounded LM-head tiles (peak memory)


def test_pretrain_loss_falls_on_raw_text(tiny_model_dir, pretrain_file, tmp_path):
    cfg = msgspec.convert(
        fast_settings(tmp_path, tiny_model_dir, pretrain_file, max_samples=2), PretrainConfig
    )
    trainer = train_pretrain(cfg)
    assert_loss_falls(losses(trainer))
    _check_outputs(Path(cfg.output_dir), "pretrain", 30)


def test_dpo_loss_falls_and_prefers_chosen(tiny_model_dir, dpo_file, tmp_path):
    cfg = msgspec.convert(fast_settings(tmp_path, tiny_model_dir, dpo_file), DPOConfig)
    trainer = train_dpo(cfg)
    values = losses(trainer)
    assert values[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference at step 1
    assert_loss_falls(values, factor=0.5)
    margins = [h["rewards/margins"] for h in trainer.state.log_history if "rewards/margins" in h]
    assert margins[-1] > 0
    _check_outputs(Path(cfg.output_dir), "dpo", 30)


def test_orpo_loss_falls(tiny_model_dir, dpo_file, tmp_path):
    cfg = msgspec.convert(fast_settings(tmp_path, tiny_model_dir, dpo_file), ORPOConfig)
    trainer = train_orpo(cfg)
    assert type(trainer).__module__.startswith("trl.experimental")
    assert_loss_falls(losses(trainer))
    _check_outputs(Path(cfg.output_dir), "orpo", 30)


def test_full_finetune_with_packing_and_assistant_only_loss(tiny_model_dir, sft_file, tmp_path):
    settings = fast_settings(
        tmp_path,
        tiny_model_dir,
        sft_file,
        max_steps=12,
        use_lora=False,
        learning_rate=1e-3,
        packing=True,
        assistant_only_loss=True,
        max_seq_length=256,
    )
    trainer = train_sft(msgspec.convert(settings, SFTConfig))
    values = losses(trainer)
    assert all(v > 0 for v in values)  # a fully masked batch would log 0
    assert_loss_falls(values, factor=0.9)
    _check_outputs(tmp_path / "out", "sft", 12, adapter=False)


def test_qlora_runs_on_cpu(tiny_model_dir, sft_file, tmp_path):
    pytest.importorskip("bitsandbytes")
    settings = fast_settings(tmp_path, tiny_model_dir, sft_file, max_steps=4, load_in_4bit=True)
    trainer = train_sft(msgspec.convert(settings, SFTConfig))
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    assert trainer.state.global_step == 4
    _check_outputs(tmp_path / "out", "sft", 4)


def test_qlora_needs_lora(tiny_model_dir, sft_file, tmp_path):
    from forge_sdk.errors import ConfigurationError

    settings = fast_settings(tmp_path, tiny_model_dir, sft_file, load_in_4bit=True, use_lora=False)
    with pytest.raises(ConfigurationError, match="needs LoRA"):
        train_sft(msgspec.convert(settings, SFTConfig))


def test_too_short_max_length_is_a_data_error(tiny_model_dir, shared_data, tmp_path):
    from forge_sdk.errors import DataError

    settings = fast_settings(
        tmp_path, tiny_model_dir, shared_data / "dpo_hh_1k.jsonl", max_seq_length=16, max_samples=4
    )
    with pytest.raises(DataError, match="no training examples left"):
        train_dpo(msgspec.convert(settings, DPOConfig))


def test_oom_retries_with_half_batch_and_double_accumulation(tiny_model_dir, sft_file, tmp_path, caplog):
    import torch
    from transformers import TrainerCallback

    class OutOfMemoryOnce(TrainerCallback):
        """Fault injection: the first attempt hits a CUDA OOM on its first step, as a too-big batch would."""

        fired = False

        def on_step_begin(self, args, state, control, **kwargs):
            if not OutOfMemoryOnce.fired:
                OutOfMemoryOnce.fired = True
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    settings = fast_settings(tmp_path, tiny_model_dir, sft_file, max_steps=3, gradient_accumulation_steps=1)
    with caplog.at_level("WARNING", logger="forge_train"):
        trainer = train_sft(msgspec.convert(settings, SFTConfig), callbacks=[OutOfMemoryOnce()])
    assert trainer.args.per_device_train_batch_size == 2
    assert trainer.args.gradient_accumulation_steps == 2
    assert trainer.state.global_step == 3
    assert "retrying with batch size 2 and gradient accumulation 2" in caplog.text
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert (manifest["batch_size"], manifest["gradient_accumulation_steps"]) == (2, 2)


def test_oom_after_a_checkpoint_resumes_from_it(tiny_model_dir, sft_file, tmp_path, caplog):
    import torch
    from transformers import TrainerCallback

    class OutOfMemoryAtStep3(TrainerCallback):
        """Fault injection: the first attempt runs out of memory after checkpoint-2 was saved."""

        fired = False

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2 and not OutOfMemoryAtStep3.fired:
                OutOfMemoryAtStep3.fired = True
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    settings = fast_settings(tmp_path, tiny_model_dir, sft_file, max_steps=4, save_steps=2)
    with caplog.at_level("WARNING", logger="forge_train"):
        trainer = train_sft(msgspec.convert(settings, SFTConfig), callbacks=[OutOfMemoryAtStep3()])
    assert f"from {tmp_path / 'out' / 'checkpoint-2'}" in caplog.text
    assert trainer.state.global_step == 4
    # Resumed, not restarted: the second attempt logged only steps 3 and 4.
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps.count(1) == 1 and steps[-1] == 4


def test_assistant_only_loss_without_generation_markers(tiny_model_dir, sft_file, tmp_path):
    """A template with no {% generation %} markers still trains on assistant tokens only."""
    import shutil

    plain = tmp_path / "plain-template"
    shutil.copytree(tiny_model_dir, plain)
    (plain / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    settings = fast_settings(tmp_path, plain, sft_file, max_steps=2)
    trainer = train_sft(msgspec.convert(settings, SFTConfig))
    tok = trainer.processing_class
    row = trainer.train_dataset[0]
    learned = tok.decode(
        [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    )
    masked = tok.decode(
        [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label == -100]
    )
    assert "<|im_start|>user" in masked and "<|im_start|>assistant" in masked
    assert "<|im_start|>" not in learned and learned.endswith("<|im_end|>\n")
