"""Keyword-free everyday requests for --practical: balanced, deterministic, framings shared
across labels, disjoint from every evaluation set, and always in the encoder's training set."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from forge_plugins.router.train.methods import RouterTrainMethod
from forge_plugins.router.train.practical import practical_examples
from forge_plugins.router.train.recipe import Recipe, build_training_set
from forge_sdk.errors import ConfigurationError

DATA = Path(__file__).parent / "data"
EVALUATION_SETS = (
    "router_fresh.jsonl",
    "router_fresh_plain.jsonl",
    "router_fresh_practical.jsonl",
    "router_stress.jsonl",
)


def _norm(text: str) -> str:
    return re.sub(r"\W+", "", text.lower())


def test_balanced_and_deterministic() -> None:
    filler = ["First sentence of some pasted prose here. A second sentence follows it, also long."]
    rows = practical_examples(80, filler=filler, seed=3)
    assert rows == practical_examples(80, filler=filler, seed=3)
    assert rows != practical_examples(80, filler=filler, seed=4)
    assert Counter(label for _, label in rows) == {"code": 80, "general": 80, "math": 80, "writing": 80}
    assert all(q.strip() and "{" not in q for q, _ in rows), "an unfilled template slot"


def test_framings_are_shared_so_only_the_request_tells_the_label() -> None:
    # "could you help me with ..." or "X does Y when Z, any ideas?" must not give the label away.
    rows = practical_examples(300)

    def openings(label: str) -> set[str]:
        return {" ".join(q.lower().split()[:3]) for q, lab in rows if lab == label}

    assert len(openings("writing") & openings("general")) >= 3
    tails = {
        label: {q.lower().rsplit(",", 1)[-1] for q, lab in rows if lab == label}
        for label in ("code", "general")
    }
    assert " any ideas?" in tails["code"] & tails["general"]


def test_no_item_of_the_evaluation_sets() -> None:
    held = {
        _norm(json.loads(line)["query"])
        for name in EVALUATION_SETS
        for line in (DATA / name).read_text().splitlines()
        if line.strip()
    }
    assert not [q for q, _ in practical_examples(300) if _norm(q) in held]


def test_always_in_the_encoder_set(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    records = [(f"query number {i}", label) for i, label in enumerate(["code", "math"] * 10)]
    recipe = Recipe(domain_docs=0, generated=0, practical=20, encoder_examples=30)
    built = build_training_set(records, data, recipe)
    examples = built.encoder_examples(recipe)
    assert len(built.core) == 80
    assert examples[: len(records) + 80] == [*records, *built.core]
    assert built.tfidf_extra[:80] == built.core
    assert not build_training_set(records, data, Recipe(domain_docs=0, generated=0, practical=0)).core


def test_train_flag(train_sample: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    RouterTrainMethod.add_arguments(parser)
    base = ["--data", str(train_sample), "--output", str(tmp_path), "--no-augment", "--no-encoder"]
    base += ["--domain-docs", "0", "--generated", "0"]
    none = RouterTrainMethod().run(parser.parse_args([*base, "--practical", "0"])).metrics
    some = RouterTrainMethod().run(parser.parse_args([*base, "--practical", "25"])).metrics
    assert some["n_examples"] == none["n_examples"] + 100
    assert some["recipe"]["practical"] == 25
    with pytest.raises(ConfigurationError, match="--practical must be >= 0"):
        RouterTrainMethod().run(parser.parse_args([*base, "--practical", "-1"]))
