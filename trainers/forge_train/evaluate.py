"""``forge-train eval``: mean negative log-likelihood per answer token on held-out chat data.

Only assistant tokens count (the same labels as SFT, :mod:`forge_train.chat_labels`), so the figure
says how well a model predicts the answers, not the questions. Two ways to measure:

- locally: the model (plus an optional LoRA adapter) in this process; only the logits of answer
  positions are computed (``logits_to_keep``), so a 49k or 150k vocabulary costs little memory;
- through a running gateway: ``/v1/completions`` with ``echo`` and ``logprobs`` returns the
  log-probability of every prompt token, for ``model=<expert>``, the base or ``"auto"`` (the
  router picks the expert from the conversation's question, as for a user's chat request, and
  that expert scores the conversation). Answer tokens are found by
  their character offsets in the rendered conversation, so the gateway's tokenisation need not be
  replayed here.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from forge_sdk import TrainingMethod, TrainingResult
from forge_sdk.errors import ConfigurationError, DataError, InferenceError

__all__ = ["EvalMethod", "EvalResult", "gateway_answer_nll", "local_answer_nll"]


class EvalResult(msgspec.Struct):
    """Answer-token NLL of one model on one data set."""

    nll: float
    """Mean negative log-likelihood per answer token, in nats."""
    answer_tokens: int
    """Answer tokens scored."""
    conversations: int
    """Conversations scored."""
    served_by: dict[str, int] = msgspec.field(default_factory=dict)
    """Through a gateway: how many conversations each expert served (``x-forge-expert``)."""

    @property
    def perplexity(self) -> float:
        """``exp(nll)``."""
        return math.exp(self.nll)


def _conversations(path: str, limit: int | None) -> list[list[dict[str, str]]]:
    from forge_train.data import load_sft_dataset

    data = load_sft_dataset(path, limit=limit)
    return [list(row["messages"]) for row in data]


def local_answer_nll(
    model_name: str,
    data_path: str,
    *,
    adapter: str | None = None,
    limit: int | None = None,
    max_length: int = 1024,
) -> EvalResult:
    """Score ``model_name`` (+ ``adapter``) on the assistant tokens of ``data_path`` in this process.

    Raises:
        DataError: unreadable data or no answer tokens within ``max_length``.
        ModelError: the model or adapter cannot be loaded.
    """
    import torch

    from forge_train.chat_labels import IGNORE, tokenize_chat
    from forge_train.runner import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    total, count, convs = 0.0, 0, 0
    with torch.inference_mode():
        for messages in _conversations(data_path, limit):
            row = tokenize_chat(tokenizer, messages)
            ids, labels = row["input_ids"][:max_length], row["labels"][:max_length]
            # Position p predicts token p + 1: keep the logits of positions whose next token is an answer.
            keep = [p for p in range(len(ids) - 1) if labels[p + 1] != IGNORE]
            if not keep:
                continue
            out = model(
                input_ids=torch.tensor([ids]),
                logits_to_keep=torch.tensor(keep),
                use_cache=False,
            )
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)
            targets = torch.tensor([ids[p + 1] for p in keep])
            total -= float(logp.gather(1, targets[:, None]).sum())
            count += len(keep)
            convs += 1
    if count == 0:
        raise DataError(f"{data_path}: no answer tokens within max_length={max_length}")
    return EvalResult(nll=total / count, answer_tokens=count, conversations=convs)


def gateway_answer_nll(
    base_url: str,
    model: str,
    data_path: str,
    tokenizer_name: str,
    *,
    api_key: str | None = None,
    limit: int | None = None,
    timeout: float = 600.0,
) -> EvalResult:
    """Score ``model`` as served by a gateway (an expert, the base, or ``"auto"``).

    Raises:
        InferenceError: the gateway refused a request or returned no prompt log-probabilities.
    """
    import httpx

    from forge_train.chat_labels import assistant_spans
    from forge_train.runner import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_name)
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    total, count, convs = 0.0, 0, 0
    served: Counter[str] = Counter()
    with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout) as client:
        for messages in _conversations(data_path, limit):
            text, spans = assistant_spans(tokenizer, messages)
            scorer = _routed_expert(client, messages) if model == "auto" else model
            body = {
                "model": scorer,
                "prompt": text,
                "echo": True,
                "logprobs": 0,
                "max_tokens": 1,
                "temperature": 0,
            }
            try:
                response = client.post("/v1/completions", json=body)
            except httpx.HTTPError as exc:
                raise InferenceError(f"cannot reach the gateway at {base_url}: {exc}") from exc
            if response.status_code != 200:
                raise InferenceError(f"the gateway answered {response.status_code}: {response.text[:300]}")
            served[response.headers.get("x-forge-expert", scorer)] += 1
            nll, n = _answer_logprobs(response.json(), spans, len(text))
            total += nll
            count += n
            convs += 1 if n else 0
    if count == 0:
        raise DataError(f"{data_path}: no answer tokens scored")
    return EvalResult(nll=total / count, answer_tokens=count, conversations=convs, served_by=dict(served))


def _routed_expert(client: Any, messages: Sequence[dict[str, str]]) -> str:
    """The expert ``model="auto"`` picks for this conversation's question.

    Scoring the whole rendered conversation with ``model="auto"`` would let the router read the
    answer too; a user's chat request holds only the question. So the question (the messages
    before the first assistant turn) goes through ``/v1/chat/completions`` with ``model="auto"``
    (one token) and the expert named in ``x-forge-expert`` scores the conversation.
    """
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    body = {"model": "auto", "messages": list(messages[:first]), "max_tokens": 1, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    expert = response.headers.get("x-forge-expert")
    if response.status_code != 200 or not expert:
        raise InferenceError(f"model=auto did not route ({response.status_code}): {response.text[:300]}")
    return str(expert)


def _answer_logprobs(body: Any, spans: Sequence[tuple[int, int]], prompt_chars: int) -> tuple[float, int]:
    try:
        logprobs = body["choices"][0]["logprobs"]
        offsets, values = logprobs["text_offset"], logprobs["token_logprobs"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InferenceError(
            "the gateway returned no prompt log-probabilities (needs /v1/completions echo + logprobs)"
        ) from exc
    total, count = 0.0, 0
    for offset, value in zip(offsets, values, strict=False):
        if offset >= prompt_chars:
            break  # the generated token
        if value is not None and any(s <= offset < e for s, e in spans):
            total -= float(value)
            count += 1
    return total, count


class EvalMethod(TrainingMethod):
    """``forge-train eval``: answer-token NLL of a model, an adapter, or a gateway's expert."""

    name = "eval"
    help = "Mean NLL per answer token on held-out chat data (locally, or through a running gateway)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Flags of ``forge-train eval``."""
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        parser.description = (
            f"{cls.help}.\n\nexamples:\n"
            "  forge-train eval --model smollm2-135m-instruct --adapter out/math --data heldout.jsonl\n"
            "  forge-train eval --gateway http://127.0.0.1:8000 --model auto "
            "--tokenizer smollm2-135m-instruct --data heldout.jsonl"
        )
        parser.add_argument("--model", required=True, help="model (local) or served model name (--gateway)")
        parser.add_argument("--data", required=True, help="chat data: messages, prompt/response or Alpaca")
        parser.add_argument("--adapter", help="LoRA adapter folder to apply (local only)")
        parser.add_argument("--max-samples", type=int, metavar="N", help="score the first N conversations")
        parser.add_argument(
            "--max-length", type=int, default=1024, metavar="N", help="tokens per conversation"
        )
        parser.add_argument("--gateway", metavar="URL", help="score through this gateway's /v1/completions")
        parser.add_argument("--tokenizer", help="model whose chat template renders the data (with --gateway)")
        parser.add_argument("--api-key", help="gateway API key (default: $FORGE_API_KEY)")
        parser.add_argument("--output", metavar="FILE", help="also write the result as JSON")

    def run(self, args: argparse.Namespace) -> TrainingResult:
        """Score and report ``nll``, ``perplexity``, ``answer_tokens`` and ``conversations``."""
        import os

        if not Path(args.data).exists():
            raise DataError(f"--data {args.data}: no such file")
        if args.gateway:
            if args.adapter:
                raise ConfigurationError("--adapter is for local scoring; through a gateway name the expert")
            if not args.tokenizer:
                raise ConfigurationError(
                    "--gateway needs --tokenizer (the base model, for its chat template)"
                )
            result = gateway_answer_nll(
                args.gateway,
                args.model,
                args.data,
                args.tokenizer,
                api_key=args.api_key or os.environ.get("FORGE_API_KEY"),
                limit=args.max_samples,
            )
        else:
            result = local_answer_nll(
                args.model,
                args.data,
                adapter=args.adapter,
                limit=args.max_samples,
                max_length=args.max_length,
            )
        metrics: dict[str, Any] = {**msgspec.to_builtins(result), "perplexity": round(result.perplexity, 4)}
        if args.output:
            Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        if not metrics["served_by"]:
            metrics.pop("served_by")
        return TrainingResult(output_dir=args.output or "", metrics=metrics)
