"""Which expert serves a specialization when several share it (``forge_sdk.experts.best_expert``).

A trained expert (adapter, standalone model, remote endpoint) outranks an alias of the base model;
then the higher priority, then the most recently registered; the rule that decided is named.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from forge_sdk import RANK_RULES, Classification, Classifier, ExpertModel, ExpertRegistry, best_expert

ALIAS = ExpertModel(name="mathexpert", specialization="math", priority=10)  # the example plugin's
BUILTIN = ExpertModel(name="math", specialization="math")


def _adapter(name: str, *, priority: int = 0, at: float | None = None) -> ExpertModel:
    return ExpertModel(
        name=name,
        specialization="math",
        adapter_path=f"/adapters/{name}",
        priority=priority,
        registered_at=at,
    )


def test_trained_outranks_an_alias_even_of_higher_priority() -> None:
    trained = _adapter("math-smol")
    assert best_expert([BUILTIN, ALIAS, trained], "math") == (trained, "trained>alias")
    for other in (
        ExpertModel(name="m", specialization="math", model_path="/merged"),
        ExpertModel(name="m", specialization="math", endpoint="http://h/v1"),
    ):
        assert best_expert([ALIAS, other], "MATH") == (other, "trained>alias")  # labels fold case


def test_among_trained_priority_then_the_most_recent_wins() -> None:
    old, new = _adapter("old", at=100.0), _adapter("new", at=200.0)
    assert best_expert([old, new, ALIAS], "math") == (new, "recent")
    assert best_expert([new, old], "math") == (new, "recent")
    high = _adapter("high", priority=5, at=50.0)
    assert best_expert([old, new, high], "math") == (high, "priority")
    # No timestamp (a registry file from before registered_at) counts as oldest.
    assert best_expert([_adapter("legacy"), old], "math") == (old, "recent")


def test_aliases_rank_by_priority_then_name_then_order() -> None:
    assert best_expert([BUILTIN, ALIAS], "math") == (ALIAS, "priority")
    twin = ExpertModel(name="sums", specialization="math")
    assert best_expert([twin, BUILTIN], "math") == (BUILTIN, "named")
    other = ExpertModel(name="algebra", specialization="math")
    assert best_expert([twin, other], "math") == (twin, "first")
    assert best_expert([BUILTIN], "math") == (BUILTIN, "only")
    assert best_expert([BUILTIN], "code") is None
    assert {"only", "trained>alias", "priority", "recent", "named", "first"} == set(RANK_RULES)


def test_registry_stamps_registration_and_reads_old_files(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    # A file written before registered_at existed still loads; its experts count as oldest.
    path.write_text(
        json.dumps({"experts": [{"name": "legacy", "specialization": "math", "adapter_path": "/a"}]})
    )
    registry = ExpertRegistry(path)
    assert registry.get("legacy").registered_at is None  # type: ignore[union-attr]
    before = time.time()
    registry.register(_adapter("fresh"))
    stamp = ExpertRegistry(path).get("fresh").registered_at  # type: ignore[union-attr]
    assert stamp is not None and before - 1 <= stamp <= time.time() + 1
    registry.register(BUILTIN)
    assert [e.name for e in ExpertRegistry(path).find_by_specialization("Math")] == [
        "fresh",
        "legacy",
        "math",
    ]
    # Re-registering a name (a retrained expert) makes it the most recent.
    registry.register(_adapter("legacy"))
    assert ExpertRegistry(path).find_by_specialization("math")[0].name == "legacy"


class _ByLabel(Classifier):
    """A real (tiny) classifier: the label is the query's first word."""

    name = "first-word"

    def classify_with_confidence(self, query: str) -> Classification:
        name, rank = self.choose_for_label(query.split()[0])
        return Classification(name, 1.0, "first-word", rank)


def test_classifiers_map_labels_and_keyword_picks_through_the_ranking() -> None:
    trained = _adapter("math-smol", at=1.0)
    clf = _ByLabel([BUILTIN, ALIAS, trained, ExpertModel(name="general")])
    decision = clf.classify_with_confidence("math: what is 2+2?")
    assert (decision.expert, decision.rank) == ("general", "")  # "math:" is no label
    decision = clf.classify_with_confidence("math what is 2+2?")
    assert (decision.expert, decision.rank) == ("math-smol", "trained>alias")
    assert clf.expert_for_label("writing") == "general"
    # A classifier that picked an alias directly (by its keywords) gives way to the trained expert;
    # a trained pick stands.
    assert clf.settle("mathexpert") == ("math-smol", "trained>alias")
    assert clf.settle("math-smol") == ("math-smol", "")
    assert clf.settle("general") == ("general", "")
    without = _ByLabel([BUILTIN, ALIAS])
    assert without.choose_for_label("math") == ("mathexpert", "priority")
    assert without.settle("math") == ("math", "")
