"""``forge-gateway check``: the parity check for the configuration ``serve`` would run, as a command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REAL_MODEL


def _check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "check", *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
        check=False,
    )


def _one_line_error(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("forge-gateway: error:")]
    assert len(errors) == 1, stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = _check(cwd=tmp_path)
    assert result.returncode == 2
    _one_line_error(result.stderr, "no model given", "--model")
    result = _check("--model", str(tmp_path / "missing"), cwd=tmp_path)
    assert result.returncode == 2
    _one_line_error(result.stderr, "does not exist")
    result = _check("--model", "m", "--dtype", "float64", cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'float64'" in result.stderr


def test_the_transformers_engine_passes_on_the_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    result = _check("--model", str(tiny_model_dir), "--engine", "transformers", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "parity of transformers (float32, eager, LoRA off)" in result.stdout
    assert "PASS: 8/8 prompts identical" in result.stdout


@pytest.mark.slow
def test_a_configuration_with_wrong_answers_fails(real_model_dir: Path, tmp_path: Path) -> None:
    """bfloat16 on CPU (transformers engine: the cheapest engine to start) flips SmolLM2's answer to
    "What is the capital of France?"; the check names it and exits 1."""
    result = _check("--model", REAL_MODEL, "--engine", "transformers", "--dtype", "bfloat16", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "parity of transformers (bfloat16, eager, LoRA off)" in result.stdout
    assert "FAIL:" in result.stdout and "(WRONG)" in result.stdout
    assert "reference: 'The capital of France is Paris.'" in result.stdout
