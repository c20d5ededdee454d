"""How the API shows an expert: shared by the route modules (which never import each other)."""

from __future__ import annotations

from typing import Any

from forge_gateway.routing import ExpertCatalog
from forge_sdk.experts import ExpertModel

__all__ = ["expert_entry", "public_entry"]


def expert_entry(catalog: ExpertCatalog, expert: ExpertModel) -> dict[str, Any]:
    """An expert as the admin API shows it: its fields plus how this gateway serves it."""
    entry = expert.to_dict()
    entry["kind"] = expert.kind
    entry["endpoint"] = expert.endpoint or "local"
    entry["servable"] = catalog.servable(expert)
    return entry


def public_entry(catalog: ExpertCatalog, expert: ExpertModel) -> dict[str, Any]:
    """An expert as a non-admin key sees it: no endpoints, folders, env names or errors."""
    return {
        "name": expert.name,
        "description": expert.description,
        "specialization": expert.specialization,
        "keywords": expert.keywords,
        "kind": expert.kind,
        "servable": catalog.servable(expert),
    }
