"""ExpertCatalog: merging plugin and registry experts, hot reload, ``model`` resolution, fallback."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec
import pytest

from forge_gateway.routing import AUTO, ExpertCatalog
from forge_sdk.classifiers import Classification, Classifier
from forge_sdk.errors import ConfigurationError, ExpertUnavailableError, ModelNotFoundError
from forge_sdk.experts import DEFAULT_EXPERTS, ExpertModel, ExpertRegistry


class FirstKeyword(Classifier):
    """A real (tiny) classifier: the first expert with a keyword in the query, by specialization."""

    name = "first-keyword"

    def classify_with_confidence(self, query: str) -> Classification:
        words = set(query.lower().split())
        for expert in self.experts.values():
            if words & {k.lower() for k in expert.keywords}:
                return Classification(self.expert_for_label(expert.specialization), 0.9, "keyword")
        return Classification(self.default_expert, 0.2, "default")


def _catalog(registry: Path | None = None, *, lora: bool = True, default: str = "general") -> ExpertCatalog:
    catalog = ExpertCatalog(
        "tiny",
        list(DEFAULT_EXPERTS),
        str(registry) if registry else None,
        lora_enabled=lora,
        default_expert=default,
    )
    catalog.classifier = FirstKeyword(list(catalog.experts.values()))
    return catalog


def _write(path: Path, *experts: ExpertModel) -> None:
    """Write the registry file the way ``forge-train --register`` does (atomically), bumping mtime."""
    registry = ExpertRegistry(None)
    for expert in experts:
        registry.register(expert, save=False)
    before = path.stat().st_mtime if path.exists() else 0.0
    registry.save(path)
    # Coarse-mtime filesystems: make sure the change is visible as a new mtime.
    if path.stat().st_mtime == before:
        os.utime(path, (before + 1, before + 1))


ADAPTER = ExpertModel(
    name="sql", adapter_path="/adapters/sql", specialization="database", keywords=["postgres"]
)
REMOTE = ExpertModel(name="legal", endpoint="http://127.0.0.1:9/v1", specialization="legal", keywords=["law"])


def test_plugin_and_registry_experts_merge_and_registry_wins(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    _write(path, ADAPTER, ExpertModel(name="code", description="from the registry", endpoint="http://x/v1"))
    catalog = _catalog(path)
    assert {"general", "code", "math", "writing", "sql"} <= set(catalog.experts)
    assert catalog.experts["code"].description == "from the registry"
    assert catalog.experts["code"].kind == "remote"


def test_resolve_names_base_experts_and_unknown() -> None:
    catalog = _catalog()
    base = catalog.resolve("tiny", lambda: pytest.fail("no classification for a named model"))
    assert (base.expert, base.reason, base.expert_name) == (None, "requested", "tiny")
    math = catalog.resolve("math", lambda: "")
    assert math.expert is not None and math.expert.name == "math" and math.reason == "requested"
    with pytest.raises(ModelNotFoundError) as info:
        catalog.resolve("nope", lambda: "")
    assert "nope" in info.value.message and "tiny" in info.value.message
    assert info.value.status_code == 404 and info.value.param == "model"


def test_adapter_expert_needs_lora_and_standalone_is_not_servable(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    _write(path, ADAPTER, ExpertModel(name="merged", model_path="/models/merged"))
    with_lora = _catalog(path)
    target = with_lora.resolve("sql", lambda: "")
    assert target.lora is not None and target.lora.path == "/adapters/sql" and target.lora.lora_id > 0
    assert "sql" in with_lora.model_names() and "merged" not in with_lora.model_names()
    without = _catalog(path, lora=False)
    with pytest.raises(ModelNotFoundError, match="LoRA"):
        without.resolve("sql", lambda: "")
    with pytest.raises(ModelNotFoundError, match="cannot be served"):
        without.resolve("merged", lambda: "")
    assert without.model_names() == ["tiny", "general", "code", "math", "writing", AUTO]


def test_auto_routes_through_the_classifier_with_reason_and_confidence() -> None:
    catalog = _catalog()
    target = catalog.resolve(AUTO, lambda: "please solve this equation")
    assert target.expert_name == "math"
    assert target.reason == "router:first-keyword:keyword" and target.confidence == pytest.approx(0.9)
    other = catalog.route("tell me about the weather")
    assert other.expert_name == "general" and other.reason == "router:first-keyword:default"


def test_higher_priority_plugin_expert_takes_over_a_specialization() -> None:
    mathexpert = ExpertModel(name="mathexpert", specialization="math", priority=10, keywords=["integral"])
    catalog = ExpertCatalog("tiny", [*DEFAULT_EXPERTS, mathexpert], None, lora_enabled=False)
    catalog.classifier = FirstKeyword(list(catalog.experts.values()))
    assert catalog.route("solve this equation").expert_name == "mathexpert"


def test_auto_without_classifier_serves_the_base_model() -> None:
    catalog = ExpertCatalog("tiny", list(DEFAULT_EXPERTS), None, lora_enabled=False)
    target = catalog.resolve(AUTO, lambda: "solve x")
    assert target.expert is None and target.reason == "router:none"


def test_classifier_choosing_an_unservable_expert_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    _write(path, ADAPTER)
    catalog = _catalog(path, lora=False)
    target = catalog.route("tune my postgres")
    assert target.expert_name == "general" and target.reason == "fallback:sql-unservable"


def test_registry_change_is_picked_up_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    _write(path, ADAPTER)
    catalog = _catalog(path)
    seen: list[tuple[set[str], set[str]]] = []
    catalog.on_change.append(lambda old, new: seen.append((set(old), set(new))))
    assert catalog.refresh(min_interval=0) is False  # unchanged file: nothing to do
    _write(path, ADAPTER, REMOTE)
    # Checked a moment ago: the file is not even stat'ed again within the interval.
    assert catalog.refresh(min_interval=60) is False and "legal" not in catalog.experts
    assert catalog.refresh(min_interval=0) is True
    assert "legal" in catalog.experts and seen[-1][1] - seen[-1][0] == {"legal"}
    # The classifier sees the new set too.
    assert catalog.route("what does the law say").expert_name == "legal"
    # A request path call (default interval 0.5 s) picks the next change up without force.
    _write(path, REMOTE)
    time.sleep(0.55)
    with pytest.raises(ModelNotFoundError):
        catalog.resolve("sql", lambda: "")
    path.unlink()
    assert catalog.refresh(force=True) is True and "legal" not in catalog.experts
    assert "general" in catalog.experts  # plugin experts stay


def test_broken_registry_edit_keeps_the_last_good_set(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    _write(path, ADAPTER)
    catalog = _catalog(path)
    path.write_text('{"experts": [{"name": "x", "bogus_field": 1}]}')
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert catalog.refresh(min_interval=0) is False
    assert "sql" in catalog.experts
    _write(path, ExpertModel(name="tiny", endpoint="http://x/v1"))  # clashes with the base model name
    assert catalog.refresh(min_interval=0) is False
    assert "sql" in catalog.experts and catalog.resolve("tiny", lambda: "").expert is None
    _write(path, REMOTE)
    assert catalog.refresh(min_interval=0) is True and set(catalog.experts) >= {"legal"}


def test_register_and_unregister_persist_without_clobbering_outside_edits(tmp_path: Path) -> None:
    path = tmp_path / "experts.json"
    catalog = _catalog(path)
    catalog.register(ADAPTER)
    saved = ExpertRegistry(path).get("sql")
    assert saved is not None and saved.registered_at is not None  # stamped when registered
    assert msgspec.structs.replace(saved, registered_at=None) == ADAPTER
    _write(path, ADAPTER, REMOTE)  # another process (forge-train --register) adds an expert
    catalog.register(ExpertModel(name="poems", specialization="writing"))
    on_disk = ExpertRegistry(path)
    assert {"sql", "legal", "poems"} <= set(on_disk.experts)
    catalog.unregister("sql")
    assert "sql" not in ExpertRegistry(path).experts and "sql" not in catalog.experts
    catalog.unregister("math")  # a plugin expert: removed at runtime only
    assert "math" not in catalog.experts
    with pytest.raises(ModelNotFoundError):
        catalog.unregister("math")
    with pytest.raises(ConfigurationError):
        catalog.register(ExpertModel(name="tiny", endpoint="http://x/v1"))


def test_lora_ids_are_stable_per_name_and_folder(tmp_path: Path) -> None:
    catalog = _catalog()
    first = catalog.lora_for(ADAPTER)
    again = catalog.lora_for(ExpertModel(name="sql", adapter_path="/adapters/sql", description="edited"))
    moved = catalog.lora_for(ExpertModel(name="sql", adapter_path="/adapters/sql-v2"))
    other = catalog.lora_for(ExpertModel(name="poems", adapter_path="/adapters/poems"))
    assert first is not None and again == first
    assert moved is not None and other is not None
    assert len({first.lora_id, moved.lora_id, other.lora_id}) == 3
    assert catalog.loaded_loras("sql") == [first, moved]
    assert catalog.lora_for(REMOTE) is None


def test_fallback_rules(tmp_path: Path) -> None:
    catalog = _catalog()
    remote = ExpertModel(name="legal", endpoint="http://x/v1")
    from forge_gateway.routing import Target

    target = catalog.fallback(Target("legal", remote, "requested"), "timeout")
    assert target.expert_name == "general" and target.reason == "fallback:legal-timeout"
    with pytest.raises(ExpertUnavailableError):
        catalog.fallback(Target("general", catalog.experts["general"], "requested"), "timeout")
    no_default = _catalog(default="missing")
    assert no_default.fallback(Target("legal", remote, "requested"), "error").expert is None
    path = tmp_path / "experts.json"
    _write(path, ExpertModel(name="general", endpoint="http://y/v1"))
    remote_default = _catalog(path)
    with pytest.raises(ExpertUnavailableError, match="no local fallback"):
        remote_default.fallback(Target("legal", remote, "requested"), "timeout")
