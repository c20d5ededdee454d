"""forge-train router / router-eval end to end on a small real sample, and their data errors."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from forge_plugins import NeuralClassifier, RouterModel
from forge_plugins.router.train.methods import RouterEvalMethod, RouterTrainMethod
from forge_sdk import DEFAULT_EXPERTS, ExpertModel
from forge_sdk.errors import DataError


def _args(method: type, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    method.add_arguments(parser)
    return parser.parse_args(argv)


SMALL = ["--domain-docs", "0", "--generated", "0", "--practical", "0"]
"""Recipe flags that keep a test's training to seconds (the full recipe takes minutes)."""


@pytest.fixture(scope="module")
def trained(train_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full pipeline on 160 rows: tf-idf model, a one-epoch encoder on 96 examples, ONNX int8."""
    out = tmp_path_factory.mktemp("router-model")
    argv = [
        "--data",
        str(train_sample),
        "--output",
        str(out),
        *SMALL,
        "--encoder-examples",
        "96",
        "--epochs",
        "1",
    ]
    result = RouterTrainMethod().run(_args(RouterTrainMethod, argv))
    assert result.output_dir == str(out)
    assert result.metrics["n_records"] == 160
    return out


def test_train_writes_a_loadable_model(trained: Path) -> None:
    assert {p.name for p in trained.iterdir()} == {
        "router.npz",
        "router.json",
        "encoder.onnx",
        "tokenizer.json",
    }
    model = RouterModel.load(trained)
    assert model.labels == ["code", "general", "math", "writing"]
    assert model.meta["encoder"]["n_examples"] == 160  # every labelled row, even above the cap
    assert model.meta["recipe"]["epochs"] == 1
    assert model.meta["combine"]["temperature"]["encoder"] > 0
    clf = NeuralClassifier(DEFAULT_EXPERTS, model_dir=str(trained), threshold=0.0)
    assert clf.heavy and clf.model.encoder is not None
    assert clf.classify("Write a function to find the maximum of three numbers in Python.") == "code"
    tfidf_only = NeuralClassifier(DEFAULT_EXPERTS, model_dir=str(trained), encoder=False)
    assert not tfidf_only.heavy and tfidf_only.model.encoder is None


def test_tfidf_only_training_is_deterministic_and_drops_a_stale_encoder(
    train_sample: Path, trained: Path, tmp_path: Path
) -> None:
    shutil.copytree(trained, tmp_path / "m")
    RouterTrainMethod().run(
        _args(
            RouterTrainMethod,
            ["--data", str(train_sample), "--output", str(tmp_path / "m"), *SMALL, "--no-encoder"],
        )
    )
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"router.npz", "router.json"}
    RouterTrainMethod().run(
        _args(
            RouterTrainMethod,
            ["--data", str(train_sample), "--output", str(tmp_path / "n"), *SMALL, "--no-encoder"],
        )
    )
    a, b = RouterModel.load(tmp_path / "m"), RouterModel.load(tmp_path / "n")
    assert a.vocab == b.vocab
    assert (a.coef == b.coef).all()


def test_eval_prints_the_report(trained: Path, stress_set: list, capsys: pytest.CaptureFixture[str]) -> None:
    data = Path(__file__).parent / "data" / "router_stress.jsonl"
    RouterEvalMethod().run(
        _args(RouterEvalMethod, ["--model", str(trained), "--data", str(data), "--classifier", "hybrid"])
    )
    report = json.loads(capsys.readouterr().out)["router_stress.jsonl"]
    assert {"accuracy", "macro_f1", "per_class", "confusion", "latency", "n"} <= set(report)
    assert report["n"] == len(stress_set) == report["latency"]["n"]
    assert set(report["per_class"]) == {"code", "general", "math", "writing"}
    assert sum(sum(row.values()) for row in report["confusion"].values()) == len(stress_set)
    assert 0 < report["latency"]["cpu_p50_ms"] <= report["latency"]["cpu_p99_ms"]
    assert 0.0 <= report["macro_f1"] <= 1.0
    assert report["accuracy"] > 0.4  # 160 training rows still beat chance (0.25) clearly
    assert report["encoder"] is True and report["classifier"] == "hybrid"


def test_from_registry_teaches_a_new_specialization(train_sample: Path, tmp_path: Path) -> None:
    # An expert trained by forge-train on legal chat data: the router learns its label from that data.
    topics = [
        "tenancy deposit",
        "employment contract",
        "small claims court",
        "copyright notice",
        "will and probate",
    ]
    verbs = [
        "Is it legal for",
        "What are my rights when",
        "Can I sue if",
        "Do I need a lawyer when",
        "Who is liable if",
    ]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{v} my {t} case number {i} is disputed?"},
                {"role": "assistant", "content": "It depends."},
            ]
        }
        for i, (v, t) in enumerate((v, t) for v in verbs for t in topics)
    ]
    (tmp_path / "adapter").mkdir()
    data = tmp_path / "legal.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "adapter" / "manifest.json").write_text(json.dumps({"dataset_path": str(data)}))
    registry = tmp_path / "experts.json"
    registry.write_text(
        json.dumps(
            {
                "experts": [
                    {"name": "lawyer", "adapter_path": str(tmp_path / "adapter"), "specialization": "legal"}
                ]
            }
        )
    )
    out = tmp_path / "m"
    result = RouterTrainMethod().run(
        _args(
            RouterTrainMethod,
            [
                "--data",
                str(train_sample),
                "--from-registry",
                str(registry),
                "--output",
                str(out),
                *SMALL,
                "--no-encoder",
            ],
        )
    )
    assert result.metrics["registry"] == {
        "lawyer": {"dataset": "legal.jsonl", "label": "legal", "examples": 25}
    }
    assert RouterModel.load(out).labels == ["code", "general", "legal", "math", "writing"]
    lawyer = ExpertModel(name="lawyer", specialization="legal")
    clf = NeuralClassifier([*DEFAULT_EXPERTS, lawyer], model_dir=str(out), threshold=0.0)
    assert clf.classify("Can I sue if my tenancy deposit is not returned?") == "lawyer"


def test_from_registry_without_data_is_a_data_error(tmp_path: Path) -> None:
    registry = tmp_path / "experts.json"
    registry.write_text(json.dumps({"experts": [{"name": "x", "specialization": "legal"}]}))
    with pytest.raises(DataError, match="no registered expert has readable training data"):
        RouterTrainMethod().run(
            _args(RouterTrainMethod, ["--from-registry", str(registry), "--output", str(tmp_path / "m")])
        )
    with pytest.raises(DataError, match="registry file not found"):
        RouterTrainMethod().run(
            _args(
                RouterTrainMethod,
                ["--from-registry", str(tmp_path / "nope.json"), "--output", str(tmp_path / "m")],
            )
        )


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
            _args(
                RouterTrainMethod,
                ["--data", str(data), "--output", str(tmp_path / "m"), *SMALL, "--no-encoder"],
            )
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
    from forge_plugins.router.train.data import load_chat_prompts

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
