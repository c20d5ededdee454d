"""``/v1/chat/completions`` on a local engine: plan, generate, shape (tools, log-probs), stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Response
from litestar.response import Stream

from forge_gateway.dispatch import Call
from forge_gateway.engines.base import Engine, EngineOutput
from forge_gateway.errors import sse_error
from forge_gateway.generation import GenerationPlan, plan_generation, run_many, stream_many
from forge_gateway.oai.chat_input import (
    check_modalities,
    legacy_tools,
    template_knows_tools,
    template_messages,
)
from forge_gateway.oai.logprobs import TokenTexts, chat_logprobs
from forge_gateway.oai.sampling import request_constraint, sampling_fields
from forge_gateway.oai.streaming import SSE_DONE, primed, sse
from forge_gateway.oai.tool_calls import ToolMode, ToolStream, pick_parser, tool_mode
from forge_gateway.routing import Target, route_headers
from forge_gateway.state import Gateway
from forge_sdk.errors import InvalidRequestError, LargeForgeAIError
from forge_sdk.tools import ToolParser
from forge_sdk.types import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    DeltaMessage,
    ResponseMessage,
    Usage,
)

__all__ = ["serve_chat"]

_encode = msgspec.json.Encoder().encode
_parsers: dict[tuple[int, str], ToolParser | None] = {}


def _parser(gateway: Gateway, engine: Engine) -> ToolParser | None:
    """The tool parser for this engine's model (picked once per engine and config)."""
    key = (id(engine), gateway.config.api.tool_parser)
    if key not in _parsers:
        _parsers[key] = pick_parser(
            gateway.tool_parsers, gateway.config.api.tool_parser, engine.chat_template
        )
    return _parsers[key]


async def _plan(
    gateway: Gateway, engine: Engine, target: Target, req: ChatCompletionRequest
) -> tuple[GenerationPlan, ToolMode | None]:
    check_modalities(req)
    if req.max_tokens == 0:  # 0 is only meaningful for scoring an echoed prompt (text completions)
        raise InvalidRequestError("max_tokens must be at least 1", param="max_tokens")
    tools, choice = legacy_tools(req)
    mode = tool_mode(tools, choice, req.parallel_tool_calls, _parser(gateway, engine) if tools else None)
    constraint = request_constraint(req)
    forced = mode.constraint() if mode is not None else None
    if forced is not None:
        if constraint is not None:
            raise InvalidRequestError(
                "a forced tool call cannot be combined with response_format or structured outputs",
                param="tool_choice",
            )
        constraint = forced
    native = template_knows_tools(engine.chat_template)
    messages, tool_dicts = template_messages(req.messages, tools if mode is not None else None, native)
    options = sampling_fields(req, engine.vocab_size)
    options["constraint"] = constraint
    plan = await plan_generation(
        engine,
        messages=messages,
        prompt=None,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=req.stop,
        seed=req.seed,
        n=req.n,
        limits=gateway.config.limits,
        lora=target.lora,
        tools=tool_dicts,
        render={
            "add_generation_prompt": req.add_generation_prompt,
            "continue_final_message": req.continue_final_message,
            "template_kwargs": req.chat_template_kwargs,
        },
        options=options,
    )
    return plan, mode


def _finish(reason: str | None, called: bool) -> Any:
    return "tool_calls" if called and reason == "stop" else reason


async def serve_chat(gateway: Gateway, engine: Engine, call: Call) -> Response[bytes] | Stream:
    """Answer one chat call on ``engine`` (already acquired for ``call.target``)."""
    target, req = call.target, call.request
    headers = route_headers(target)
    plan, mode = await _plan(gateway, engine, target, req)
    await call.reserve(plan.prompt_tokens + plan.n * plan.sampling.max_tokens)
    texts = TokenTexts(engine.token_text)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        outputs = await primed(stream_many(engine, [plan]))
        return Stream(
            _stream(gateway, plan, target, mode, texts, include_usage, engine.name, outputs),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    choices = await gateway.with_timeout(run_many(engine, [plan]))
    completion_tokens = sum(c.completion_tokens for c in choices)
    gateway.record_usage(target, plan.prompt_tokens, completion_tokens, engine.name)
    out = []
    for c in choices:
        content, calls = mode.calls(c.text) if mode is not None else (c.text, [])
        logprobs = chat_logprobs(c.logprobs or [], texts) if plan.sampling.logprobs is not None else None
        message = ResponseMessage(content=content, tool_calls=calls or None)
        out.append(ChatCompletionChoice(c.index, message, _finish(c.finish_reason, bool(calls)), logprobs))
    body = ChatCompletion(
        id=plan.request_id,
        created=int(time.time()),
        model=target.model,
        choices=out,
        usage=Usage(plan.prompt_tokens, completion_tokens, plan.prompt_tokens + completion_tokens),
    )
    return Response(_encode(body), media_type="application/json", headers=headers)


async def _stream(
    gateway: Gateway,
    plan: GenerationPlan,
    target: Target,
    mode: ToolMode | None,
    texts: TokenTexts,
    include_usage: bool,
    engine_name: str,
    outputs: AsyncIterator[tuple[int, EngineOutput]],
) -> AsyncIterator[bytes]:
    created = int(time.time())
    model = target.model
    rid = plan.request_id

    def chunk(index: int, delta: DeltaMessage, reason: Any = None, logprobs: Any = None) -> bytes:
        return sse(ChatCompletionChunk(rid, created, model, [ChunkChoice(index, delta, reason, logprobs)]))

    for i in range(plan.n):
        yield chunk(i, DeltaMessage(role="assistant", content=""))
    streams = [ToolStream(mode) if mode is not None else None for _ in range(plan.n)]
    completion_tokens = [0] * plan.n
    want_logprobs = plan.sampling.logprobs is not None
    try:
        async for index, out in outputs:
            completion_tokens[index] = out.completion_tokens
            ts = streams[index]
            content, tool_deltas = ts.push(out.text) if ts is not None else (out.text or None, [])
            logprobs = chat_logprobs(out.logprobs, texts) if want_logprobs and out.logprobs else None
            if content or tool_deltas or logprobs:
                yield chunk(
                    index, DeltaMessage(content=content, tool_calls=tool_deltas or None), None, logprobs
                )
            if out.finish_reason:
                called = False
                if ts is not None:
                    content, tool_deltas = ts.finish()
                    called = ts.called
                    if content or tool_deltas:
                        yield chunk(index, DeltaMessage(content=content, tool_calls=tool_deltas or None))
                yield chunk(index, DeltaMessage(), _finish(out.finish_reason, called))
    except LargeForgeAIError as exc:
        # Headers are gone once streaming started: report the error in-band, OpenAI style.
        yield sse_error(exc)
        return
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
        gateway.record_usage(target, plan.prompt_tokens, sum(completion_tokens), engine_name)
    if include_usage:
        total = sum(completion_tokens)
        usage = Usage(plan.prompt_tokens, total, plan.prompt_tokens + total)
        yield sse(ChatCompletionChunk(rid, created, model, [], usage=usage))
    yield SSE_DONE
