"""One live gateway for the attack suite: real keys, a remote expert, and a root-path twin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from forge_gateway.security import KeyStore
from forge_sdk.experts import ExpertModel, ExpertRegistry
from tests.security.support import RawResponse, Upstream, raw_request, serve_app

pytest.importorskip("forge_plugins.routing")


@dataclass
class Gateway:
    app: Any
    port: int
    root_port: int
    """The same app under uvicorn ``--root-path /gw``."""
    keys: dict[str, str]
    db: Path
    registry: Path
    upstream: Upstream

    def auth(self, who: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[who]}"}

    async def request(self, method: str, target: str, who: str | None = None, **kw: Any) -> RawResponse:
        headers = {**(self.auth(who) if who else {}), **kw.pop("headers", {})}
        return await raw_request(kw.pop("port", self.port), method, target, headers=headers, **kw)

    def key_count(self) -> int:
        store = KeyStore(self.db, create=False)
        try:
            return len(store.keys(include_revoked=True))
        finally:
            store.close()


# One per module (a few seconds each, tiny model): a module never sees a gateway that an earlier
# module's tests changed or that something else in this process stopped.
@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    tmp = tmp_path_factory.mktemp("security")
    upstream = Upstream()
    await upstream.start()
    registry = tmp / "experts.json"
    ExpertRegistry(registry).register(
        ExpertModel(name="legal", endpoint=upstream.url, upstream_model="legal-7b", keywords=["contract"])
    )
    db = tmp / "keys.db"
    store = KeyStore(db)
    keys = {
        "user": store.create("user")[0],
        "admin": store.create("ops", admin=True)[0],
        "legal_only": store.create("legal-only", models=["legal"])[0],
        "general_only": store.create("general-only", models=["general"])[0],
        "metered": store.create("metered", tpm=100_000)[0],
    }
    store.close()
    overrides = {
        "registry": str(registry),
        "auth": {"db_path": str(db), "refresh_interval": 0.2},
        "limits": {
            "max_body_bytes": 65536,
            "body_timeout": 1.0,
            "max_tokens": 64,
            "max_messages": 8,
            "default_max_tokens": 16,
            "max_concurrent": 2,
            "max_queue": 8,
        },
        "engine": {"kind": "transformers", "max_model_len": 256, "max_standalone_engines": 1},
    }
    async with serve_app(tiny_model_dir, overrides, root_path_too="/gw") as (app, port, root_port):
        assert root_port is not None
        yield Gateway(app, port, root_port, keys, db, registry, upstream)
    await upstream.stop()
