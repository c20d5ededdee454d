"""OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Generation bodies are decoded once, by the fast path's :class:`~forge_gateway.dispatch.Dispatcher`
(which also serves remote experts); these handlers get the decoded call and run it on a local
engine through :mod:`forge_gateway.oai` (tools, structured outputs, log-probs). Every response
says which expert served it and why in ``x-forge-expert`` / ``x-forge-route-reason`` headers.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from forge_gateway.dispatch import CALL_KEY, Call
from forge_gateway.oai.chat import serve_chat
from forge_gateway.oai.completion import serve_completion
from forge_gateway.routing import AUTO
from forge_gateway.security.context import caller_is_admin, caller_may_use
from forge_gateway.security.policy import generation
from forge_gateway.state import Gateway
from forge_sdk.types import ModelCard, ModelList

__all__ = ["openai_routes"]

_encode = msgspec.json.Encoder().encode


def _call(request: Request[Any, Any, Any]) -> Call:
    """The call the fast path decoded and opened (limits, target, allow list) for this request."""
    return request.scope["state"][CALL_KEY]  # type: ignore[no-any-return]


@get("/v1/models", sync_to_thread=False)
def list_models(gateway: Gateway) -> Response[bytes]:
    """Models served that the caller's key may use: the base model, servable experts, ``auto``
    (base-model aliases only with ``[api] list_aliases``)."""
    catalog = gateway.catalog
    catalog.refresh()
    created = int(gateway.started_at)
    base = catalog.base_model_name
    # A key sees only what its allow list lets it use (and never the base model's local path).
    admin = caller_is_admin()
    cards = [
        ModelCard(
            id=name,
            created=created,
            root=base if name != base else (gateway.config.model if admin else base),
        )
        for name in catalog.model_names(aliases=gateway.config.api.list_aliases)
        if name == AUTO or caller_may_use(name)
    ]
    return Response(_encode(ModelList(cards)), media_type="application/json")


@post("/v1/chat/completions", status_code=200, opt=generation("chat/completions"))
async def chat_completions(request: Request[Any, Any, Any], gateway: Gateway) -> Response[bytes] | Stream:
    """OpenAI chat completions, streaming (SSE) or not: tools, structured outputs, log-probs.

    Remote experts were served by the fast path; what reaches this handler runs locally.
    """
    call = _call(request)
    engine, call.target = await gateway.acquire(call.target)
    return await serve_chat(gateway, engine, call)


@post("/v1/completions", status_code=200, opt=generation("completions"))
async def completions(request: Request[Any, Any, Any], gateway: Gateway) -> Response[bytes] | Stream:
    """OpenAI (legacy) text completions: prompt batches, echo, log-probs (local engines)."""
    call = _call(request)
    engine, call.target = await gateway.acquire(call.target)
    return await serve_completion(gateway, engine, call)


openai_routes = [list_models, chat_completions, completions]
