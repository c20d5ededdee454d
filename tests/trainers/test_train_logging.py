"""Training output a person reads: a short run logs often enough for a curve, and ``loss.png``
draws the eval loss beside the training loss when there is an eval set."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from forge_train import SFTConfig, train_sft
from forge_train.runner import LOG_EVERY_SHARE, common_training_args, plot_loss
from tests.trainers.helpers import fast_settings

TRAIN_COLOUR = (0x1F, 0x77, 0xB4)  # matplotlib's first and second line colours (C0, C1)
EVAL_COLOUR = (0xFF, 0x7F, 0x0E)


def _pixels(png: Path, colour: tuple[int, int, int]) -> int:
    from PIL import Image

    image = Image.open(png).convert("RGB")
    return sum(
        1 for pixel in image.getdata() if all(abs(a - b) <= 12 for a, b in zip(pixel, colour, strict=True))
    )


def _settings(tmp_path: Path, model: Path, data: Path, **extra: object) -> SFTConfig:
    settings = fast_settings(tmp_path, model, data, max_steps=16, **extra)
    del settings["logging_steps"]  # the default under test
    return msgspec.convert(settings, SFTConfig)


def test_default_logging_interval_is_a_share_of_the_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = _settings(tmp_path, tiny_model_dir, tmp_path / "unused.jsonl")
    assert cfg.logging_steps is None
    assert common_training_args(cfg, 4, 1)["logging_steps"] == LOG_EVERY_SHARE
    chosen = msgspec.structs.replace(cfg, logging_steps=7)
    assert common_training_args(chosen, 4, 1)["logging_steps"] == 7  # the user's setting stands


def test_sixteen_step_run_logs_every_step_and_plots_eval_loss(
    tiny_model_dir: Path, sft_file: Path, tmp_path: Path
) -> None:
    cfg = _settings(tmp_path, tiny_model_dir, sft_file, eval_dataset_path=str(sft_file))
    trainer = train_sft(cfg)
    out = Path(cfg.output_dir)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 17))  # ceil(16 / 20) = 1
    assert [r["step"] for r in records if "eval_loss" in r] == list(range(2, 17, 2))  # ceil(16 / 10)
    manifest = json.loads((out / "manifest.json").read_text())
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert manifest["metrics"]["final_eval_loss"] == pytest.approx(evals[-1])
    png = out / "loss.png"
    assert _pixels(png, TRAIN_COLOUR) > 300 and _pixels(png, EVAL_COLOUR) > 300


def test_plot_without_eval_draws_the_training_loss_alone(tmp_path: Path) -> None:
    png = tmp_path / "loss.png"
    plot_loss([(1, 2.0), (2, 1.5), (3, 1.2)], png, "t")
    assert _pixels(png, TRAIN_COLOUR) > 100 and _pixels(png, EVAL_COLOUR) == 0
    plot_loss([(1, 2.0), (2, 1.5), (3, 1.2)], png, "t", evals=[(2, 1.8), (3, 1.6)])
    assert _pixels(png, EVAL_COLOUR) > 100


def test_cli_flags_set_the_eval_set_and_intervals(tmp_path: Path) -> None:
    import argparse

    from forge_train.methods import SFTMethod

    parser = argparse.ArgumentParser()
    SFTMethod.add_arguments(parser)
    args = parser.parse_args(
        ["--model", "m", "--dataset", "d.jsonl", "--output", str(tmp_path), "--eval-dataset", "held.jsonl"]
    )
    cfg = SFTMethod.build_config(args)
    assert (cfg.eval_dataset_path, cfg.eval_steps, cfg.logging_steps) == ("held.jsonl", None, None)
    args = parser.parse_args(
        ["--model", "m", "--output", str(tmp_path), "--eval-steps", "3", "--logging-steps", "2"]
    )
    cfg = SFTMethod.build_config(args)
    assert (cfg.eval_steps, cfg.logging_steps) == (3, 2)
