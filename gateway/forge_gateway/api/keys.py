"""Admin API for keys and usage: ``/admin/keys`` and ``/admin/usage`` (admin key required).

Each route declares its scope in ``opt`` (see :mod:`forge_gateway.security.policy`); these
handlers only do the work; the key store's calls are async (see :mod:`~forge_gateway.security.store`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.params import Parameter

from forge_gateway.errors import validation_error
from forge_gateway.security.keys import MAX_LIMIT, new_key
from forge_gateway.security.policy import ADMIN, METRICS
from forge_sdk.errors import InvalidRequestError

__all__ = ["CreateKeyRequest", "key_routes"]

_encode = msgspec.json.Encoder().encode
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class CreateKeyRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Body of ``POST /admin/keys``."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    """Human-readable label (shown in logs and listings)."""
    rpm: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] | None = None
    """Requests per minute (default: the server's ``rate_limit.default_rpm``)."""
    tpm: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)] | None = None
    """Tokens per minute, prompt + completion (default: ``rate_limit.default_tpm``)."""
    models: list[Annotated[str, msgspec.Meta(min_length=1)]] | None = None
    """Models/experts the key may use (default: all)."""
    admin: bool = False
    """Whether the key may call ``/admin`` endpoints and read ``/metrics``."""


def _json(obj: Any, status: int = 200) -> Response[bytes]:
    return Response(_encode(obj), media_type="application/json", status_code=status)


def _layer(request: Request[Any, Any, Any]) -> Any:
    return request.app.state.security


@get("/admin/keys", opt=ADMIN)
async def list_keys(request: Request[Any, Any, Any], include_revoked: bool = False) -> Response[bytes]:
    """Every key's metadata (never the secret)."""
    layer = _layer(request)
    keys = await layer.store.keys(include_revoked=include_revoked)
    return _json({"object": "list", "data": [k.public_dict() for k in keys]})


@post("/admin/keys", status_code=201, opt=ADMIN)
async def create_key(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Create a key; the response is the only place its full value ever appears."""
    try:
        body = msgspec.json.decode(await request.body(), type=CreateKeyRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_error(exc) from exc
    layer = _layer(request)
    full, record = new_key(body.name, rpm=body.rpm, tpm=body.tpm, models=body.models, admin=body.admin)
    await layer.store.add_key(record)
    await layer.authenticator.reload()
    return _json({"key": full, **record.public_dict()}, status=201)


@delete("/admin/keys/{key_id:str}", status_code=200, opt=ADMIN)
async def revoke_key(request: Request[Any, Any, Any], key_id: str) -> Response[bytes]:
    """Revoke a key; this process stops accepting it at once, other replicas within a second or two."""
    layer = _layer(request)
    record = await layer.store.revoke(key_id)
    layer.authenticator.forget(key_id)
    return _json(record.public_dict())


@get("/admin/usage", opt=ADMIN)
async def usage(
    request: Request[Any, Any, Any],
    key_id: str | None = None,
    since: Annotated[str | None, Parameter(description="first day, YYYY-MM-DD (UTC)")] = None,
    until: Annotated[str | None, Parameter(description="last day, YYYY-MM-DD (UTC)")] = None,
) -> Response[bytes]:
    """Tokens per key per day (pending counts are flushed first, so this is up to date)."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and not _DAY.match(value):
            raise InvalidRequestError(f"{name} must be YYYY-MM-DD, got {value!r}", param=name)
    layer = _layer(request)
    await layer.ledger.flush()
    rows = await layer.store.usage(key_id=key_id, since=since, until=until)
    return _json({"object": "list", "data": [r.as_dict() for r in rows]})


@get("/metrics", opt=METRICS, include_in_schema=False)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus metrics (an admin key, unless ``auth.public_metrics``)."""
    from forge_gateway.observability.metrics import CONTENT_TYPE_LATEST

    return Response(_layer(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


key_routes = [list_keys, create_key, revoke_key, usage, metrics]
