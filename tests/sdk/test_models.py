"""Catalogue, GGUF import and the model cache (forge_sdk.models) on the real SmolLM2 GGUF."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forge_sdk.errors import ConfigurationError, ModelError
from forge_sdk.models import (
    CATALOGUE,
    cache_dir,
    convert_gguf,
    find_gguf,
    pull_model,
    pulled_gguf,
    resolve_model,
)
from tests.conftest import REAL_MODEL


def test_sdk_stays_light() -> None:
    code = "import sys, forge_sdk.models; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FORGE_CACHE_DIR", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FORGE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "largeforge"


def test_plain_names_pass_through(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)  # a HF folder, even next to a .gguf
    assert find_gguf(tmp_path) is None


def test_folder_with_several_ggufs_is_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.gguf").write_bytes(b"y")
    with pytest.raises(ConfigurationError, match="several GGUF files"):
        resolve_model(str(tmp_path))


def test_unknown_catalogue_name() -> None:
    with pytest.raises(ConfigurationError, match="smollm2-135m-instruct"):
        pull_model("no-such-model")


def test_garbage_gguf_is_one_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGE_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(256))
    with pytest.raises(ModelError, match="cannot read GGUF file"):
        convert_gguf(bad)
    assert not list((tmp_path / "cache" / "gguf").glob("*/config.json"))  # nothing half-written kept


def test_pull_is_cached_and_gguf_paths_resolve_to_it(real_model_dir: Path, tmp_path: Path) -> None:
    assert REAL_MODEL in CATALOGUE
    assert (real_model_dir / "config.json").is_file() and (real_model_dir / "model.safetensors").is_file()
    # Pulled already: the same folder, at once, whether named, pulled again or given as the GGUF.
    assert pull_model(REAL_MODEL) == real_model_dir
    assert resolve_model(REAL_MODEL) == str(real_model_dir)
    gguf_file = pulled_gguf(REAL_MODEL)
    assert gguf_file is not None
    assert resolve_model(str(gguf_file)) == str(real_model_dir)
    # Keyed by content, not name: a renamed copy in its own folder finds the same conversion.
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy(gguf_file, folder / "renamed.gguf")
    assert resolve_model(str(folder)) == str(real_model_dir)


def test_models_cli(real_model_dir: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "forge_gateway.cli", "models"]
    listed = subprocess.run([*cmd, "list"], capture_output=True, text=True, check=True, env=env)
    assert REAL_MODEL in listed.stdout and str(real_model_dir) in listed.stdout
    pulled = subprocess.run([*cmd, "pull", REAL_MODEL], capture_output=True, text=True, check=True, env=env)
    assert pulled.stdout.strip() == str(real_model_dir)  # stdout is only the path: scriptable
    bad = subprocess.run([*cmd, "pull", "nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.startswith("forge-gateway: error: unknown catalogue model")
