"""Request fields -> engine :class:`SamplingOptions` fields and output :class:`Constraint`.

One place decides defaults, precedence and refusals for both routes, so ``/v1/chat/completions``
and ``/v1/completions`` cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from forge_gateway.engines.base import Constraint
from forge_gateway.engines.compile_budget import DEFAULT_BUDGET, check_constraint
from forge_sdk.errors import InvalidRequestError
from forge_sdk.types import (
    ChatCompletionRequest,
    CompletionRequest,
    ResponseFormatJsonObject,
    ResponseFormatJsonSchema,
)

__all__ = ["request_constraint", "sampling_fields"]


def _logit_bias(raw: dict[str, float] | None, vocab_size: int | None) -> dict[int, float] | None:
    if not raw:
        return None
    bias: dict[int, float] = {}
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise InvalidRequestError(
                f"logit_bias key {key!r} is not a token id", param="logit_bias"
            ) from None
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            raise InvalidRequestError(f"logit_bias token id {token} is out of range", param="logit_bias")
        bias[token] = float(value)
    return bias


def sampling_fields(req: ChatCompletionRequest | CompletionRequest, vocab_size: int | None) -> dict[str, Any]:
    """The :class:`SamplingOptions` fields a request sets beyond the basic ones (vLLM's extensions,
    logit bias, log-probs). ``max_tokens``, temperature, stops, seed and constraint are decided
    elsewhere.

    Raises:
        InvalidRequestError: a value outside what the engines accept, naming the field.
    """
    if (
        req.stop_token_ids
        and vocab_size is not None
        and any(not 0 <= t < vocab_size for t in req.stop_token_ids)
    ):
        raise InvalidRequestError("stop_token_ids holds an id outside the vocabulary", param="stop_token_ids")
    fields: dict[str, Any] = {
        # A top_k at or above the vocabulary keeps every token: say so with 0 (the engines' "all").
        "top_k": 0 if req.top_k in (None, -1) or (vocab_size and req.top_k >= vocab_size) else req.top_k,
        "min_p": req.min_p or 0.0,
        "repetition_penalty": req.repetition_penalty or 1.0,
        "min_tokens": req.min_tokens,
        "stop_token_ids": tuple(req.stop_token_ids or ()),
        "skip_special_tokens": req.skip_special_tokens,
        "include_stop_str_in_output": req.include_stop_str_in_output,
        "logit_bias": _logit_bias(req.logit_bias, vocab_size),
        "presence_penalty": req.presence_penalty or 0.0,
        "frequency_penalty": req.frequency_penalty or 0.0,
        "ignore_eos": req.ignore_eos,
    }
    if isinstance(req, ChatCompletionRequest):
        if req.top_logprobs is not None and not req.logprobs:
            raise InvalidRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        fields["logprobs"] = (req.top_logprobs or 0) if req.logprobs else None
    else:
        fields["logprobs"] = req.logprobs
        fields["prompt_logprobs"] = req.prompt_logprobs
        if req.echo and req.logprobs is not None and req.prompt_logprobs is None:
            # Legacy echo + logprobs scores the prompt too (what evaluation harnesses rely on).
            fields["prompt_logprobs"] = req.logprobs
    if fields["min_tokens"] and req.max_tokens is not None and fields["min_tokens"] > req.max_tokens:
        raise InvalidRequestError("min_tokens must not exceed max_tokens", param="min_tokens")
    return fields


def _schema(value: dict[str, Any] | str, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        if len(value) > DEFAULT_BUDGET.max_bytes:  # before parsing: the budget's size limit
            raise InvalidRequestError(
                f"{param} is too large to compile: more than {DEFAULT_BUDGET.max_bytes} bytes",
                param=param,
                code="constraint_too_large",
            )
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, and nesting past the stack
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise InvalidRequestError(f"{param} is not valid JSON: {reason}", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{param} must be a JSON schema object", param=param)
    return value


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI strict mode: objects admit no keys beyond their ``properties`` unless they say so."""
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict_value(key, value) for key, value in schema.items()}
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def _strict_value(key: str, value: Any) -> Any:
    if key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
        return {name: _strict(sub) for name, sub in value.items()}
    if key in ("items", "additionalProperties", "not", "contains") and isinstance(value, dict):
        return _strict(value)
    if key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
        return [_strict(sub) for sub in value]
    return value


def request_constraint(req: ChatCompletionRequest | CompletionRequest) -> Constraint | None:
    """The output constraint a request asks for: ``response_format`` or vLLM's structured outputs.

    Raises:
        InvalidRequestError: more than one constraint, or a malformed one.
    """
    found: list[tuple[str, Constraint]] = []
    so = req.structured_outputs
    if so is not None:
        kinds = [
            (so.json is not None, lambda: Constraint("json", _schema(so.json, "structured_outputs.json"))),  # type: ignore[arg-type]
            (so.regex is not None, lambda: Constraint("regex", so.regex)),
            (so.choice is not None, lambda: Constraint("choice", tuple(so.choice or ()))),
            (so.grammar is not None, lambda: Constraint("grammar", so.grammar)),
            (bool(so.json_object), lambda: Constraint("json_object")),
        ]
        chosen = [make for present, make in kinds if present]
        if len(chosen) != 1:
            raise InvalidRequestError(
                "structured_outputs needs exactly one of json, regex, choice, grammar, json_object",
                param="structured_outputs",
            )
        constraint = chosen[0]()
        if so.disable_any_whitespace:
            constraint = Constraint(constraint.kind, constraint.value, compact=True)
        found.append(("structured_outputs", constraint))
    if req.guided_json is not None:
        found.append(("guided_json", Constraint("json", _schema(req.guided_json, "guided_json"))))
    if req.guided_regex is not None:
        found.append(("guided_regex", Constraint("regex", req.guided_regex)))
    if req.guided_choice is not None:
        found.append(("guided_choice", Constraint("choice", tuple(req.guided_choice))))
    if req.guided_grammar is not None:
        found.append(("guided_grammar", Constraint("grammar", req.guided_grammar)))
    if isinstance(req, ChatCompletionRequest):
        fmt = req.response_format
        if isinstance(fmt, ResponseFormatJsonObject):
            found.append(("response_format", Constraint("json_object")))
        elif isinstance(fmt, ResponseFormatJsonSchema):
            spec = fmt.json_schema
            schema = spec.schema if spec.schema is not None else {"type": "object"}
            if spec.strict:
                # Size limits first: the strict conversion recurses, so its depth must be bounded.
                check_constraint(Constraint("json", schema, param="response_format"))
                schema = _strict(schema)
            found.append(("response_format", Constraint("json", schema)))
    if len(found) > 1:
        raise InvalidRequestError(
            f"only one output constraint may be given, got {', '.join(name for name, _ in found)}",
            param=found[1][0],
        )
    for name, constraint in found:
        if constraint.kind == "choice" and (not constraint.value or not all(constraint.value)):
            raise InvalidRequestError("a choice constraint needs non-empty choices", param=name)
    if not found:
        return None
    name, constraint = found[0]
    constraint = replace(constraint, param=name)
    check_constraint(constraint)  # a 400 now, before the request reaches an engine
    return constraint
