"""Plugin discovery: a pluggy manager over the ``forge`` entry-point group.

``FORGE_PLUGINS`` (comma-separated entry-point names) is an allowlist: when set, only those
plugins load. ``FORGE_DISABLE_PLUGINS`` lists plugins never to load. Each call of
:func:`get_plugin_manager` builds a fresh manager, so tests never share plugin state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

import pluggy

from forge_sdk import hooks
from forge_sdk.errors import ConfigurationError

__all__ = [
    "ALLOWLIST_ENV",
    "DENYLIST_ENV",
    "PluginInfo",
    "collect",
    "get_plugin_manager",
    "list_plugins",
]

ALLOWLIST_ENV = "FORGE_PLUGINS"
DENYLIST_ENV = "FORGE_DISABLE_PLUGINS"

T = TypeVar("T")


def _names(env: str) -> set[str] | None:
    raw = os.environ.get(env)
    if raw is None or not raw.strip():
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


def get_plugin_manager(
    *, load_entrypoints: bool = True, plugins: list[object] | None = None
) -> pluggy.PluginManager:
    """A fresh plugin manager with the ``forge`` hookspecs.

    Args:
        load_entrypoints: discover installed plugins from the ``forge`` entry-point group,
            filtered by ``FORGE_PLUGINS`` / ``FORGE_DISABLE_PLUGINS``.
        plugins: extra plugin objects (modules or instances) to register directly.
    """
    pm = pluggy.PluginManager(hooks.PROJECT_NAME)
    pm.add_hookspecs(hooks)
    if load_entrypoints:
        allow, deny = _names(ALLOWLIST_ENV), _names(DENYLIST_ENV) or set()
        for ep in metadata.entry_points(group=hooks.PROJECT_NAME):
            if (allow is not None and ep.name not in allow) or ep.name in deny:
                pm.set_blocked(ep.name)
                continue
            try:
                pm.load_setuptools_entrypoints(hooks.PROJECT_NAME, name=ep.name)
            except Exception as exc:  # a broken third-party plugin must say who it is
                raise ConfigurationError(
                    f"plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}; "
                    f"uninstall it or set {DENYLIST_ENV}={ep.name}"
                ) from exc
    for plugin in plugins or []:
        pm.register(plugin)
    return pm


class PluginInfo(dict[str, Any]):
    """``{"name", "hooks", "version", "package"}`` for one plugin."""


def list_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every plugin the manager holds, with its hooks and distribution."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out: list[PluginInfo] = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: str(item[0])):
        if plugin is None:
            continue
        hook_names = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        dist = dists.get(id(plugin))
        out.append(
            PluginInfo(
                name=name,
                hooks=hook_names,
                package=dist.project_name if dist else None,
                version=dist.version if dist else None,
            )
        )
    return out


def collect(pm: pluggy.PluginManager, hook: str, key: Callable[[Any], str]) -> dict[str, Any]:
    """Call a ``register_*`` hook and gather what plugins register, keyed by ``key(item)``.

    Raises:
        ConfigurationError: two plugins registered the same name.
    """
    found: dict[str, Any] = {}

    def register(item: Any) -> None:
        name = key(item)
        if name in found:
            raise ConfigurationError(f"{hook}: {name!r} is registered twice")
        found[name] = item

    getattr(pm.hook, hook)(register=register)
    return found
