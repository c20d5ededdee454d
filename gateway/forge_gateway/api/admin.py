"""Admin API: register and remove experts, load and unload adapters, without a restart.

Every route declares ``opt=ADMIN``: the security layer's route authority demands an admin key
for it, whatever path spelling reached it; nothing here checks keys itself. Changes go through the expert catalog, so
they are saved to the registry file (when there is one) and survive a restart.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import anyio
import msgspec
from litestar import Request, Response, delete, post

from forge_gateway.api.views import expert_entry
from forge_gateway.security.policy import ADMIN
from forge_gateway.state import Gateway
from forge_gateway.upstream.endpoints import check_endpoint
from forge_sdk.errors import InvalidRequestError, ModelError, ModelNotFoundError
from forge_sdk.experts import ExpertModel

__all__ = ["admin_routes"]

_encode = msgspec.json.Encoder().encode


def _json(obj: Any, status: int = 200) -> Response[bytes]:
    return Response(_encode(obj), status_code=status, media_type="application/json")


def _decode_expert(raw: bytes) -> ExpertModel:
    try:
        return msgspec.json.decode(raw, type=ExpertModel)
    except msgspec.ValidationError as exc:  # a DecodeError subclass: catch it first
        message = str(exc)
        param = message.rsplit(" - at `$.", 1)[1].rstrip("`") if " - at `$." in message else None
        raise InvalidRequestError(f"invalid expert: {message}", param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}", code="invalid_json") from exc


def _check_adapter_folder(expert: ExpertModel) -> None:
    folder = Path(str(expert.adapter_path)).expanduser()
    if not folder.is_dir():
        raise InvalidRequestError(
            f"adapter_path {expert.adapter_path!r} is not a folder on the gateway host", param="adapter_path"
        )
    if not (folder / "adapter_config.json").is_file():
        raise InvalidRequestError(
            f"adapter_path {expert.adapter_path!r} holds no adapter_config.json (not a PEFT LoRA adapter)",
            param="adapter_path",
        )


async def _load(gateway: Gateway, expert: ExpertModel) -> None:
    """Load an adapter expert's weights into the engine, as a 400 when they are unusable."""
    spec = gateway.catalog.lora_for(expert)
    assert spec is not None
    try:
        await gateway.load_adapter(spec)
    except (ModelError, ModelNotFoundError) as exc:
        raise InvalidRequestError(
            f"cannot load adapter of expert {expert.name!r}: {exc.message}", param="adapter_path"
        ) from exc


def _validate(gateway: Gateway, expert: ExpertModel) -> None:
    catalog = gateway.catalog
    if expert.name in (catalog.base_model_name, "auto"):
        raise InvalidRequestError(f"expert name {expert.name!r} is reserved", param="name")
    kinds = [bool(expert.adapter_path), bool(expert.endpoint), bool(expert.model_path)]
    if sum(kinds) > 1:
        raise InvalidRequestError(
            "give at most one of adapter_path, endpoint and model_path", param="adapter_path"
        )
    router = gateway.config.router
    if expert.api_key_env and not expert.api_key_env.startswith(router.upstream_key_env_prefix):
        raise InvalidRequestError(
            f"api_key_env must name a variable starting with {router.upstream_key_env_prefix!r} "
            "(router.upstream_key_env_prefix): the gateway sends no other environment variable upstream",
            param="api_key_env",
        )
    if expert.kind == "adapter":
        if catalog.lora_state == "disabled":  # "off": registering it turns LoRA on
            raise InvalidRequestError(catalog.lora_off_reason, param="adapter_path")
        _check_adapter_folder(expert)
    if expert.kind == "standalone":
        if not catalog.standalone_enabled:
            raise InvalidRequestError(
                "this gateway's engine cannot start engines for standalone experts", param="model_path"
            )
        if not (Path(str(expert.model_path)).expanduser() / "config.json").is_file():
            raise InvalidRequestError(
                f"model_path {expert.model_path!r} is not a model folder on the gateway host (no config.json)",
                param="model_path",
            )


@post("/admin/experts", status_code=201, opt=ADMIN)
async def register_expert(request: Request[Any, Any, Any], gateway: Gateway) -> Response[bytes]:
    """Register (or replace) an expert from an ``ExpertModel`` JSON body.

    An adapter expert's weights are loaded into the engine before it is registered, so a bad
    adapter is a 400 and never reaches the catalog (once LoRA is on: the first adapter of an
    ``enable_lora = "auto"`` gateway turns it on, see :mod:`forge_gateway.lora_switch`).
    """
    expert = _decode_expert(await request.body())
    _validate(gateway, expert)
    router = gateway.config.router
    for url in expert.replicas:  # every replica is a URL the gateway will POST prompts to
        await anyio.to_thread.run_sync(
            functools.partial(
                check_endpoint,
                url,
                allow_hosts=router.upstream_allow_hosts,
                allow_link_local=router.upstream_allow_link_local,
            )
        )
    if expert.kind == "adapter" and gateway.engine.supports_lora:
        await _load(gateway, expert)
    # With LoRA still off (enable_lora "auto"), registering it starts the LoRA engine, which loads
    # it before serving (a bad adapter is then logged as lora_preload_failed, and refused per request).
    replaced = expert.name in gateway.catalog.experts
    gateway.catalog.register(expert)
    entry = expert_entry(gateway.catalog, expert)
    entry["replaced"] = replaced
    return _json(entry, status=201)


def _expert(gateway: Gateway, name: str) -> ExpertModel:
    gateway.catalog.refresh()
    expert = gateway.catalog.experts.get(name)
    if expert is None:
        raise ModelNotFoundError(f"no expert named {name!r}", param="name")
    return expert


@delete("/admin/experts/{name:str}", status_code=200, opt=ADMIN)
async def unregister_expert(name: str, gateway: Gateway) -> Response[bytes]:
    """Remove an expert; its adapter, if any, is unloaded from the engine."""
    expert = _expert(gateway, name)
    specs = gateway.catalog.loaded_loras(name)
    gateway.catalog.unregister(name)
    unloaded = []
    if expert.kind == "adapter" and gateway.engine.supports_lora:
        for spec in specs:
            await gateway.unload_adapter(spec)
            unloaded.append(spec.path)
    return _json({"deleted": name, "kind": expert.kind, "unloaded": unloaded})


def _adapter_expert(gateway: Gateway, name: str) -> ExpertModel:
    expert = _expert(gateway, name)
    if expert.kind != "adapter":
        raise InvalidRequestError(
            f"expert {name!r} is a {expert.kind} expert, not a LoRA adapter", param="name"
        )
    if not gateway.catalog.lora_enabled:
        state = gateway.catalog.lora_state
        why = gateway.catalog.lora_off_reason if state in ("disabled", "failed") else f"LoRA is {state}"
        raise InvalidRequestError(why, param="name")
    return expert


@post("/admin/adapters/{name:str}/load", status_code=200, opt=ADMIN)
async def load_adapter(name: str, gateway: Gateway) -> Response[bytes]:
    """Load a registered adapter expert into the engine now (no first-request delay)."""
    expert = _adapter_expert(gateway, name)
    _check_adapter_folder(expert)
    await _load(gateway, expert)
    return _json({"expert": name, "loaded": True})


@post("/admin/adapters/{name:str}/unload", status_code=200, opt=ADMIN)
async def unload_adapter(name: str, gateway: Gateway) -> Response[bytes]:
    """Free an adapter's engine memory; the next request for it loads it again."""
    _adapter_expert(gateway, name)
    for spec in gateway.catalog.loaded_loras(name):
        await gateway.unload_adapter(spec)
    return _json({"expert": name, "loaded": False})


admin_routes = [register_expert, unregister_expert, load_adapter, unload_adapter]
