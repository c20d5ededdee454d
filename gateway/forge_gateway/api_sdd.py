"""The SDD's router API (§7.1): ``/health``, ``/experts``, ``/route``, ``/generate``.

These follow the SDD's shapes; ``/v1`` follows OpenAI where the two disagree.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
from litestar import Request, Response, get, post

from forge_gateway.api_openai import decode_body, route_headers
from forge_gateway.generation import plan_generation, run_to_completion
from forge_gateway.state import Gateway
from forge_sdk.errors import InvalidRequestError
from forge_sdk.types import GenerateRequest, GenerateResponse, RouteDecision, message_text

__all__ = ["sdd_routes"]

_encode = msgspec.json.Encoder().encode


def _json(obj: Any, headers: dict[str, str] | None = None, status: int = 200) -> Response[bytes]:
    return Response(_encode(obj), media_type="application/json", headers=headers or {}, status_code=status)


@get("/health")
async def health(gateway: Gateway) -> Response[bytes]:
    """``{"status": "healthy"}`` when the engine serves, 503 ``unhealthy`` otherwise."""
    engine = await gateway.engine.health()
    stats = gateway.engine.stats()
    body = {
        "status": "healthy" if engine.get("ok") else "unhealthy",
        "model": gateway.catalog.base_model_name,
        "engine": {**engine, "name": gateway.engine.name, "running": stats.running, "waiting": stats.waiting},
        "experts": len(gateway.catalog.experts),
    }
    return _json(body, status=200 if engine.get("ok") else 503)


@get("/experts", sync_to_thread=False)
def experts(gateway: Gateway) -> Response[bytes]:
    """Every expert with how it is served and its current state."""
    catalog = gateway.catalog
    catalog.refresh()
    out = []
    for expert in catalog.experts.values():
        entry = expert.to_dict()
        entry["kind"] = expert.kind
        entry["endpoint"] = expert.endpoint or "local"
        entry["servable"] = catalog.servable(expert)
        entry["status"] = (
            gateway.upstreams.status(expert.name) if expert.kind == "remote" else {"state": "ok"}
        )
        out.append(entry)
    return _json({"experts": out, "base_model": catalog.base_model_name})


@post("/route", status_code=200)
async def route(gateway: Gateway, query: str) -> Response[bytes]:
    """Routing decision for ``?query=``: expert, endpoint, classifier confidence and why."""
    if not query.strip():
        raise InvalidRequestError("query must not be empty", param="query")
    target = (
        await anyio.to_thread.run_sync(gateway.catalog.route, query)
        if len(query) > 4096
        else gateway.catalog.route(query)
    )
    classifier = gateway.catalog.classifier
    endpoint = target.expert.endpoint if target.expert and target.expert.endpoint else "local"
    decision = RouteDecision(
        expert=target.expert_name,
        endpoint=endpoint,
        confidence=target.confidence or 0.0,
        classifier=classifier.name if classifier else "none",
        reason=target.reason,
    )
    return _json(decision, headers=route_headers(target))


@post("/generate")
async def generate(request: Request[Any, Any, Any], gateway: Gateway) -> Response[bytes]:
    """Generate with automatic routing (or the ``expert`` given), SDD §7.1 shapes."""
    req: GenerateRequest = decode_body(await request.body(), GenerateRequest)
    if (req.prompt is None) == (req.messages is None):
        raise InvalidRequestError("give exactly one of `prompt` or `messages`", param="prompt")
    messages = [{"role": m.role, "content": message_text(m)} for m in req.messages] if req.messages else None
    text = (
        req.prompt
        if req.prompt is not None
        else next((m["content"] for m in reversed(messages or []) if m["role"] == "user"), "")
    )
    target = gateway.catalog.resolve(req.expert or "auto", lambda: text)
    if target.expert is not None and target.expert.kind == "remote":
        from forge_sdk.types import ChatCompletionRequest, ChatMessage

        chat = ChatCompletionRequest(
            model=target.expert_name,
            messages=[
                ChatMessage(role=m["role"], content=m["content"])  # type: ignore[arg-type]
                for m in (messages or [{"role": "user", "content": text}])
            ],
            max_tokens=req.max_tokens,
            temperature=req.temperature,
        )
        response, target = await gateway.forward_remote(target, chat, "chat/completions")
        if response is not None:
            if response.status_code >= 400:
                return response  # type: ignore[no-any-return]
            data = msgspec.json.decode(response.content)
            answer = GenerateResponse(
                text=data["choices"][0]["message"]["content"] or "",
                expert=target.expert_name,
                tokens_used=(data.get("usage") or {}).get("total_tokens"),
            )
            return _json(answer, headers=route_headers(target))
    engine = gateway.engine_for(target)
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
    choices = await gateway.with_timeout(run_to_completion(engine, plan))
    completion = choices[0].completion_tokens
    gateway.record_usage(target, plan.prompt_tokens, completion, engine.name)
    answer = GenerateResponse(
        text=choices[0].text, expert=target.expert_name, tokens_used=plan.prompt_tokens + completion
    )
    return _json(answer, headers=route_headers(target))


sdd_routes = [health, experts, route, generate]
