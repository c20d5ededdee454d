"""Constrained decoding for the transformers engine with xgrammar (the library vLLM uses too).

One :class:`Grammars` per engine: the budgeted compiler over the model's tokenizer
(:mod:`forge_gateway.engines.compile_budget`: size and time limits, a cache by hash, compiles in a
killable process) and a batch matcher that fills the allowed-token bitmask of every constrained
sequence of a step in one call. Imported lazily (xgrammar pulls in torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import xgrammar as xgr

from forge_gateway.engines.base import Constraint
from forge_gateway.engines.compile_budget import BudgetedCompiler

__all__ = ["Grammars"]


class Grammars:
    """Compiles constraints to matchers and masks a batch of logits with them.

    Args:
        tokenizer: the Hugging Face tokenizer.
        vocab_size: the model's logits width (may exceed the tokenizer's vocabulary).
        stop_ids: end-of-sequence ids; a finished grammar allows only these.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        self.compiler = BudgetedCompiler(tokenizer, vocab_size, stop_ids)
        # One thread: the engine's worker already owns a core; the other serves the event loop.
        self._batch = xgr.BatchGrammarMatcher(max_threads=1)
        self.vocab_size = vocab_size

    async def matcher(self, constraint: Constraint) -> Any:
        """A fresh matcher for one sequence (the compile runs within its budget, off the event loop).

        Raises:
            InvalidRequestError: the constraint is over budget or does not compile.
        """
        return xgr.GrammarMatcher(await self.compiler.compile(constraint))

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
