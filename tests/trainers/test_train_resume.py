"""An interrupted run resumed from its checkpoint ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal

import msgspec
import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback

from forge_train import SFTConfig, TrainingInterrupted, train_sft
from tests.trainers.helpers import fast_settings, losses


class SignalAt(TrainerCallback):
    """Sends this process SIGTERM at the end of one step, as a scheduler pre-empting a job would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_interrupted_then_resumed_equals_uninterrupted(tiny_model_dir, sft_file, tmp_path):
    # LoRA dropout stays on: equality also needs the RNG state restored from the checkpoint.
    base = fast_settings(
        tmp_path,
        tiny_model_dir,
        sft_file,
        max_steps=10,
        save_steps=5,
        batch_size=2,
        max_seq_length=128,
        lora={"lora_dropout": 0.1},
        lr_scheduler_type="linear",
    )
    full = train_sft(msgspec.convert({**base, "output_dir": str(tmp_path / "a")}, SFTConfig))

    interrupted = msgspec.convert({**base, "output_dir": str(tmp_path / "b")}, SFTConfig)
    # The signal goes to the whole test process, where other tests' servers may live on an asyncio
    # loop: its wakeup fd would hand them the SIGTERM too (uvicorn would shut down). Only the
    # training's handler may see it here, as in forge-train's own process.
    wakeup = signal.set_wakeup_fd(-1)
    try:
        with pytest.raises(TrainingInterrupted) as info:
            train_sft(interrupted, callbacks=[SignalAt(4)])  # the flag is seen at step 5's end
    finally:
        signal.set_wakeup_fd(wakeup)
    assert info.value.checkpoint.endswith("checkpoint-5")
    assert info.value.message.startswith("stopped by SIGTERM at step 5")
    assert not (tmp_path / "b" / "adapter_model.safetensors").exists()  # no final model for a cut run

    resumed = train_sft(
        msgspec.convert({**base, "output_dir": str(tmp_path / "b"), "resume": True}, SFTConfig)
    )
    assert resumed.state.global_step == full.state.global_step == 10
    assert losses(resumed) == losses(full)
    a, b = (
        load_file(tmp_path / "a" / "adapter_model.safetensors"),
        load_file(tmp_path / "b" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == sorted(s for s in steps if s)  # no duplicated steps after resume


def test_resume_without_checkpoint_starts_fresh(tiny_model_dir, sft_file, tmp_path, caplog):
    cfg = msgspec.convert(
        fast_settings(tmp_path, tiny_model_dir, sft_file, max_steps=2, resume=True), SFTConfig
    )
    with caplog.at_level("WARNING", logger="forge_train"):
        trainer = train_sft(cfg)
    assert trainer.state.global_step == 2
    assert "no checkpoint" in caplog.text
