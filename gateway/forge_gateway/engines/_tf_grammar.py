"""Constrained decoding for the transformers engine with xgrammar (the library vLLM uses too).

One :class:`Grammars` per engine: an xgrammar compiler over the model's tokenizer (it caches
compiled grammars), and a batch matcher that fills the allowed-token bitmask of every constrained
sequence of a step in one call. Imported lazily (xgrammar pulls in torch).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr

from forge_gateway.engines._common import constraint_error
from forge_gateway.engines.base import Constraint

__all__ = ["Grammars"]


class Grammars:
    """Compiles constraints to matchers and masks a batch of logits with them.

    Args:
        tokenizer: the Hugging Face tokenizer.
        vocab_size: the model's logits width (may exceed the tokenizer's vocabulary).
        stop_ids: end-of-sequence ids; a finished grammar allows only these.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids) or None
        )
        # One thread: the engine's worker already owns a core; the other serves the event loop.
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        self._batch = xgr.BatchGrammarMatcher(max_threads=1)
        self.vocab_size = vocab_size

    def matcher(self, constraint: Constraint) -> Any:
        """A fresh matcher for one sequence.

        Raises:
            InvalidRequestError: the schema, pattern or grammar does not compile.
        """
        try:
            compiled = self._compile(constraint)
        except (RuntimeError, ValueError, TypeError) as exc:  # xgrammar's errors subclass these
            raise constraint_error(constraint, exc) from exc
        return xgr.GrammarMatcher(compiled)

    def _compile(self, constraint: Constraint) -> Any:
        kind, value = constraint.kind, constraint.value
        ws = not constraint.compact
        seps = None if ws else (",", ":")
        if kind == "json":
            return self._compiler.compile_json_schema(json.dumps(value), any_whitespace=ws, separators=seps)
        if kind == "json_object":
            return self._compiler.compile_json_schema(
                '{"type": "object"}', any_whitespace=ws, separators=seps
            )
        if kind == "regex":
            return self._compiler.compile_regex(value)
        if kind == "choice":
            return self._compiler.compile_grammar(
                "root ::= " + " | ".join(json.dumps(choice) for choice in value)
            )
        return self._compiler.compile_grammar(value)

    def mask(self, logits: torch.Tensor, matchers: list[Any]) -> None:
        """Set the logits of tokens the grammar forbids to -inf, in place (rows without a matcher untouched)."""
        rows = [i for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return
        bitmask = xgr.allocate_token_bitmask(len(rows), self.vocab_size)
        self._batch.batch_fill_next_token_bitmask([matchers[i] for i in rows], bitmask)
        sub = logits[rows].float()
        xgr.apply_token_bitmask_inplace(sub, bitmask.to(sub.device), vocab_size=self.vocab_size)
        logits[rows] = sub.to(logits.dtype)
