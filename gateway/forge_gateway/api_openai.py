"""OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Bodies are decoded with msgspec straight from bytes (faster than the framework's generic path,
and the error names the offending field). Every response says which expert served it and why
in ``x-forge-expert`` / ``x-forge-route-reason`` headers. Remote experts get the client's body
unchanged; local engines run it through :mod:`forge_gateway.oai` (tools, structured outputs,
log-probs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from forge_gateway.errors import validation_error
from forge_gateway.generation import check_request_limits
from forge_gateway.oai.chat import serve_chat
from forge_gateway.oai.completion import serve_completion
from forge_gateway.oai.decoding import query_text, request_decoder
from forge_gateway.routing import AUTO, RESOLVED_TARGET, Target, route_headers
from forge_gateway.security import admit, authorize, estimate_remote_tokens
from forge_gateway.security.context import caller_allow_list, caller_is_admin, caller_may_use
from forge_gateway.security.policy import generation
from forge_gateway.state import Gateway
from forge_sdk.types import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

__all__ = ["openai_routes"]

_encode = msgspec.json.Encoder().encode


def decode_body(raw: bytes, type_: type[Any], unknown_fields: str = "reject") -> Any:
    """Decode a JSON body into ``type_`` or raise a 400 naming the field.

    ``unknown_fields="ignore"`` drops unknown top-level fields of the OpenAI request types.
    """
    try:
        return request_decoder(type_, unknown_fields).decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_error(exc) from exc


async def resolve_target(
    request: Request[Any, Any, Any], gateway: Gateway, model: str, query: Callable[[], str]
) -> Target:
    """The request's target: the one the fast path already resolved, or a fresh resolution."""
    resolved = request.scope.get("state", {}).get(RESOLVED_TARGET)
    if resolved is not None and resolved[0] == model:
        return resolved[1]  # type: ignore[no-any-return]
    return await gateway.catalog.aresolve(model, query, caller_allow_list())


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
    """OpenAI chat completions, streaming (SSE) or not: tools, structured outputs, log-probs."""
    raw = await request.body()
    req: ChatCompletionRequest = decode_body(raw, ChatCompletionRequest, gateway.config.api.unknown_fields)
    target = await resolve_target(request, gateway, req.model, lambda: query_text(req))
    if target.expert is not None and target.expert.kind == "remote":
        max_tokens = req.max_completion_tokens or req.max_tokens
        check_request_limits(gateway.config.limits, messages=len(req.messages), max_tokens=max_tokens)
        await admit(target, estimate_remote_tokens(len(raw), max_tokens, req.n, gateway.config.limits))
        response, target = await gateway.forward_remote(
            target, raw, "chat/completions", stream=bool(req.stream)
        )
        if response is not None:
            return response  # type: ignore[no-any-return]
    authorize(target)  # before a standalone engine may be started for it
    engine, target = await gateway.acquire(target)
    return await serve_chat(gateway, engine, target, req, route_headers(target))


@post("/v1/completions", status_code=200, opt=generation("completions"))
async def completions(request: Request[Any, Any, Any], gateway: Gateway) -> Response[bytes] | Stream:
    """OpenAI (legacy) text completions: prompt batches, echo, log-probs."""
    raw = await request.body()
    req: CompletionRequest = decode_body(raw, CompletionRequest, gateway.config.api.unknown_fields)
    target = await resolve_target(request, gateway, req.model, lambda: query_text(req))
    if target.expert is not None and target.expert.kind == "remote":
        check_request_limits(gateway.config.limits, messages=None, max_tokens=req.max_tokens)
        await admit(target, estimate_remote_tokens(len(raw), req.max_tokens, req.n, gateway.config.limits))
        response, target = await gateway.forward_remote(target, raw, "completions", stream=bool(req.stream))
        if response is not None:
            return response  # type: ignore[no-any-return]
    authorize(target)
    engine, target = await gateway.acquire(target)
    return await serve_completion(gateway, engine, target, req, route_headers(target))


openai_routes = [list_models, chat_completions, completions]
