"""The routing plugin is found through the real installed entry point by a fresh plugin manager."""

from __future__ import annotations

from forge_sdk import Classifier, TrainingMethod, get_plugin_manager, list_plugins
from forge_sdk.plugins import collect


def test_classifiers_and_methods_registered_via_entry_point(monkeypatch) -> None:
    monkeypatch.delenv("FORGE_PLUGINS", raising=False)
    monkeypatch.delenv("FORGE_DISABLE_PLUGINS", raising=False)
    pm = get_plugin_manager()
    classifiers = collect(pm, "register_classifiers", key=lambda cls: cls.name)
    assert {"keyword", "neural", "hybrid"} <= set(classifiers)
    assert all(issubclass(classifiers[n], Classifier) for n in ("keyword", "neural", "hybrid"))
    methods = collect(pm, "register_training_methods", key=lambda cls: cls.name)
    assert {"router", "router-eval"} <= set(methods)
    assert all(issubclass(methods[n], TrainingMethod) for n in ("router", "router-eval"))
    info = {p["name"]: p for p in list_plugins(pm)}
    assert info["routing"]["package"] == "forge-plugins"
    assert "register_classifiers" in info["routing"]["hooks"]


def test_denylist_removes_the_plugin(monkeypatch) -> None:
    monkeypatch.delenv("FORGE_PLUGINS", raising=False)
    monkeypatch.setenv("FORGE_DISABLE_PLUGINS", "routing")
    classifiers = collect(get_plugin_manager(), "register_classifiers", key=lambda cls: cls.name)
    assert "neural" not in classifiers
