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
    assert "parity of transformers (float32, eager, LoRA on)" in result.stdout
    assert "PASS: 8/8 prompts identical" in result.stdout


@pytest.mark.slow
def test_a_configuration_with_wrong_answers_fails(real_model_dir: Path, tmp_path: Path) -> None:
    """bfloat16 on CPU (transformers engine: the cheapest engine to start) flips SmolLM2's answer to
    "What is the capital of France?"; the check names it and exits 1."""
    result = _check("--model", REAL_MODEL, "--engine", "transformers", "--dtype", "bfloat16", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "parity of transformers (bfloat16, eager, LoRA on)" in result.stdout
    assert "FAIL:" in result.stdout and "(WRONG)" in result.stdout
    assert "reference: 'The capital of France is Paris.'" in result.stdout


def test_compare_tolerates_only_near_ties() -> None:
    """The verdict's rules on made-up generations: identical, a near-tie taken the other way, a
    wide-gap divergence, a token that is not the runner-up, an end-of-sequence left out."""
    from forge_gateway.parity import MAX_TOKENS, TIE_GAP, Generation, Reference, compare

    eos = 0
    ref_tokens = [[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, eos]]
    reference = Reference(
        prompt_ids=[[1]] * 5,
        tokens=ref_tokens,
        runner_up=[[9, 9, 9, 9]] * 4 + [[9, 9, 9]],
        gaps=[[1.0, 1.0, TIE_GAP / 2, 1.0], [1.0, 1.0, 0.1, 1.0]]
        + [[1.0, 1.0, TIE_GAP / 2, 1.0]] * 2
        + [[1.0] * 3],
        logprobs=[[-0.1] * 4] * 4 + [[-0.1] * 3],
        texts=["ref"] * 5,
    )
    generations = [
        Generation([5, 6, 9, 3], "near-tie", [-0.1, -0.1, -0.1, -0.5]),  # runner-up at a near-tie
        Generation([5, 6, 9, 3], "wide", [-0.1, -0.1, -0.1, -0.5]),  # runner-up, but gap 0.1
        Generation([5, 6, 4, 3], "not runner-up", [-0.1] * 4),  # a third token at a near-tie
        Generation([5, 6, 7, 8], "same", [-0.1, -0.1, -0.1, -0.1 + 1e-5]),
        Generation([5, 6], "no eos in stream", [-0.1, -0.1]),  # the reference ended early on eos
    ]
    prompts = [f"p{i}" for i in range(5)]
    report = compare("made-up", reference, generations, prompts)
    near, wide, third, same, eos_left_out = report.prompts
    assert near.near_tie and near.ok and near.diverged_at == 2 and near.matched == 2
    assert not wide.ok and wide.runner_up and wide.gap == 0.1
    assert not third.ok and not third.runner_up
    assert same.exact and abs(same.drift - 1e-5) < 1e-9
    assert eos_left_out.exact and len(ref_tokens[4]) < MAX_TOKENS
    assert not report.passed and "FAIL" in report.table() and "(WRONG)" in report.table()
    ok = compare("made-up", reference, [generations[0], *[generations[3]] * 3, generations[4]], prompts)
    assert ok.exact == 4 and not ok.passed  # every divergence a near-tie, but fewer than 6 identical
    eight = Reference(
        *(
            getattr(reference, f)[:1] * 8
            for f in ("prompt_ids", "tokens", "runner_up", "gaps", "logprobs", "texts")
        )
    )
    passing = compare("made-up", eight, [generations[0], *[generations[3]] * 7], [f"p{i}" for i in range(8)])
    assert passing.passed and passing.exact == 7 and "PASS: 7/8" in passing.table()
