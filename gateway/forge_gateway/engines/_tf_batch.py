"""The continuous-batching core of the transformers engine: one left-padded KV cache for all sequences.

Invariant between steps: the shared cache holds, for every active sequence, all its tokens except
the last sampled one (``pending``), right-aligned and left-padded with masked zeros. A decode step
feeds every sequence's pending token at once. New sequences are prefilled as their own small batch
and their cache is concatenated in (both sides left-padded to the same length); finished ones are
dropped by selecting batch rows, and all-padding columns on the left are trimmed.

Only the worker thread touches this module's objects; it imports torch, so it is imported lazily.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F  # noqa: N812
from transformers import DynamicCache

from forge_gateway.engines._common import StopChecker
from forge_gateway.engines.base import LOGPROB_FLOOR, EngineRequest, TokenLogprobs

__all__ = ["BASE_ADAPTER", "BatchState", "Seq", "position_logprobs", "sample_next"]

BASE_ADAPTER = "__base__"
"""PEFT's name for "no adapter" in a mixed-adapter batch."""


@dataclass(eq=False)
class Seq:
    """One request inside the worker."""

    request: EngineRequest
    post: Any
    """Callable taking an EngineOutput or an exception; hands it to the request's event loop."""
    stopper: StopChecker
    adapter: str = BASE_ADAPTER
    generator: torch.Generator | None = None
    generated: list[int] = field(default_factory=list)
    pending: int = -1
    """Last sampled token, not yet in the KV cache."""
    finished: bool = False
    matcher: Any = None
    """xgrammar matcher when the output is constrained."""
    eos: frozenset[int] = frozenset()
    """Ids that end this sequence (the model's end-of-sequence plus ``stop_token_ids``)."""
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    """Filled at prefill when the request asks for prompt log-probs; sent with the first output."""


def make_generator(seed: int | None) -> torch.Generator:
    """A private RNG per sequence so a seeded request gives the same tokens whatever shares its batch."""
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else random.getrandbits(63))
    return gen


def position_logprobs(logprobs: torch.Tensor, chosen: int, k: int) -> TokenLogprobs:
    """One position's report from a 1-D log-softmax row."""
    top: list[tuple[int, float]] = []
    if k > 0:
        values, ids = torch.topk(logprobs, k)
        top = [
            (int(i), max(float(v), LOGPROB_FLOOR)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        ]
    return TokenLogprobs(chosen, max(float(logprobs[chosen]), LOGPROB_FLOOR), top)


def _penalize(row: torch.Tensor, seq: Seq) -> torch.Tensor:
    """Logit bias, min_tokens, repetition / presence / frequency penalties (``row`` is a private copy)."""
    s = seq.request.sampling
    if s.logit_bias:
        ids = torch.tensor(list(s.logit_bias), dtype=torch.long, device=row.device)
        row.index_add_(0, ids, torch.tensor(list(s.logit_bias.values()), dtype=row.dtype, device=row.device))
    if len(seq.generated) < s.min_tokens and seq.eos:
        row[list(seq.eos)] = float("-inf")
    if s.repetition_penalty != 1.0:
        # CTRL / vLLM semantics: over prompt and output tokens, shrink positive logits, grow negative ones.
        seen = torch.tensor(
            sorted(set(seq.request.prompt_token_ids) | set(seq.generated)),
            dtype=torch.long,
            device=row.device,
        )
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
    if seq.generated and (s.presence_penalty or s.frequency_penalty):
        # OpenAI semantics: subtract per-token penalties for tokens already generated.
        ids = torch.tensor(seq.generated, dtype=torch.long, device=row.device)
        counts = torch.zeros_like(row).scatter_add_(0, ids, torch.ones_like(ids, dtype=row.dtype))
        row = row - s.frequency_penalty * counts - s.presence_penalty * (counts > 0).to(row.dtype)
    return row


def sample_next(logits: torch.Tensor, seq: Seq) -> int:
    """Pick the next token of ``seq`` from its last-position ``logits`` (1-D, vocab)."""
    s = seq.request.sampling
    row = _penalize(logits.float().clone(), seq)
    if not bool(torch.isfinite(row).any()):
        # Every token is ruled out (a finished grammar allows only EOS, which min_tokens blocks):
        # end the sequence rather than sample from nothing, which would fail the whole batch.
        return min(seq.eos) if seq.eos else int(torch.argmax(logits))
    if s.temperature == 0:
        return int(torch.argmax(row))
    if 0 < s.top_k < row.shape[0]:
        kth = torch.topk(row, s.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = F.softmax(row / s.temperature, dim=-1)
    if s.min_p > 0:
        probs = probs.masked_fill(probs < s.min_p * probs.max(), 0.0)
    if s.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token, even
        # when top_p * mass rounds to 0 in float32).
        drop = sorted_probs.cumsum(0) - sorted_probs >= s.top_p * sorted_probs.sum()
        drop[0] = False
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0:
        # Values the API refuses can still reach here from a plugin or a direct engine caller
        # (a penalty that overflows float32, ...): degrade this sequence to greedy on its finite
        # logits rather than raise, which would cost the step of every sequence in the batch.
        return int(torch.argmax(torch.nan_to_num(row, nan=float("-inf"))))
    gen = seq.generator
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def _prompt_logprobs(logits: torch.Tensor, seq: Seq, width: int) -> list[TokenLogprobs | None]:
    """Each prompt token's log-prob given the tokens before it (``logits``: one left-padded row)."""
    prompt = seq.request.prompt_token_ids
    k = seq.request.sampling.prompt_logprobs or 0
    offset = width - len(prompt)
    rows = F.log_softmax(logits[offset : width - 1].float(), dim=-1)  # row j predicts prompt[j + 1]
    out: list[TokenLogprobs | None] = [None]
    out += [position_logprobs(rows[j], prompt[j + 1], k) for j in range(len(prompt) - 1)]
    return out


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class BatchState:
    """The active sequences and their shared KV cache and attention mask."""

    def __init__(self, model: Any, device: torch.device, pad_id: int) -> None:
        self.model = model
        self.device = device
        self.pad_id = pad_id
        self.seqs: list[Seq] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (batch, cache_len), 1 = real token
        self.use_adapters = False
        """Pass PEFT's per-row ``adapter_names`` (set once a PEFT model wraps the base)."""
        self.max_batch_seen = 0
        self.steps = 0

    def _forward(self, seqs: list[Seq], all_logits: bool = False, **kwargs: Any) -> torch.Tensor:
        if self.use_adapters:
            kwargs["adapter_names"] = [s.adapter for s in seqs]
        out = self.model(use_cache=True, logits_to_keep=0 if all_logits else 1, **kwargs)
        self.steps += 1
        return out.logits if all_logits else out.logits[:, -1, :]

    def prefill(self, new: list[Seq]) -> torch.Tensor:
        """Run the prompts of ``new`` as one left-padded batch and merge their cache in.

        Returns:
            Last-position logits of the new sequences, one row each.
        """
        width = max(len(s.request.prompt_token_ids) for s in new)
        ids = torch.full((len(new), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, s in enumerate(new):
            p = s.request.prompt_token_ids
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        scored = [s for s in new if s.request.sampling.prompt_logprobs is not None]
        logits = self._forward(
            new,
            all_logits=bool(scored),
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            cache_position=torch.arange(width, device=self.device),
        )
        if scored:
            for i, s in enumerate(new):
                if s.request.sampling.prompt_logprobs is not None:
                    s.prompt_logprobs = _prompt_logprobs(logits[i], s, width)
            logits = logits[:, -1, :]
        self._merge(new, cache, mask)
        return logits

    def _merge(self, new: list[Seq], cache: DynamicCache, mask: torch.Tensor) -> None:
        if self.cache is None or not self.seqs:
            self.seqs, self.cache, self.mask = list(new), cache, mask
            return
        assert self.mask is not None
        length = max(self.mask.shape[1], mask.shape[1])
        layers = []
        old_layers: list[Any] = list(self.cache.layers)  # transformers types these as a union
        new_layers: list[Any] = list(cache.layers)
        for old_layer, new_layer in zip(old_layers, new_layers, strict=True):
            keys = torch.cat([_left_pad(old_layer.keys, length, 2), _left_pad(new_layer.keys, length, 2)], 0)
            values = torch.cat(
                [_left_pad(old_layer.values, length, 2), _left_pad(new_layer.values, length, 2)], 0
            )
            layers.append((keys, values))
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(mask, length, 1)], 0)
        self.seqs.extend(new)

    def decode(self) -> torch.Tensor:
        """Feed every sequence's pending token in one forward pass.

        Returns:
            Next-token logits, one row per sequence in ``self.seqs`` order.
        """
        assert self.mask is not None and self.cache is not None
        batch, length = self.mask.shape
        self.max_batch_seen = max(self.max_batch_seen, batch)
        ids = torch.tensor([[s.pending] for s in self.seqs], dtype=torch.long, device=self.device)
        position_ids = self.mask.sum(-1, keepdim=True)
        self.mask = torch.cat([self.mask, self.mask.new_ones((batch, 1))], 1)
        return self._forward(
            self.seqs,
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=position_ids,
            past_key_values=self.cache,
            cache_position=torch.arange(length, length + 1, device=self.device),
        )

    def drop_finished(self) -> None:
        """Remove finished sequences' rows and trim the left padding nobody needs any more."""
        keep = [i for i, s in enumerate(self.seqs) if not s.finished]
        if len(keep) == len(self.seqs):
            return
        if not keep:
            self.seqs, self.cache, self.mask = [], None, None
            return
        assert self.mask is not None and self.cache is not None
        rows = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self.mask.index_select(0, rows)
        first = int(mask.any(0).nonzero()[0])  # leftmost column some kept sequence uses
        layers = [
            (layer.keys.index_select(0, rows)[:, :, first:], layer.values.index_select(0, rows)[:, :, first:])
            for layer in cast(list[Any], list(self.cache.layers))
        ]
        self.cache = DynamicCache(ddp_cache_data=layers)
        self.mask = mask[:, first:]
        self.seqs = [self.seqs[i] for i in keep]
