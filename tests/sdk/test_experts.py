from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from forge_sdk import ExpertModel, ExpertRegistry, create_default_registry
from forge_sdk.errors import ConfigurationError


def test_default_registry_has_sdd_experts(tmp_path: Path) -> None:
    registry = create_default_registry(tmp_path / "experts.json")
    assert [e.name for e in registry.list()] == ["general", "code", "math", "writing"]
    on_disk = json.loads((tmp_path / "experts.json").read_text())
    assert [e["name"] for e in on_disk["experts"]] == ["general", "code", "math", "writing"]


def test_register_get_unregister_persist(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    registry = ExpertRegistry(path)
    registry.register(
        ExpertModel(
            name="sql",
            specialization="code",
            keywords=["sql", "join"],
            adapter_path="/a",
            trained_on="x.jsonl",
            training_steps=50,
        )
    )
    reloaded = ExpertRegistry(path)
    expert = reloaded.get("sql")
    assert expert is not None and expert.kind == "adapter" and expert.training_steps == 50
    reloaded.unregister("sql")
    assert ExpertRegistry(path).get("sql") is None
    with pytest.raises(KeyError):
        reloaded.unregister("sql")


def test_find_by_keyword_is_whole_word(tmp_path: Path) -> None:
    registry = create_default_registry()
    assert [e.name for e in registry.find_by_keyword("math")] == ["math"]
    assert registry.find_by_keyword("mat") == []
    assert [e.name for e in registry.find_by_specialization("CODE")] == ["code"]


def test_expert_kinds() -> None:
    assert ExpertModel(name="a").kind == "base"
    assert ExpertModel(name="a", adapter_path="/x").kind == "adapter"
    assert ExpertModel(name="a", endpoint="http://h/v1").kind == "remote"
    assert ExpertModel(name="a", model_path="/m", quantization="awq").kind == "standalone"


def test_invalid_registry_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"experts": [{"name": "x", "colour": "red"}]}')
    with pytest.raises(ConfigurationError, match="colour"):
        ExpertRegistry(path)
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="invalid expert registry"):
        ExpertRegistry(path)
    with pytest.raises(ConfigurationError, match="name"):
        ExpertModel.from_dict({"name": "bad name with spaces"})


def test_save_is_atomic_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.json"
    registry = create_default_registry(path)
    before = path.read_bytes()

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        registry.register(ExpertModel(name="new"))
    assert path.read_bytes() == before  # the old file is intact
    # No temp file left behind; the lock file is a permanent sidecar (deleting it would race other lockers).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.json.lock"]
