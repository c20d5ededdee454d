"""Assistant-only labels on any chat template, without ``{% generation %}`` markers.

TRL's ``assistant_only_loss`` needs templates that mark assistant text with ``{% generation %}``;
the templates real models ship (SmolLM2's, Qwen2.5's, Llama 3's) have none, so with them TRL
would learn the system prompt and the user's words too. Here the template is rendered prefix by
prefix: for each assistant message, the conversation up to it (with the generation prompt) and up
to its end. The characters in between are the assistant's turn as the model must produce it
(content and end-of-turn token, no role header); the tokens whose offsets fall in such a span get
their id as label, every other token -100. The tokens come from one tokenisation of the whole
conversation, so labels match exactly what the model sees.

When a template is not prefix-stable (it rewrites earlier turns once a later one exists), the
assistant contents are located in the rendered text instead, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from forge_sdk.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["assistant_spans", "tokenize_chat", "tokenize_chat_dataset"]

IGNORE = -100
"""Label of a token that carries no loss (PyTorch's cross-entropy ``ignore_index``)."""


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], *, prompt: bool) -> str:
    if not messages:
        return ""
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=prompt))


def assistant_spans(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(tokenizer, messages, prompt=False)
    spans: list[tuple[int, int]] = []
    stable = True
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start_text = _render(tokenizer, messages[:i], prompt=True)
        end_text = _render(tokenizer, messages[: i + 1], prompt=False)
        if not (
            full.startswith(start_text) and full.startswith(end_text) and len(end_text) > len(start_text)
        ):
            stable = False
            break
        spans.append((len(start_text), len(end_text)))
    if stable:
        return full, spans
    spans, cursor = [], 0
    for message in messages:
        if message["role"] != "assistant" or not message["content"]:
            continue
        at = full.find(message["content"], cursor)
        if at < 0:
            raise DataError(
                "the chat template drops or rewrites an assistant message; cannot find its tokens"
            )
        end = at + len(message["content"])
        eos = getattr(tokenizer, "eos_token", None)
        if eos and full.startswith(eos, end):  # learn to stop, as the prefix method does
            end += len(eos)
        spans.append((at, end))
        cursor = end
    return full, spans


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> dict[str, list[int]]:
    """``input_ids`` of the rendered conversation and ``labels`` that are -100 outside assistant turns.

    Raises:
        DataError: the tokenizer has no chat template, or the template loses an assistant turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the tokenizer has no chat template; cannot find the assistant turns")
    text, spans = assistant_spans(tokenizer, messages)
    # The template writes BOS and friends itself; letting the tokenizer add them again would
    # shift every label by one special token.
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    labels = [IGNORE] * len(ids)
    for k, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start and any(s <= start < e for s, e in spans):
            labels[k] = ids[k]
    return {"input_ids": ids, "labels": labels}


def tokenize_chat_dataset(dataset: Dataset, tokenizer: Any) -> Dataset:
    """Map a ``messages`` dataset to ``input_ids`` + ``labels`` (assistant tokens only).

    Raises:
        DataError: no ``messages`` column, no chat template, or a record without assistant tokens.
    """
    if "messages" not in dataset.column_names:
        raise DataError(f"assistant-only loss needs a 'messages' column, got {dataset.column_names}")
    tokenized = dataset.map(
        lambda row: tokenize_chat(tokenizer, row["messages"]),
        remove_columns=dataset.column_names,
        desc="Tokenizing chat turns (assistant-only labels)",
    )
    return tokenized
