"""The documentation's generated reference pages (docs/hooks/reference.py) say what the code says.

``mkdocs build --strict`` in scripts/test.sh runs the hook on the real pages; these tests hold its
promises directly: every config field, with its env var and docstring, is on the page; a field
without a docstring is a warning (so the strict build fails); every route of the app is listed
with its scope.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

from forge_gateway.config import GatewayConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("forge_docs_reference", ROOT / "docs/hooks/reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gateway_config_page_lists_every_field_with_env_and_docstring(hook: ModuleType) -> None:
    page = hook._render_config("forge_gateway.config:GatewayConfig env=FORGE_", "test")
    for section in ("engine", "router", "limits", "auth", "rate_limit", "api"):
        assert f"### `[{section}]`" in page
        sub = type(getattr(GatewayConfig(model="x"), section))
        for name in msgspec.structs.fields(sub):
            assert f"`{section}.{name.name}`<br><small>`FORGE_{section.upper()}_{name.name.upper()}`" in page
    assert "`model`<br><small>`FORGE_MODEL`</small>" in page
    # A docstring and a default from the code itself, not a copy.
    assert "Requests generating at once (SDD: 100); more wait in the queue." in page
    assert "| `limits.max_concurrent`" in page and "| 100 |" in page


def test_own_lists_only_the_fields_the_class_defines(hook: ModuleType) -> None:
    page = hook._render_config("forge_train.config:DPOConfig env=FORGE_TRAIN_ env-depth=1 own", "test")
    assert "`beta`" in page and "`learning_rate`" in page and "5e-06" in page
    assert "`output_dir`" not in page  # a shared field, listed once under the base


class _Undocumented(msgspec.Struct, kw_only=True):
    """A config section whose second field lacks its docstring."""

    documented: int = 1
    """Has one."""
    bare: str = "x"


def test_an_undocumented_field_is_a_build_warning(hook: ModuleType, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.forge_reference"):
        page = hook._render_config(f"{__name__}:_Undocumented", "test.md")
    assert "Has one." in page
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["test.md: field _Undocumented.bare has no docstring"]


def test_a_moved_config_class_fails_the_build(hook: ModuleType) -> None:
    with pytest.raises(AttributeError):
        hook._render_config("forge_gateway.config:NoSuchConfig", "test.md")


def test_http_page_lists_every_route_with_its_scope(hook: ModuleType) -> None:
    page = hook._render_routes("test.md")
    assert "| `GET` | `/health` | anyone |" in page
    assert "| `POST` | `/v1/chat/completions` | API key, generation |" in page
    assert "| `DELETE` | `/admin/keys/{key_id}` | admin key |" in page
    assert "`OPTIONS`" not in page
