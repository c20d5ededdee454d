"""Generated examples for --generated: balanced, deterministic, topic-bearing, disjoint from eval sets."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from forge_plugins.router.train.generated import generated_examples
from forge_plugins.router.train.methods import RouterTrainMethod
from forge_sdk.errors import ConfigurationError

DATA = Path(__file__).parent / "data"


def _norm(text: str) -> str:
    return re.sub(r"\W+", "", text.lower())


def test_balanced_distinct_and_deterministic() -> None:
    rows = generated_examples(120, seed=7)
    assert rows == generated_examples(120, seed=7)
    assert rows != generated_examples(120, seed=8)
    assert Counter(label for _, label in rows) == {"code": 120, "general": 120, "math": 120, "writing": 120}
    for label in ("code", "general", "writing"):
        texts = [q for q, lab in rows if lab == label]
        assert len(set(texts)) == len(texts)


def test_code_and_general_share_templates() -> None:
    # The question wording must not give the label away: only the topic should.
    rows = generated_examples(300)
    openings = {
        label: Counter(q.lower().split()[0] for q, lab in rows if lab == label)
        for label in ("code", "general")
    }
    shared = set(openings["code"]) & set(openings["general"])
    assert len(shared) >= 6


def test_no_item_of_the_evaluation_sets() -> None:
    held = {
        _norm(json.loads(line)["query"])
        for name in ("router_fresh.jsonl", "router_stress.jsonl")
        for line in (DATA / name).read_text().splitlines()
        if line.strip()
    }
    assert not [q for q, _ in generated_examples(300) if _norm(q) in held]


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    RouterTrainMethod.add_arguments(parser)
    return parser.parse_args(argv)


def test_train_flag_adds_examples(train_sample: Path, tmp_path: Path) -> None:
    base = [
        "--data",
        str(train_sample),
        "--output",
        str(tmp_path),
        "--no-augment",
        "--no-encoder",
        "--domain-docs",
        "0",
    ]
    plain = RouterTrainMethod().run(_args([*base, "--generated", "0"])).metrics
    more = RouterTrainMethod().run(_args([*base, "--generated", "50"])).metrics
    assert more["n_examples"] == plain["n_examples"] + 200
    assert more["recipe"]["generated"] == 50
    with pytest.raises(ConfigurationError, match="--generated must be >= 0"):
        RouterTrainMethod().run(_args([*base, "--generated", "-1"]))
