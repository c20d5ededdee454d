"""The real ``forge-train`` command: help, plugin listing, one-line errors with exit codes, a full
run that registers an expert, SIGINT -> checkpoint + exit 130 -> --resume, and accelerate launch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge_sdk.experts import ExpertRegistry
from forge_train.cli import main

BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "forge-train"), *args], capture_output=True, text=True, env=_env(), timeout=timeout
    )


@pytest.mark.parametrize("method", ["sft", "pretrain", "dpo", "orpo"])
def test_help_per_method(method, capsys):
    with pytest.raises(SystemExit) as info:
        main([method, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        "--config",
        "--model",
        "--dataset",
        "--output",
        "--lora-r",
        "--full",
        "--load-in-4bit",
        "--resume",
        "--register",
        "--registry",
        "example:",
    ):
        assert flag in out
    assert {"dpo": "--loss-type", "orpo": "--beta", "sft": "--assistant-only-loss", "pretrain": "--packing"}[
        method
    ] in out


def test_plugins_lists_the_core_methods(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "train_core" in out and "forge-train" in out
    assert main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {"sft", "pretrain", "dpo", "orpo"} <= set(listing["methods"])


def test_bad_config_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name: m\noutput_dir: o\nlora:\n  r: lots\n")
    proc = _run(["sft", "--config", str(bad)])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        f"forge-train: error: invalid SFTConfig in {bad}: field 'lora.r': Expected `int`, got `str`"
    ]


def test_errors_in_process(tiny_model_dir, sft_file, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n{"prompt": "hi", "chosen": "a"}\n')
    common = ["--model", str(tiny_model_dir), "--output", str(tmp_path / "o")]
    assert main(["dpo", *common, "--dataset", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f"forge-train: error: {bad}: line 2: field 'rejected': missing"
    assert main(["sft", *common]) == 2
    assert "dataset_path is required" in capsys.readouterr().err
    assert (
        main(["sft", "--model", str(tmp_path / "no-model"), "--output", "o", "--dataset", str(sft_file)]) == 1
    )
    assert capsys.readouterr().err.strip().startswith("forge-train: error: model folder not found")
    assert main(["sft", *common, "--dataset", str(sft_file), "--register", "bad name!"]) == 2
    assert "invalid --register name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["sft", "--max-steps", "many"])
    assert info.value.code == 2


def test_cli_run_with_config_file_registers_an_expert(tiny_model_dir, sft_file, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(
        f'model_name = "{tiny_model_dir}"\ndataset_path = "{sft_file}"\nmax_seq_length = 96\nlogging_steps = 1\n'
        "[lora]\nr = 4\n"
    )
    registry = tmp_path / "experts.json"
    out = tmp_path / "code-lora"
    proc = _run(
        [
            "sft",
            "--config",
            str(config),
            "--output",
            str(out),
            "--max-steps",
            "6",
            "--lr",
            "3e-3",
            "--register",
            "code-tiny",
            "--registry",
            str(registry),
            "--specialization",
            "code",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sft done: global_step 6" in proc.stdout
    expert = ExpertRegistry(registry).get("code-tiny")
    assert expert is not None and expert.kind == "adapter"
    assert expert.adapter_path == str(out.resolve())
    assert expert.base_model == str(Path(tiny_model_dir).resolve())
    assert (expert.trained_on, expert.training_steps, expert.specialization) == (str(sft_file), 6, "code")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["lora"]["r"] == 4 and manifest["config"]["learning_rate"] == 3e-3


def test_sigint_saves_checkpoint_exits_130_then_resumes(tiny_model_dir, sft_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "sft",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sft_file),
        "--output",
        str(out),
        "--max-length",
        "128",  # keeps the assistant turn (the loss is on it only)
        "--logging-steps",
        "1",
        "--save-steps",
        "100000",
        "--lr-scheduler",
        "constant",
    ]
    proc = subprocess.Popen(
        [str(BIN / "forge-train"), *args, "--max-steps", "100000"],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        metrics = out / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "rerun with --resume" in err
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) == 1
    step = int(checkpoints[0].name.split("-")[1])
    assert main([*args, "--max-steps", str(step + 3), "--resume"]) == 0
    assert f"global_step {step + 3}" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["global_step"] == step + 3


@pytest.mark.slow  # two interpreter start-ups (launcher + worker): ~25 s idle, over 60 s on a loaded machine
def test_accelerate_launch_cpu(tiny_model_dir, sft_file, tmp_path):
    out = tmp_path / "acc"
    cmd = [
        str(BIN / "accelerate"),
        "launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "forge_train.cli",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(sft_file),
        "--output",
        str(out),
        "--max-steps",
        "3",
        "--max-length",
        "128",  # keeps the assistant turn (the loss is on it only)
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["global_step"] == 3 and manifest["world_size"] == 1
    assert (out / "adapter_model.safetensors").is_file()
