"""Plugin discovery through a real entry point of a package installed with pip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from forge_sdk import get_plugin_manager, hookimpl, list_plugins
from forge_sdk.errors import ConfigurationError
from forge_sdk.plugins import collect

PLUGIN_SOURCE = """
from forge_sdk import ExpertModel, hookimpl

@hookimpl
def register_experts(register):
    register(ExpertModel(name="tinyplug", specialization="code", keywords=["zig"]))
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-install a tiny plugin package into its own target folder (not the shared venv)."""
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    (src / "forge_tinyplug").mkdir(parents=True)
    (src / "forge_tinyplug" / "__init__.py").write_text(PLUGIN_SOURCE)
    (src / "pyproject.toml").write_text(
        textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "forge-tinyplug"
        version = "1.2.3"
        [project.entry-points.forge]
        tinyplug = "forge_tinyplug"
    """)
    )
    target = root / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
    )
    return target


def _discover(site: Path, env_extra: dict[str, str] | None = None) -> dict:
    code = textwrap.dedent("""
        import json
        from forge_sdk import get_plugin_manager, list_plugins
        from forge_sdk.plugins import collect
        pm = get_plugin_manager()
        experts = collect(pm, "register_experts", key=lambda e: e.name)
        print(json.dumps({"plugins": list_plugins(pm), "experts": sorted(experts)}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("FORGE_PLUGINS", "FORGE_DISABLE_PLUGINS")}
    env.update(PYTHONPATH=str(site), **(env_extra or {}))
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_installed_plugin_is_discovered(installed_plugin: Path) -> None:
    found = _discover(installed_plugin)
    plugin = next(p for p in found["plugins"] if p["name"] == "tinyplug")
    assert plugin["package"] == "forge-tinyplug" and plugin["version"] == "1.2.3"
    assert plugin["hooks"] == ["register_experts"]
    assert "tinyplug" in found["experts"]


def test_allowlist_limits_loaded_plugins(installed_plugin: Path) -> None:
    found = _discover(installed_plugin, {"FORGE_PLUGINS": "tinyplug"})
    assert [p["name"] for p in found["plugins"]] == ["tinyplug"]
    assert found["experts"] == ["tinyplug"]
    found = _discover(installed_plugin, {"FORGE_DISABLE_PLUGINS": "tinyplug"})
    assert "tinyplug" not in found["experts"]


def test_fresh_manager_and_duplicate_names() -> None:
    class Twice:
        @hookimpl
        def register_experts(self, register):  # type: ignore[no-untyped-def]
            from forge_sdk import ExpertModel

            register(ExpertModel(name="dup"))
            register(ExpertModel(name="dup"))

    pm = get_plugin_manager(load_entrypoints=False, plugins=[Twice()])
    with pytest.raises(ConfigurationError, match="registered twice"):
        collect(pm, "register_experts", key=lambda e: e.name)
    assert get_plugin_manager(load_entrypoints=False).get_plugins() == set()
    assert list_plugins(get_plugin_manager(load_entrypoints=False)) == []
