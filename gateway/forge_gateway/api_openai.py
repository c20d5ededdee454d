"""OpenAI-compatible routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Bodies are decoded with msgspec straight from bytes (faster than the framework's generic path,
and the error names the offending field). Every response says which expert served it and why
in ``x-forge-expert`` / ``x-forge-route-reason`` headers.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from forge_gateway.engines.base import Engine
from forge_gateway.errors import validation_error
from forge_gateway.generation import (
    Choice,
    GenerationPlan,
    plan_generation,
    run_to_completion,
    stream_outputs,
)
from forge_gateway.routing import AUTO, RESOLVED_TARGET, Target, route_headers
from forge_gateway.security import admit, estimate_remote_tokens
from forge_gateway.security.context import caller_is_admin, caller_may_use
from forge_gateway.security.policy import generation
from forge_gateway.state import Gateway
from forge_sdk.errors import LargeForgeAIError
from forge_sdk.types import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    ChunkChoice,
    Completion,
    CompletionChoice,
    CompletionRequest,
    DeltaMessage,
    ErrorBody,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
    message_text,
)

__all__ = ["openai_routes"]

_encode = msgspec.json.Encoder().encode
_SSE_DONE = b"data: [DONE]\n\n"


def _sse(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


def decode_body(raw: bytes, type_: type[Any]) -> Any:
    """Decode a JSON body into ``type_`` or raise a 400 naming the field."""
    try:
        return msgspec.json.decode(raw, type=type_)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_error(exc) from exc


def _last_user_text(messages: list[ChatMessage]) -> str:
    for message in reversed(messages):
        if message.role == "user":
            return message_text(message)
    return message_text(messages[-1])


async def resolve_target(
    request: Request[Any, Any, Any], gateway: Gateway, model: str, query: Callable[[], str]
) -> Target:
    """The request's target: the one the fast path already resolved, or a fresh resolution."""
    resolved = request.scope.get("state", {}).get(RESOLVED_TARGET)
    if resolved is not None and resolved[0] == model:
        return resolved[1]  # type: ignore[no-any-return]
    return await gateway.catalog.aresolve(model, query)


async def _complete(
    gateway: Gateway, engine: Engine, plan: GenerationPlan, target: Target
) -> tuple[list[Choice], Usage]:
    """Run a non-streaming request to the end (within the timeout) and account its usage."""
    choices = await gateway.with_timeout(run_to_completion(engine, plan))
    completion_tokens = sum(c.completion_tokens for c in choices)
    gateway.record_usage(target, plan.prompt_tokens, completion_tokens, engine.name)
    return choices, Usage(plan.prompt_tokens, completion_tokens, plan.prompt_tokens + completion_tokens)


@get("/v1/models", sync_to_thread=False)
def list_models(gateway: Gateway) -> Response[bytes]:
    """Models served that the caller's key may use: the base model, servable experts, ``auto``."""
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
        for name in catalog.model_names()
        if name == AUTO or caller_may_use(name)
    ]
    return Response(_encode(ModelList(cards)), media_type="application/json")


async def _stream_chat(
    gateway: Gateway, plan: GenerationPlan, target: Target, include_usage: bool, engine_name: str
) -> AsyncIterator[bytes]:
    created = int(time.time())
    model = target.model
    for i in range(plan.n):
        yield _sse(
            ChatCompletionChunk(
                plan.request_id, created, model, [ChunkChoice(i, DeltaMessage(role="assistant", content=""))]
            )
        )
    completion_tokens = [0] * plan.n
    try:
        async for index, out in stream_outputs(gateway.engine_for(target), plan):
            completion_tokens[index] = out.completion_tokens
            if out.text or out.finish_reason:
                delta = DeltaMessage(content=out.text) if out.text else DeltaMessage()
                yield _sse(
                    ChatCompletionChunk(
                        plan.request_id, created, model, [ChunkChoice(index, delta, out.finish_reason)]
                    )
                )
    except LargeForgeAIError as exc:
        # Headers are gone once streaming started: report the error in-band, OpenAI style.
        yield _sse(ErrorResponse(ErrorBody(exc.message, exc.error_type, exc.param, exc.code)))
        return
    finally:
        gateway.record_usage(target, plan.prompt_tokens, sum(completion_tokens), engine_name)
    if include_usage:
        total = sum(completion_tokens)
        usage = Usage(plan.prompt_tokens, total, plan.prompt_tokens + total)
        yield _sse(ChatCompletionChunk(plan.request_id, created, model, [], usage=usage))
    yield _SSE_DONE


@post("/v1/chat/completions", status_code=200, opt=generation("chat/completions"))
async def chat_completions(request: Request[Any, Any, Any], gateway: Gateway) -> Response[bytes] | Stream:
    """OpenAI chat completions, streaming (SSE) or not."""
    req: ChatCompletionRequest = decode_body(await request.body(), ChatCompletionRequest)
    target = await resolve_target(request, gateway, req.model, lambda: _last_user_text(req.messages))
    if target.expert is not None and target.expert.kind == "remote":
        max_tokens = req.max_completion_tokens or req.max_tokens
        await admit(
            target,
            estimate_remote_tokens(len(await request.body()), max_tokens, req.n, gateway.config.limits),
        )
        response, target = await gateway.forward_remote(target, req, "chat/completions")
        if response is not None:
            return response  # type: ignore[no-any-return]
    engine, target = await gateway.acquire(target)
    plan = await plan_generation(
        engine,
        messages=[{"role": m.role, "content": message_text(m)} for m in req.messages],
        prompt=None,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stop,
        seed=req.seed,
        n=req.n,
        limits=gateway.config.limits,
        lora=target.lora,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        ignore_eos=req.ignore_eos,
    )
    await admit(target, plan.prompt_tokens + plan.n * plan.sampling.max_tokens)
    headers = route_headers(target)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Stream(
            _stream_chat(gateway, plan, target, include_usage, engine.name),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    choices, usage = await _complete(gateway, engine, plan, target)
    body = ChatCompletion(
        id=plan.request_id,
        created=int(time.time()),
        model=target.model,
        choices=[
            ChatCompletionChoice(c.index, ChatMessage(role="assistant", content=c.text), c.finish_reason)  # type: ignore[arg-type]
            for c in choices
        ],
        usage=usage,
    )
    return Response(_encode(body), media_type="application/json", headers=headers)


async def _stream_completion(
    gateway: Gateway,
    plan: GenerationPlan,
    target: Target,
    include_usage: bool,
    engine_name: str,
    echo: str | None,
) -> AsyncIterator[bytes]:
    created = int(time.time())
    completion_tokens = [0] * plan.n
    if echo:
        for i in range(plan.n):
            yield _sse(Completion(plan.request_id, created, target.model, [CompletionChoice(i, echo, None)]))
    try:
        async for index, out in stream_outputs(gateway.engine_for(target), plan):
            completion_tokens[index] = out.completion_tokens
            if out.text or out.finish_reason:
                yield _sse(
                    Completion(
                        plan.request_id,
                        created,
                        target.model,
                        [CompletionChoice(index, out.text, out.finish_reason)],
                    )
                )
    except LargeForgeAIError as exc:
        yield _sse(ErrorResponse(ErrorBody(exc.message, exc.error_type, exc.param, exc.code)))
        return
    finally:
        gateway.record_usage(target, plan.prompt_tokens, sum(completion_tokens), engine_name)
    if include_usage:
        total = sum(completion_tokens)
        yield _sse(
            Completion(
                plan.request_id,
                created,
                target.model,
                [],
                usage=Usage(plan.prompt_tokens, total, plan.prompt_tokens + total),
            )
        )
    yield _SSE_DONE


@post("/v1/completions", status_code=200, opt=generation("completions"))
async def completions(request: Request[Any, Any, Any], gateway: Gateway) -> Response[bytes] | Stream:
    """OpenAI (legacy) text completions."""
    req: CompletionRequest = decode_body(await request.body(), CompletionRequest)
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    target = await resolve_target(request, gateway, req.model, lambda: prompt)
    if target.expert is not None and target.expert.kind == "remote":
        await admit(
            target,
            estimate_remote_tokens(len(await request.body()), req.max_tokens, req.n, gateway.config.limits),
        )
        response, target = await gateway.forward_remote(target, req, "completions")
        if response is not None:
            return response  # type: ignore[no-any-return]
    engine, target = await gateway.acquire(target)
    plan = await plan_generation(
        engine,
        messages=None,
        prompt=prompt,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        stop=req.stop,
        seed=req.seed,
        n=req.n,
        limits=gateway.config.limits,
        lora=target.lora,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        ignore_eos=req.ignore_eos,
        id_prefix="cmpl",
    )
    await admit(target, plan.prompt_tokens + plan.n * plan.sampling.max_tokens)
    headers = route_headers(target)
    echo = prompt if req.echo else None
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Stream(
            _stream_completion(gateway, plan, target, include_usage, engine.name, echo),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    choices, usage = await _complete(gateway, engine, plan, target)
    body = Completion(
        id=plan.request_id,
        created=int(time.time()),
        model=target.model,
        choices=[
            CompletionChoice(c.index, (echo or "") + c.text, c.finish_reason)  # type: ignore[arg-type]
            for c in choices
        ],
        usage=usage,
    )
    return Response(_encode(body), media_type="application/json", headers=headers)


openai_routes = [list_models, chat_completions, completions]
