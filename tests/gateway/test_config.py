from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forge_gateway.config import load_config
from forge_sdk.errors import ConfigurationError


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "gw.toml"
    toml.write_text('model = "./m"\nport = 9000\n[limits]\nmax_concurrent = 10\nmax_tokens = 100\n')
    env = {"FORGE_PORT": "9100", "FORGE_LIMITS_MAX_CONCURRENT": "20", "FORGE_ENGINE_KIND": "transformers"}
    config = load_config(toml, environ=env, overrides={"port": 9200, "limits": {"max_tokens": None}})
    assert config.port == 9200  # flag beats env beats file
    assert config.limits.max_concurrent == 20  # env beats file
    assert config.limits.max_tokens == 100  # a None flag does not override
    assert config.engine.kind == "transformers"
    assert config.model_name == "m"


def test_yaml_file(tmp_path: Path) -> None:
    yaml_file = tmp_path / "gw.yaml"
    yaml_file.write_text("model: /x/y\nrouter:\n  classifier: keyword\n  options: {threshold: 0.7}\n")
    config = load_config(yaml_file, environ={})
    assert config.router.classifier == "keyword" and config.router.options == {"threshold": 0.7}


@pytest.mark.parametrize(
    ("content", "suffix", "match"),
    [
        ('model = "m"\nprot = 1\n', ".toml", "prot"),
        ('model = "m"\n[limits]\nmax_concurrent = 0\n', ".toml", "max_concurrent"),
        ('model = "m"\nport = "abc"\n', ".toml", "port"),
        ("model = [", ".toml", "not valid TOML"),
        ("model: [", ".yaml", "not valid YAML"),
        ('model = "m"', ".ini", "must end in"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, content: str, suffix: str, match: str) -> None:
    path = tmp_path / f"gw{suffix}"
    path.write_text(content)
    with pytest.raises(ConfigurationError, match=match):
        load_config(path, environ={})


def test_missing_model_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no model given"):
        load_config(None, environ={})
    with pytest.raises(ConfigurationError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml", environ={})


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "gw.toml"
    bad.write_text('model = "m"\nbogus = 1\n')
    proc = subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("forge-gateway: error:")
    assert "bogus" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_help_documents_flags() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "forge_gateway.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0
    for flag in ("--model", "--config", "--engine", "--registry", "--port", "FORGE_"):
        assert flag in proc.stdout
