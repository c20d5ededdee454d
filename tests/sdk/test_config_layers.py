"""The SDK's layered config rules, shared by forge-gateway and forge-train: file < env < flags."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from forge_sdk.config import env_layer, load_layered
from forge_sdk.errors import ConfigurationError


class Inner(msgspec.Struct, forbid_unknown_fields=True):
    r: int = 8
    """A nested number."""
    names: list[str] = msgspec.field(default_factory=list)
    """A nested list."""


class Outer(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    """Required."""
    lr: float = 1e-3
    """A float."""
    flag: bool = False
    """A boolean."""
    inner: Inner = msgspec.field(default_factory=Inner)
    """A nested table."""


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('model = "m"\nlr = 0.5\n[inner]\nr = 2\n')
    env = env_layer(
        {"X_LR": "1e-4", "X_FLAG": "true", "X_INNER_R": "4", "X_INNER_NAMES": '["a", "b"]', "Y_LR": "9"},
        "X_",
        Outer.__struct_fields__,
        ["inner"],
    )
    config = load_layered(Outer, file=path, env=env, overrides={"inner": {"r": 16}, "lr": None})
    assert config.lr == 1e-4 and config.flag is True  # env strings converted; a None flag is not given
    assert config.inner.r == 16 and config.inner.names == ["a", "b"]  # flag beats env; JSON lists


def test_one_line_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ninner:\n  r: many\n")
    with pytest.raises(ConfigurationError, match=r"in .*c\.yaml: field 'inner\.r': Expected `int`") as info:
        load_layered(Outer, file=path)
    assert "\n" not in info.value.message
    with pytest.raises(ConfigurationError, match="field 'model' is required"):
        load_layered(Outer)
    with pytest.raises(ConfigurationError, match=r"unknown extension '\.ini'"):
        load_layered(Outer, file=tmp_path / "c.ini")
