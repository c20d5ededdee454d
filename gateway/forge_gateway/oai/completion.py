"""``/v1/completions`` on a local engine: prompt batches, ``echo``, legacy log-probs (prompt scoring).

Loglikelihood evaluation (as evaluation harnesses run it over this API) sends the context plus
the continuation with ``echo: true, logprobs: k, max_tokens: 0 or 1`` and reads
``token_logprobs`` of the echoed prompt; ``max_tokens: 0`` scores the prompt without generating.
"""

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
from forge_gateway.oai.logprobs import LegacyLogprobs, TokenTexts
from forge_gateway.oai.sampling import request_constraint, sampling_fields
from forge_gateway.oai.streaming import SSE_DONE, primed, sse
from forge_gateway.routing import Target, route_headers
from forge_gateway.state import Gateway
from forge_sdk.errors import InvalidRequestError, LargeForgeAIError
from forge_sdk.types import Completion, CompletionChoice, CompletionRequest, Usage

__all__ = ["prompts_of", "serve_completion"]

_encode = msgspec.json.Encoder().encode


def prompts_of(req: CompletionRequest) -> list[str | list[int]]:
    """The request's prompts: text, or token ids.

    Raises:
        InvalidRequestError: a list that mixes token ids with strings or id lists (the wire type
            admits each element kind, not their mix).
    """
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    if any(isinstance(p, int) for p in prompt):
        raise InvalidRequestError(
            "prompt mixes token ids with strings or token-id lists; send one kind", param="prompt"
        )
    return list(prompt)  # type: ignore[arg-type]


async def _plans(
    gateway: Gateway, engine: Engine, target: Target, req: CompletionRequest, prompts: list[str | list[int]]
) -> tuple[list[GenerationPlan], list[str], bool]:
    limits = gateway.config.limits
    if len(prompts) * req.n > limits.max_messages:
        raise InvalidRequestError(
            f"too many prompts: {len(prompts)} x n={req.n} > {limits.max_messages}", param="prompt"
        )
    if req.suffix:
        raise InvalidRequestError("suffix (insertion) is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise InvalidRequestError("best_of must equal n (no server-side candidate ranking)", param="best_of")
    score_only = req.max_tokens == 0
    if score_only and not req.echo:
        raise InvalidRequestError("max_tokens 0 is only meaningful with echo", param="max_tokens")
    options = sampling_fields(req, engine.vocab_size)
    options["constraint"] = request_constraint(req)
    rid = None
    plans: list[GenerationPlan] = []
    echoes: list[str] = []
    vocab = engine.vocab_size
    for prompt in prompts:
        ids = prompt if isinstance(prompt, list) else None
        if ids is not None and vocab is not None and not all(0 <= t < vocab for t in ids):
            raise InvalidRequestError(f"prompt token ids must lie in [0, {vocab})", param="prompt")
        plan = await plan_generation(
            engine,
            messages=None,
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_ids=ids,
            # Scoring only: generate one token (engines need one) and drop it.
            max_tokens=1 if score_only else req.max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            stop=req.stop,
            seed=req.seed,
            n=req.n,
            limits=limits,
            lora=target.lora,
            id_prefix="cmpl",
            options=options,
            request_id=rid,
        )
        rid = plan.request_id
        plans.append(plan)
        if req.echo:
            echoes.append(prompt if isinstance(prompt, str) else engine.detokenize(prompt))
    return plans, echoes, score_only


async def serve_completion(gateway: Gateway, engine: Engine, call: Call) -> Response[bytes] | Stream:
    """Answer one text completion call (any number of prompts) on ``engine``."""
    target, req = call.target, call.request
    headers = route_headers(target)
    plans, echoes, score_only = await _plans(gateway, engine, target, req, prompts_of(req))
    prompt_tokens = sum(p.prompt_tokens for p in plans)
    await call.reserve(prompt_tokens + sum(p.n * p.sampling.max_tokens for p in plans))
    texts = TokenTexts(engine.token_text)
    shaper = _Shaper(plans, echoes, score_only, texts, req.logprobs is not None)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        outputs = await primed(stream_many(engine, plans))
        return Stream(
            _stream(gateway, plans, target, shaper, include_usage, engine.name, outputs),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )
    choices = await gateway.with_timeout(run_many(engine, plans))
    completion_tokens = 0 if score_only else sum(c.completion_tokens for c in choices)
    gateway.record_usage(target, prompt_tokens, completion_tokens, engine.name)
    out = []
    for c in choices:
        text, logprobs = shaper.delta(
            c.index, EngineOutput(c.text, [], None, logprobs=c.logprobs, prompt_logprobs=c.prompt_logprobs)
        )
        reason = "length" if score_only else c.finish_reason
        out.append(CompletionChoice(c.index, text, reason, logprobs))  # type: ignore[arg-type]
    body = Completion(
        id=plans[0].request_id,
        created=int(time.time()),
        model=target.model,
        choices=out,
        usage=Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens),
    )
    return Response(_encode(body), media_type="application/json", headers=headers)


class _Shaper:
    """Per choice: the echoed prompt once, then output text, with legacy log-probs alongside."""

    def __init__(
        self,
        plans: list[GenerationPlan],
        echoes: list[str],
        score_only: bool,
        texts: TokenTexts,
        logprobs: bool,
    ) -> None:
        self._plans = [plan for plan in plans for _ in range(plan.n)]
        self._echoes = [echo for echo, plan in zip(echoes, plans, strict=False) for _ in range(plan.n)]
        self.score_only = score_only
        self._started: set[int] = set()
        self._logprobs = [LegacyLogprobs(texts) for _ in self._plans] if logprobs else None

    def delta(self, index: int, out: EngineOutput) -> tuple[str, Any]:
        text = "" if self.score_only else out.text
        lp = self._logprobs[index] if self._logprobs is not None else None
        if index not in self._started:
            self._started.add(index)
            if self._echoes:
                text = self._echoes[index] + text
                if lp is not None:
                    lp.add_prompt(self._plans[index].prompt_token_ids, out.prompt_logprobs)
        if lp is None:
            return text, None
        if not self.score_only and out.logprobs:
            lp.add(out.logprobs)
        return text, lp.take()


async def _stream(
    gateway: Gateway,
    plans: list[GenerationPlan],
    target: Target,
    shaper: _Shaper,
    include_usage: bool,
    engine_name: str,
    outputs: AsyncIterator[tuple[int, EngineOutput]],
) -> AsyncIterator[bytes]:
    created = int(time.time())
    rid = plans[0].request_id
    total = sum(p.n for p in plans)
    completion_tokens = [0] * total
    score_only = shaper.score_only
    try:
        async for index, out in outputs:
            completion_tokens[index] = 0 if score_only else out.completion_tokens
            text, logprobs = shaper.delta(index, out)
            reason = ("length" if score_only else out.finish_reason) if out.finish_reason else None
            if text or reason or (logprobs is not None and logprobs.tokens):
                yield sse(
                    Completion(rid, created, target.model, [CompletionChoice(index, text, reason, logprobs)])
                )
    except LargeForgeAIError as exc:
        yield sse_error(exc)
        return
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
        prompt_tokens = sum(p.prompt_tokens for p in plans)
        gateway.record_usage(target, prompt_tokens, sum(completion_tokens), engine_name)
    if include_usage:
        prompt_tokens = sum(p.prompt_tokens for p in plans)
        done = sum(completion_tokens)
        yield sse(
            Completion(rid, created, target.model, [], usage=Usage(prompt_tokens, done, prompt_tokens + done))
        )
    yield SSE_DONE
