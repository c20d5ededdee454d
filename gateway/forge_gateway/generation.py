"""Run one OpenAI-style request on a local engine: prompt checks, ``n`` fan-out, aggregation.

Used by the OpenAI routes and the SDD ``/generate`` route alike, so both validate and count
tokens the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from forge_gateway.config import LimitsConfig
from forge_gateway.engines.base import (
    Engine,
    EngineOutput,
    EngineRequest,
    LoraSpec,
    SamplingOptions,
    TokenLogprobs,
)
from forge_sdk.errors import ContextLengthExceededError, InvalidRequestError

__all__ = [
    "Choice",
    "GenerationPlan",
    "plan_generation",
    "run_many",
    "run_to_completion",
    "stream_many",
    "stream_outputs",
]

# Tokenizing a few KB inline is faster than a thread hop; bigger inputs go to a worker thread
# so one huge prompt cannot stall every other request on the event loop.
_INLINE_TOKENIZE_CHARS = 4096
_GREEDY_BELOW = 1e-5


@dataclass(slots=True)
class GenerationPlan:
    """A validated request, ready for the engine."""

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions
    n: int
    lora: LoraSpec | None

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


@dataclass(slots=True)
class Choice:
    """One finished sequence."""

    index: int
    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[TokenLogprobs] | None = None
    """Per output token, when asked for."""
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    """Per prompt token, when asked for."""


async def _run_blocking(fn, *args):  # type: ignore[no-untyped-def]
    return await anyio.to_thread.run_sync(fn, *args)


async def plan_generation(
    engine: Engine,
    *,
    messages: Sequence[dict[str, Any]] | None,
    prompt: str | None,
    max_tokens: int | None,
    temperature: float,
    top_p: float,
    stop: str | list[str] | None,
    seed: int | None,
    n: int,
    limits: LimitsConfig,
    lora: LoraSpec | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    ignore_eos: bool = False,
    id_prefix: str = "chatcmpl",
    prompt_ids: list[int] | None = None,
    tools: list[dict[str, Any]] | None = None,
    render: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> GenerationPlan:
    """Render and tokenize the prompt, then check it and ``max_tokens`` against the context.

    Args:
        prompt_ids: an already tokenized prompt (instead of ``prompt``/``messages``).
        tools: tool definitions for a template that renders them.
        render: other ``render_chat`` options (``add_generation_prompt``, ...).
        options: further :class:`SamplingOptions` fields (vLLM extensions, log-probs, constraint).
        request_id: reuse this id (several prompts of one request), else a fresh one.

    The request-shape limits (messages, the ``max_tokens`` cap) were checked when the request
    was opened (:meth:`forge_gateway.dispatch.Dispatcher.open`).

    Raises:
        ContextLengthExceededError: prompt plus ``max_tokens`` exceed the context.
    """
    if messages is not None:
        size = sum(len(m["content"]) for m in messages)
        kwargs = {**(render or {}), "tools": tools}
        if size > _INLINE_TOKENIZE_CHARS or tools:
            text = await anyio.to_thread.run_sync(lambda: engine.render_chat(messages, **kwargs))
        else:
            text = engine.render_chat(messages, **kwargs)
    else:
        text = prompt or ""
    if prompt_ids is not None:
        ids = list(prompt_ids)
    elif len(text) > _INLINE_TOKENIZE_CHARS:
        ids = await _run_blocking(engine.tokenize, text)
    else:
        ids = engine.tokenize(text)
    if not ids:
        raise InvalidRequestError("prompt is empty", param="prompt" if messages is None else "messages")
    context = engine.max_model_len
    room = context - len(ids)
    if room < 1 or (max_tokens is not None and max_tokens > room):
        wanted = max_tokens if max_tokens is not None else 1
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{len(ids) + wanted} tokens ({len(ids)} in the messages, {wanted} in the completion). "
            "Please reduce the length of the messages or completion.",
            param="messages" if messages is not None else "prompt",
        )
    if max_tokens is None:
        max_tokens = min(room, limits.default_max_tokens)
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if temperature < _GREEDY_BELOW or top_p < _GREEDY_BELOW:
        # Both mean "only the most likely token", and tiny values break float32 sampling
        # (logits / T overflow; top_p rounds to 0 and drops every token): decode greedily, as
        # vLLM does for temperature below the same threshold.
        temperature = 0.0
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise InvalidRequestError("seed must be a 64-bit signed integer", param="seed")
    sampling = SamplingOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stops,
        seed=seed,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        ignore_eos=ignore_eos,
    )
    if options:
        sampling = dataclasses.replace(sampling, **options)
    if sampling.min_tokens > sampling.max_tokens:
        raise InvalidRequestError("min_tokens must not exceed max_tokens", param="min_tokens")
    return GenerationPlan(request_id or f"{id_prefix}-{uuid.uuid4().hex}", ids, sampling, n, lora)


def _engine_request(plan: GenerationPlan, index: int, prompt_index: int = 0) -> EngineRequest:
    sampling = plan.sampling
    if sampling.seed is not None and index:
        # Different choices of one seeded request must differ, yet stay reproducible.
        sampling = dataclasses.replace(sampling, seed=sampling.seed + index)
    rid = plan.request_id
    if prompt_index:
        rid = f"{rid}-p{prompt_index}"
    if plan.n > 1:
        rid = f"{rid}-{index}"
    return EngineRequest(rid, plan.prompt_token_ids, sampling, plan.lora)


async def stream_outputs(engine: Engine, plan: GenerationPlan) -> AsyncIterator[tuple[int, EngineOutput]]:
    """Yield ``(choice index, delta)`` from all ``n`` sequences as they arrive.

    Closing this iterator early (client gone) closes every engine stream, which aborts them.
    """
    async for item in stream_many(engine, [plan]):
        yield item


async def stream_many(
    engine: Engine, plans: Sequence[GenerationPlan]
) -> AsyncIterator[tuple[int, EngineOutput]]:
    """Like :func:`stream_outputs` over several prompts: choice index = prompt index * n + i."""
    requests = [_engine_request(plan, i, p) for p, plan in enumerate(plans) for i in range(plan.n)]
    if len(requests) == 1:
        stream = engine.generate(requests[0])
        try:
            async for out in stream:
                yield 0, out
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        return

    queue: asyncio.Queue[tuple[int, EngineOutput | BaseException | None]] = asyncio.Queue()

    async def pump(index: int) -> None:
        stream = engine.generate(requests[index])
        try:
            async for out in stream:
                await queue.put((index, out))
            await queue.put((index, None))
        except BaseException as exc:  # forwarded to the consumer, which re-raises it
            await queue.put((index, exc))
            raise
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    tasks = [asyncio.create_task(pump(i)) for i in range(len(requests))]
    try:
        remaining = len(requests)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


async def run_to_completion(engine: Engine, plan: GenerationPlan) -> list[Choice]:
    """Generate all ``n`` sequences and return them whole, in index order."""
    return await run_many(engine, [plan])


async def run_many(engine: Engine, plans: Sequence[GenerationPlan]) -> list[Choice]:
    """Generate every prompt's ``n`` sequences; choices in index order (prompt index * n + i)."""
    total = sum(plan.n for plan in plans)
    texts: list[list[str]] = [[] for _ in range(total)]
    finish: list[str] = ["stop"] * total
    counts = [0] * total
    logprobs: list[list[TokenLogprobs] | None] = [None] * total
    prompt_logprobs: list[list[TokenLogprobs | None] | None] = [None] * total
    async for index, out in stream_many(engine, plans):
        texts[index].append(out.text)
        counts[index] = out.completion_tokens
        if out.finish_reason:
            finish[index] = out.finish_reason
        if out.logprobs is not None:
            logprobs[index] = (logprobs[index] or []) + out.logprobs
        if out.prompt_logprobs is not None:
            prompt_logprobs[index] = out.prompt_logprobs
    return [
        Choice(i, "".join(texts[i]), finish[i], counts[i], logprobs[i], prompt_logprobs[i])
        for i in range(total)
    ]
