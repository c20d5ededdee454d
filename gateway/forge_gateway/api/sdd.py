"""The SDD's router API (§7.1): ``/health``, ``/experts``, ``/route``, ``/generate``.

These follow the SDD's shapes; ``/v1`` follows OpenAI where the two disagree.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import Parameter

from forge_gateway.api.views import expert_entry, public_entry
from forge_gateway.dispatch import CALL_KEY, Call, Dispatcher
from forge_gateway.generation import plan_generation, run_to_completion
from forge_gateway.routing import route_headers
from forge_gateway.security.context import caller_allow_list, caller_is_admin, caller_may_use
from forge_gateway.security.policy import PUBLIC, generation
from forge_gateway.state import Gateway
from forge_sdk.errors import InvalidRequestError, UpstreamError
from forge_sdk.types import (
    GenerateRequest,
    GenerateResponse,
    RouteDecision,
    message_text,
)

__all__ = ["sdd_routes"]


class _UpstreamMessage(msgspec.Struct):
    content: str | None = None


class _UpstreamChoice(msgspec.Struct):
    message: _UpstreamMessage


class _UpstreamUsage(msgspec.Struct):
    total_tokens: int | None = None


class _UpstreamChat(msgspec.Struct):
    """The part of an upstream's chat completion that ``/generate`` needs."""

    choices: list[_UpstreamChoice]
    usage: _UpstreamUsage | None = None


_encode = msgspec.json.Encoder().encode


def _json(obj: Any, headers: dict[str, str] | None = None, status: int = 200) -> Response[bytes]:
    return Response(_encode(obj), media_type="application/json", headers=headers or {}, status_code=status)


@get("/health", opt=PUBLIC)
async def health(gateway: Gateway) -> Response[bytes]:
    """``{"status": "healthy"}`` when the engine serves, 503 ``unhealthy`` otherwise.

    Engine, adapter and expert details are for admin keys (and a keyless dev gateway) only.
    """
    engine = await gateway.engine.health()
    status = 200 if engine.get("ok") else 503
    if not caller_is_admin():
        return _json({"status": "healthy" if engine.get("ok") else "unhealthy"}, status=status)
    stats = gateway.engine.stats()
    body = {
        "status": "healthy" if engine.get("ok") else "unhealthy",
        "model": gateway.catalog.base_model_name,
        "engine": {**engine, "name": gateway.engine.name, "running": stats.running, "waiting": stats.waiting},
        "experts": len(gateway.catalog.experts),
        # One entry per standalone expert's own engine; they do not make the gateway unhealthy
        # (requests for a failed one fall back or get a 503), so the status follows the base engine.
        "standalone_engines": await gateway.standalone.health(),
        "lora": gateway.lora.status(),  # "starting" while a LoRA engine replaces the base engine
    }
    return _json(body, status=status)


@get("/experts", sync_to_thread=False)
def experts(gateway: Gateway) -> Response[bytes]:
    """Every expert with how it is served and its current state (non-admin keys: the experts
    they may use, without endpoints, paths, env names or errors)."""
    catalog = gateway.catalog
    catalog.refresh()
    out = []
    admin = caller_is_admin()
    for expert in catalog.experts.values():
        if not admin:
            # Endpoints, folders, env names and upstream errors are operator details.
            if caller_may_use(expert.name):
                out.append(public_entry(catalog, expert))
            continue
        entry = expert_entry(catalog, expert)
        if expert.kind == "remote":
            entry["status"] = gateway.upstreams.status(expert)
        elif expert.kind == "standalone":
            entry["status"] = gateway.standalone.status(expert.name)
        elif expert.kind == "adapter":
            entry["status"] = gateway.lora.expert_status()
        else:
            entry["status"] = {"state": "ok"}
        out.append(entry)
    return _json({"experts": out, "base_model": catalog.base_model_name})


@post("/route", status_code=200)
async def route(gateway: Gateway, text: Annotated[str, Parameter(query="query")]) -> Response[bytes]:
    """Routing decision for ``?query=``: expert, endpoint, classifier confidence and why."""
    # ``query`` is a reserved handler kwarg in Litestar, hence the alias.
    if not text.strip():
        raise InvalidRequestError("query must not be empty", param="query")
    target = await gateway.catalog.aroute(text, caller_allow_list())
    classifier = gateway.catalog.classifier
    endpoint = target.expert.endpoint if target.expert and target.expert.endpoint else "local"
    if endpoint != "local" and not caller_is_admin():
        endpoint = "remote"  # the URL is an operator detail
    decision = RouteDecision(
        expert=target.expert_name,
        endpoint=endpoint,
        confidence=target.confidence or 0.0,
        classifier=classifier.name if classifier else "none",
        reason=target.reason,
        rank=target.rank,
    )
    return _json(decision, headers=route_headers(target))


async def _generate_remote(dispatcher: Dispatcher, call: Call) -> Response[bytes] | None:
    """``/generate`` on a remote expert through its chat API; None when it fell back."""
    reply = await dispatcher.forward(call)
    if reply is None:
        return None
    headers = route_headers(call.target)
    if reply.status >= 400:
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type, headers=headers)
    try:
        data = msgspec.json.decode(reply.body, type=_UpstreamChat)
        text = data.choices[0].message.content or ""
    except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
        name = call.target.expert_name
        raise UpstreamError(f"expert {name!r} answered a malformed chat completion: {exc}") from exc
    tokens = data.usage.total_tokens if data.usage else None
    return _json(GenerateResponse(text=text, expert=call.target.expert_name, tokens_used=tokens), headers)


@post("/generate", status_code=200, opt=generation("generate"))
async def generate(
    request: Request[Any, Any, Any], gateway: Gateway, dispatcher: Dispatcher
) -> Response[bytes]:
    """Generate with automatic routing (or the ``expert`` given), SDD §7.1 shapes.

    It is a chat completion in the SDD's shapes, so it takes the same path as one: opened by the
    dispatcher in front of the framework (limits, target, allow list), forwarded to a remote
    expert (usage recorded), or run on the local engine.
    """
    call: Call = request.scope["state"][CALL_KEY]
    req: GenerateRequest = call.source
    expert = call.target.expert
    if expert is not None and expert.kind == "remote":
        remote = await _generate_remote(dispatcher, call)
        if remote is not None:
            return remote
    messages = [{"role": m.role, "content": message_text(m)} for m in req.messages] if req.messages else None
    engine, target = await gateway.acquire(call.target)
    call.target = target
    plan = await plan_generation(
        engine,
        messages=messages,
        prompt=None if messages else req.prompt,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=1.0,
        stop=None,
        seed=None,
        n=1,
        limits=gateway.config.limits,
        lora=target.lora,
        id_prefix="gen",
    )
    await call.reserve(plan.prompt_tokens + plan.sampling.max_tokens)
    choices = await gateway.with_timeout(run_to_completion(engine, plan))
    completion = choices[0].completion_tokens
    gateway.record_usage(target, plan.prompt_tokens, completion, engine.name)
    answer = GenerateResponse(
        text=choices[0].text, expert=target.expert_name, tokens_used=plan.prompt_tokens + completion
    )
    return _json(answer, headers=route_headers(target))


sdd_routes = [health, experts, route, generate]
