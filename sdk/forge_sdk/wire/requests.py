"""Request bodies of ``/v1/chat/completions`` and ``/v1/completions``.

Every field of the current OpenAI API is declared, so clients that send them decode; fields that
mean nothing for a local engine (``store``, ``metadata``, ``service_tier``, ``prediction``, ...)
are accepted and ignored. vLLM's sampling extensions (what clients pass in ``extra_body``) are
declared too. Unknown fields are refused (a typo is a 400); the ``Lenient*`` subclasses ignore them
instead, for gateways configured with ``[api] unknown_fields = "ignore"``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from forge_sdk.wire.messages import (
    ChatMessage,
    NamedToolChoice,
    NamedToolChoiceFunction,
    ResponseFormat,
    Tool,
)

__all__ = [
    "ChatCompletionRequest",
    "CompletionRequest",
    "LenientChatCompletionRequest",
    "LenientCompletionRequest",
    "StreamOptions",
    "StructuredOutputs",
]

Bias = Annotated[float, Meta(ge=-100.0, le=100.0)]
Int32 = Annotated[int, Meta(ge=0, le=2**31 - 1)]
"""Counts the engines keep in 32-bit tensors: a larger value is a 400 here, not an overflow in a
batch that other requests share."""
MAX_LOGIT_BIAS = 1024
"""Most ``logit_bias`` entries (OpenAI documents no cap; a bounded one keeps per-step work small)."""
MAX_STOP_TOKEN_IDS = 256
"""Most ``stop_token_ids``."""
MIN_REPETITION_PENALTY = 0.01
"""Smallest ``repetition_penalty``: it divides logits, and below this a float32 division overflows
to inf (``5e-324`` rounds to 0 in float32), which poisons the whole distribution."""


class StreamOptions(Struct, forbid_unknown_fields=True):
    """Options for streaming responses."""

    include_usage: bool = False
    """Send a final chunk with ``usage`` and empty ``choices``."""
    include_obfuscation: bool | None = None
    """OpenAI's stream obfuscation padding; accepted, never added (no third party sits in between)."""


class StructuredOutputs(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """vLLM's ``structured_outputs`` extension: exactly one constraint."""

    json: dict[str, Any] | str | None = None
    """A JSON schema (object or JSON string)."""
    regex: str | None = None
    """A regular expression the whole output matches."""
    choice: list[str] | None = None
    """The output is one of these strings."""
    grammar: str | None = None
    """An EBNF (GBNF) grammar."""
    json_object: bool | None = None
    """Any JSON object."""
    disable_any_whitespace: bool = False
    """No free whitespace inside JSON output."""


class _SamplingFields(Struct, forbid_unknown_fields=True, kw_only=True):
    """Sampling fields shared by chat and text completions (OpenAI's and vLLM's)."""

    model: str
    """A served model or expert name, or ``"auto"`` to let the router choose."""
    max_tokens: Int32 | None = None
    """Most tokens to generate (default: what the context leaves, capped by the server); 0 only
    with ``echo`` on text completions (score the prompt, generate nothing)."""
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    """Sampling temperature; 0 is greedy (default 1)."""
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    """Nucleus sampling mass (default 1)."""
    n: Annotated[int, Meta(ge=1, le=16)] = 1
    """How many choices to generate."""
    stop: str | Annotated[list[str], Meta(max_length=16)] | None = None
    """Strings that end generation (not included in the output unless ``include_stop_str_in_output``)."""
    seed: Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    """Seed for reproducible sampling (a 64-bit signed integer)."""
    stream: bool | None = False
    """Stream Server-Sent Events."""
    stream_options: StreamOptions | None = None
    """Streaming options (only with ``stream``)."""
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    """Penalty for tokens already present."""
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    """Penalty proportional to token frequency."""
    logit_bias: Annotated[dict[str, Bias], Meta(max_length=MAX_LOGIT_BIAS)] | None = None
    """Token id (as a string) -> bias in [-100, 100] added to its logit (at most 1024 entries)."""
    user: str | None = None
    """End-user id (logs only)."""
    # -- vLLM extensions (``extra_body``) --
    top_k: Annotated[int, Meta(ge=-1, le=2**31 - 1)] | None = None
    """Sample among the k most likely tokens (0 or -1: all; more than the vocabulary: all)."""
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    """Drop tokens less likely than ``min_p`` times the most likely one."""
    repetition_penalty: Annotated[float, Meta(ge=MIN_REPETITION_PENALTY, le=2.0)] | None = None
    """Divide positive (multiply negative) logits of tokens already seen (1: off; 0.01 to 2)."""
    min_tokens: Int32 = 0
    """End-of-sequence and stop strings are ignored until this many tokens are generated."""
    stop_token_ids: Annotated[list[Int32], Meta(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    """Token ids that also end generation (at most 256)."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the text."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string at the end of the text."""
    ignore_eos: bool = False
    """Keep generating past the end-of-sequence token (benchmarks, tests)."""
    structured_outputs: StructuredOutputs | None = None
    """vLLM's constrained decoding: one of json / regex / choice / grammar / json_object."""
    guided_json: dict[str, Any] | str | None = None
    """Older vLLM name of ``structured_outputs.json``."""
    guided_regex: str | None = None
    """Older vLLM name of ``structured_outputs.regex``."""
    guided_choice: list[str] | None = None
    """Older vLLM name of ``structured_outputs.choice``."""
    guided_grammar: str | None = None
    """Older vLLM name of ``structured_outputs.grammar``."""


class ChatCompletionRequest(_SamplingFields, kw_only=True):
    """``POST /v1/chat/completions`` body: the whole current OpenAI API plus vLLM's extensions."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    """The conversation so far."""
    max_completion_tokens: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None
    """Newer name of ``max_tokens``; wins when both are given."""
    logprobs: bool | None = None
    """Return the log-probability of each output token."""
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    """Also return the most likely alternatives at each position (needs ``logprobs``)."""
    response_format: ResponseFormat | None = None
    """``text``, ``json_object`` or ``json_schema``: constrains the output."""
    tools: list[Tool] | None = None
    """Functions the model may call."""
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    """``none``, ``auto`` (default with tools), ``required``, or one named function."""
    parallel_tool_calls: bool | None = None
    """Allow several calls in one turn (default true)."""
    functions: list[Any] | None = None
    """Legacy ``tools`` (function definitions); mapped onto tools."""
    function_call: Literal["none", "auto"] | NamedToolChoiceFunction | None = None
    """Legacy ``tool_choice``."""
    modalities: list[Literal["text", "audio"]] | None = None
    """Output modalities; only ``["text"]`` is served (audio is a 400)."""
    audio: dict[str, Any] | None = None
    """Audio output options; audio output is not served (a 400)."""
    store: bool | None = None
    """OpenAI stores the completion; accepted and ignored (nothing is stored)."""
    metadata: dict[str, str] | None = None
    """Tags for stored completions; accepted and ignored."""
    service_tier: str | None = None
    """OpenAI processing tier; accepted and ignored."""
    prediction: dict[str, Any] | None = None
    """Predicted output (speculative hint); accepted and ignored."""
    reasoning_effort: str | None = None
    """Reasoning effort of reasoning models; accepted and ignored."""
    verbosity: str | None = None
    """Answer length hint of newer models; accepted and ignored."""
    web_search_options: dict[str, Any] | None = None
    """Web search tool options; accepted and ignored (no web search here)."""
    safety_identifier: str | None = None
    """End-user id for abuse detection; accepted and ignored."""
    prompt_cache_key: str | None = None
    """Cache routing hint; accepted and ignored (engines cache prefixes by themselves)."""
    prompt_cache_retention: str | None = None
    """Cache retention hint; accepted and ignored."""
    # -- vLLM chat extensions --
    chat_template_kwargs: dict[str, Any] | None = None
    """Extra variables for the chat template (e.g. ``enable_thinking``)."""
    add_generation_prompt: bool = True
    """End the prompt with the assistant header (vLLM extension)."""
    continue_final_message: bool = False
    """Continue the last (assistant) message instead of starting a new one (vLLM extension)."""


class CompletionRequest(_SamplingFields, kw_only=True):
    """``POST /v1/completions`` body (OpenAI legacy text completions plus vLLM's extensions)."""

    prompt: str | Annotated[list[str | int | list[int]], Meta(min_length=1)]
    """A prompt, a batch of prompts, token ids, or a batch of token-id lists (not mixed)."""
    echo: bool = False
    """Prepend the prompt to the completion (and, with ``logprobs``, score the prompt too)."""
    logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    """Return log-probs of each token and of this many most likely alternatives."""
    best_of: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None
    """Server-side candidates; only ``best_of == n`` (or absent) is served."""
    suffix: str | None = None
    """Text after the completion (insertion); not served unless empty."""
    prompt_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    """vLLM extension: log-probs of the prompt tokens with this many alternatives."""


class LenientChatCompletionRequest(ChatCompletionRequest, forbid_unknown_fields=False, kw_only=True):
    """:class:`ChatCompletionRequest` that ignores unknown top-level fields."""


class LenientCompletionRequest(CompletionRequest, forbid_unknown_fields=False, kw_only=True):
    """:class:`CompletionRequest` that ignores unknown top-level fields."""
