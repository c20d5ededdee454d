"""forge-train router / router-eval end to end on a small real sample, and their data errors."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from forge_plugins import NeuralClassifier, RouterModel
from forge_plugins.router.methods import RouterEvalMethod, RouterTrainMethod
from forge_sdk import DEFAULT_EXPERTS
from forge_sdk.errors import DataError


def _args(method: type, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    method.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def trained(train_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("router-model")
    result = RouterTrainMethod().run(
        _args(RouterTrainMethod, ["--data", str(train_sample), "--output", str(out)])
    )
    assert result.output_dir == str(out)
    assert result.metrics["n_records"] == 160
    return out


def test_train_writes_a_loadable_model(trained: Path) -> None:
    assert {p.name for p in trained.iterdir()} == {"router.npz", "router.json"}
    model = RouterModel.load(trained)
    assert model.labels == ["code", "general", "math", "writing"]
    clf = NeuralClassifier(DEFAULT_EXPERTS, model_dir=str(trained))
    assert clf.classify("Write a function to find the maximum of three numbers in Python.") == "code"


def test_training_is_deterministic(train_sample: Path, trained: Path, tmp_path: Path) -> None:
    RouterTrainMethod().run(
        _args(RouterTrainMethod, ["--data", str(train_sample), "--output", str(tmp_path)])
    )
    a, b = RouterModel.load(trained), RouterModel.load(tmp_path)
    assert a.vocab == b.vocab
    assert (a.coef == b.coef).all()


def test_eval_prints_the_report(trained: Path, stress_set: list, capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(__file__).parent / "data" / "router_stress.jsonl"
    result = RouterEvalMethod().run(_args(RouterEvalMethod, ["--model", str(trained), "--data", str(data)]))
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"accuracy", "macro_f1", "per_class", "n"}
    assert report["n"] == len(stress_set) == result.metrics["n"]
    assert set(report["per_class"]) == {"code", "general", "math", "writing"}
    assert 0.0 <= report["macro_f1"] <= 1.0
    assert report["accuracy"] > 0.4  # 160 training rows still beat chance (0.25) clearly


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"query": "a", "label": "code"}\n{"query": "b", "label": "math"}\nnot json\n',
            r"\.jsonl:3: invalid JSON",
        ),
        ('{"query": "a", "label": "code"}\n{"label": "math"}\n', r"\.jsonl:2: 'query' must be"),
        ('{"query": "a", "label": ""}\n', r"\.jsonl:1: 'label' must be"),
        ('["query", "label"]\n', r"\.jsonl:1: expected a JSON object"),
        ("\n\n", "no records"),
        ('{"query": "a", "label": "code"}\n{"query": "b", "label": "code"}\n', "at least two labels"),
    ],
)
def test_bad_data_errors(tmp_path: Path, content: str, message: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    with pytest.raises(DataError, match=message):
        RouterTrainMethod().run(
            _args(RouterTrainMethod, ["--data", str(data), "--output", str(tmp_path / "m")])
        )


def test_missing_file_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        RouterEvalMethod().run(_args(RouterEvalMethod, ["--data", str(tmp_path / "nope.jsonl")]))


@pytest.mark.skipif(shutil.which("forge-train") is None, reason="forge-train CLI not installed")
def test_cli_bad_data_is_one_line(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"query": "fine", "label": "code"}\n{"query": 3, "label": "math"}\n')
    proc = subprocess.run(
        ["forge-train", "router-eval", "--data", str(data)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"{data}:2" in proc.stderr


def test_chat_prompts_are_sampled_opening_turns(tmp_path: Path) -> None:
    from forge_plugins.router.data import load_chat_prompts

    data = tmp_path / "chat.jsonl"
    rows = [
        {"prompt_messages": [{"role": "user", "content": f"How do I look after houseplant number {i}?"}]}
        for i in range(5)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    picked = load_chat_prompts(data, 3)
    assert len(set(picked)) == 3 and picked == load_chat_prompts(data, 3)
    with pytest.raises(DataError, match="only 5 distinct"):
        load_chat_prompts(data, 6)
    data.write_text(json.dumps(rows[0]) + '\n{"prompt": "no messages"}\n')
    with pytest.raises(DataError, match=r"chat\.jsonl:2: expected 'prompt_messages'"):
        load_chat_prompts(data, 1)
