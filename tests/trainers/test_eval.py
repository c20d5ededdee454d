"""forge-train eval: answer-token NLL, checked against a plain full-logits cross-entropy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forge_sdk.errors import InferenceError
from forge_train.evaluate import _answer_logprobs, local_answer_nll

ROWS = [
    {"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant", "content": "4"}]},
    {"prompt": "Name a colour.", "response": "Blue is a colour."},
    {"instruction": "Say hi", "input": "", "output": "Hi there!"},
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_local_nll_matches_full_cross_entropy(tiny_model_dir: Path, data: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forge_train.chat_labels import tokenize_chat
    from forge_train.data import load_sft_dataset

    result = local_answer_nll(str(tiny_model_dir), str(data))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for row in load_sft_dataset(str(data)):
        enc = tokenize_chat(tok, row["messages"])
        ids, labels = torch.tensor([enc["input_ids"]]), torch.tensor([enc["labels"]])
        with torch.no_grad():
            logits = model(ids).logits
        total += float(
            torch.nn.functional.cross_entropy(
                logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum"
            )
        )
        count += int((labels[0, 1:] != -100).sum())
    assert result.conversations == 3
    assert result.answer_tokens == count
    assert result.nll == pytest.approx(total / count, rel=1e-4)


def test_eval_cli(tiny_model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable,
        "-m",
        "forge_train.cli",
        "eval",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
    ]
    done = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, check=True)
    assert "eval done: nll" in done.stdout
    assert json.loads(out.read_text())["conversations"] == 3
    bad = subprocess.run([*cmd[:-2], "--data", str(tmp_path / "nope.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no such file" in bad.stderr


def test_gateway_logprobs_count_answer_offsets_only() -> None:
    text = "<u>hi</u><a>yes</a>"
    spans = [(text.index("yes"), len(text))]
    body = {
        "choices": [
            {
                "logprobs": {
                    "text_offset": [0, 3, 9, 12, 15, len(text)],
                    "token_logprobs": [None, -1.0, -2.0, -0.5, -0.25, -9.0],
                }
            }
        ]
    }
    assert _answer_logprobs(body, spans, len(text)) == (0.75, 2)  # the generated token is ignored
    with pytest.raises(InferenceError, match="echo"):
        _answer_logprobs({"choices": [{"logprobs": None}]}, spans, len(text))
