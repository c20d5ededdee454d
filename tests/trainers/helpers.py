"""Helpers for forge-train tests."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any


def losses(trainer: Any) -> list[float]:
    """Training losses a trainer logged, in step order."""
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def assert_loss_falls(values: list[float], *, factor: float = 0.8) -> None:
    """The mean of the last five losses is below ``factor`` times the mean of the first five."""
    assert len(values) >= 10, values
    first, last = statistics.mean(values[:5]), statistics.mean(values[-5:])
    assert last < factor * first, f"loss did not fall: first {first:.4f}, last {last:.4f}: {values}"


def fast_settings(tmp_path: Path, model: Path, dataset: Path | str, **extra: Any) -> dict[str, Any]:
    """Settings for a short deterministic run on a small repeated batch of a tiny model."""
    settings: dict[str, Any] = {
        "model_name": str(model),
        "dataset_path": str(dataset),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 30,
        "batch_size": 4,
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "max_seq_length": 128,
        "logging_steps": 1,
        "save_steps": 1000,
        "lora": {"lora_dropout": 0.0},
    }
    settings.update(extra)
    return settings
