"""Parity check: does an engine configuration generate what the model itself generates?

The reference is Hugging Face transformers' ``generate`` in float32 on CPU, greedy, on the same
checkpoint. The engine under test gets the very same prompt token ids (the model's chat template
applied to a fixed set of chat prompts) and generates greedily too; the two token sequences are
compared token for token.

Two float32 implementations of one model differ only by rounding (different kernels, fused or
reordered sums): their logits agree to ~1e-5, so greedy decoding can only part where the
reference's best two tokens are a near-tie. The tolerance says exactly that: a prompt whose
generation diverges passes only if, at the first divergent position, the engine took the
reference's runner-up and the reference's log-prob gap between its best two tokens was below
:data:`TIE_GAP`. Any other divergence, or fewer than :data:`MIN_EXACT` of the prompts matching to
the end, fails the check. The figures behind :data:`TIE_GAP` are in docs/serving.md ("Engine defaults").
"""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from forge_gateway.engines.base import Engine

__all__ = [
    "MAX_TOKENS",
    "MIN_EXACT",
    "Generation",
    "PROMPTS",
    "TIE_GAP",
    "ParityReport",
    "PromptParity",
    "Reference",
    "compare",
    "engine_generations",
    "reference_generations",
    "run_parity",
]

PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a Python function that returns the square of a number.",
    "Explain in one sentence why the sky is blue.",
    "What is 12 times 7?",
    "Give me three tips for staying focused while studying.",
    "Translate 'good morning' into Spanish.",
    "Write a haiku about autumn leaves.",
    "Who wrote the play Romeo and Juliet?",
)
"""Chat prompts (one user message each): facts, arithmetic, code, lists, translation, verse."""

MAX_TOKENS = 32
"""Tokens generated per prompt."""

TIE_GAP = 0.005
"""Largest reference log-prob gap (nats) between its best two tokens at which a divergence is
still rounding. Measured on SmolLM2 (docs/serving.md, "Engine defaults"): float32 engines moved log-probs by
at most 2.7e-5 (so could swap only tokens ~5e-5 apart) and matched token for token; bfloat16 moved
them by up to 0.13 and swapped tokens 0.001 to 0.105 apart, "Paris" among them. 0.005 leaves
float32 kernels elsewhere ~100x room and stays below 17 of the 18 swaps bfloat16 made."""

MIN_EXACT = 6
"""Prompts (of the eight) that must match the reference to the end, near-ties or not."""


@dataclass(slots=True)
class Reference:
    """The reference model's greedy generations."""

    prompt_ids: list[list[int]]
    """Token ids of each prompt (chat template applied, generation prompt added)."""
    tokens: list[list[int]]
    """Greedy tokens generated for each prompt (up to and including an end-of-sequence token)."""
    runner_up: list[list[int]]
    """The second most likely token at each generated position."""
    gaps: list[list[float]]
    """Log-prob gap between the best and the second token at each generated position (nats)."""
    logprobs: list[list[float]]
    """Log-prob of each generated token."""
    texts: list[str]
    """Decoded generations."""


@dataclass(slots=True)
class PromptParity:
    """One prompt's engine generation against the reference."""

    prompt: str
    reference_tokens: int
    """Tokens the reference generated."""
    matched: int
    """Leading tokens the engine generated exactly as the reference."""
    diverged_at: int | None
    """First position where the two differ (None: identical)."""
    gap: float | None
    """The reference's best-two log-prob gap at ``diverged_at`` (None: identical)."""
    runner_up: bool
    """The engine took the reference's second-best token where it diverged."""
    drift: float
    """Largest difference between the engine's and the reference's log-prob of the same token,
    over the positions both generated alike (nats): the engine's numerical distance."""
    reference_text: str
    engine_text: str

    @property
    def exact(self) -> bool:
        """Identical to the reference to the end."""
        return self.diverged_at is None

    @property
    def near_tie(self) -> bool:
        """Diverged only where the reference itself was at a near-tie (within the tolerance)."""
        return self.diverged_at is not None and self.runner_up and (self.gap or 0.0) < TIE_GAP

    @property
    def ok(self) -> bool:
        return self.exact or self.near_tie


@dataclass(slots=True)
class ParityReport:
    """A configuration's generations against the reference, prompt by prompt."""

    configuration: str
    """What ran (engine, dtype, compiled or eager, LoRA)."""
    prompts: list[PromptParity] = field(default_factory=list)

    @property
    def exact(self) -> int:
        return sum(p.exact for p in self.prompts)

    @property
    def passed(self) -> bool:
        """Every divergence is a near-tie, and at least ``MIN_EXACT`` prompts match to the end."""
        need = min(MIN_EXACT, len(self.prompts))
        return all(p.ok for p in self.prompts) and self.exact >= need

    def table(self) -> str:
        """A plain-text table of the prompts, then the verdict."""
        rows = [f"parity of {self.configuration} against transformers float32 (greedy, {MAX_TOKENS} tokens)"]
        rows.append(
            f"{'#':>2}  {'match':>7}  {'diverges':>8}  {'gap':>6}  {'drift':>7}  prompt -> engine's text"
        )
        for i, p in enumerate(self.prompts, 1):
            where = "-" if p.diverged_at is None else str(p.diverged_at)
            gap = "-" if p.gap is None else f"{p.gap:.4f}"
            mark = "" if p.exact else (" (near-tie)" if p.near_tie else " (WRONG)")
            rows.append(
                f"{i:>2}  {p.matched:>3}/{p.reference_tokens:<3}  {where:>8}  {gap:>6}  {p.drift:>7.1e}  "
                f"{_short(p.prompt, 32)} -> {_short(p.engine_text, 40)!r}{mark}"
            )
            if not p.ok:
                rows.append(f"{'':>31}reference: {_short(p.reference_text, 60)!r}")
        verdict = "PASS" if self.passed else "FAIL"
        rows.append(
            f"{verdict}: {self.exact}/{len(self.prompts)} prompts identical, "
            f"{sum(p.near_tie for p in self.prompts)} diverge at a near-tie (gap < {TIE_GAP}), "
            f"{sum(not p.ok for p in self.prompts)} differ (need every divergence a near-tie and "
            f">= {min(MIN_EXACT, len(self.prompts))} identical); largest log-prob drift "
            f"{max((p.drift for p in self.prompts), default=0.0):.1e}"
        )
        return "\n".join(rows)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def reference_generations(
    model_path: str, prompts: Sequence[str] = PROMPTS, max_tokens: int = MAX_TOKENS
) -> Reference:
    """Greedy generations of transformers in float32 on CPU, with the gap to the runner-up.

    Raises:
        ModelError: the model or its tokenizer cannot be loaded, or it has no chat template.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from forge_gateway.engines._common import ChatTokenizer
    from forge_sdk.errors import ModelError

    tokenizer = ChatTokenizer.load(model_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    except Exception as exc:  # transformers raises OSError, ValueError, ... for a bad model
        raise ModelError(f"cannot load model {model_path!r}: {exc}") from exc
    eos = tokenizer.eos_ids(model.generation_config.eos_token_id)
    out = Reference([], [], [], [], [], [])
    for prompt in prompts:
        try:
            text = tokenizer.render_chat([{"role": "user", "content": prompt}])
        except Exception as exc:
            raise ModelError(f"{model_path!r} cannot be checked: {exc}") from exc
        ids = tokenizer.tokenize(text)
        with torch.no_grad():
            gen = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=min(eos) if eos else 0,
            )
        tokens: list[int] = []
        runner_up: list[int] = []
        gaps: list[float] = []
        chosen: list[float] = []
        for step, logits in enumerate(gen.logits):
            logp = torch.log_softmax(logits[0].float(), dim=-1)
            top = torch.topk(logp, 2)
            tokens.append(int(gen.sequences[0, len(ids) + step]))
            runner_up.append(int(top.indices[1]))
            gaps.append(float(top.values[0] - top.values[1]))
            chosen.append(float(logp[tokens[-1]]))
            if tokens[-1] in eos:
                break
        out.prompt_ids.append(ids)
        out.tokens.append(tokens)
        out.runner_up.append(runner_up)
        out.gaps.append(gaps)
        out.logprobs.append(chosen)
        out.texts.append(tokenizer.hf.decode(tokens, skip_special_tokens=True))
    del model
    gc.collect()  # the engine to be checked loads next: free the reference's float32 weights
    return out


@dataclass(slots=True)
class Generation:
    """One engine generation."""

    tokens: list[int]
    text: str
    logprobs: list[float]
    """The engine's log-prob of each token in ``tokens``."""


async def engine_generations(
    engine: Engine, prompt_ids: Sequence[list[int]], max_tokens: int = MAX_TOKENS
) -> list[Generation]:
    """Greedy generations of a started engine for each prompt, all submitted at once (batched,
    as a serving engine runs them)."""
    from forge_gateway.engines.base import EngineRequest, SamplingOptions

    async def one(i: int, ids: list[int]) -> Generation:
        request = EngineRequest(
            request_id=f"parity-{i}",
            prompt_token_ids=list(ids),
            sampling=SamplingOptions(max_tokens=max_tokens, temperature=0.0, logprobs=1),
        )
        out = Generation([], "", [])
        async for chunk in engine.generate(request):
            out.tokens.extend(chunk.token_ids)
            out.text += chunk.text
            out.logprobs.extend(entry.logprob for entry in chunk.logprobs or ())
        return out

    return list(await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompt_ids))))


def compare(
    configuration: str,
    reference: Reference,
    generations: Sequence[Generation],
    prompts: Sequence[str] = PROMPTS,
) -> ParityReport:
    """Prompt-by-prompt comparison of an engine's generations with the reference."""
    report = ParityReport(configuration)
    for i, gen in enumerate(generations):
        ref, tokens = reference.tokens[i], gen.tokens
        # An engine may leave the final end-of-sequence token out of its stream: compare what
        # both hold, and a missing tail only where the reference ended on end-of-sequence.
        matched = 0
        for a, b in zip(ref, tokens, strict=False):
            if a != b:
                break
            matched += 1
        same_length = len(tokens) == len(ref) or (
            len(tokens) == len(ref) - 1 and matched == len(tokens) and len(ref) < MAX_TOKENS
        )
        diverged = None if matched == min(len(ref), len(tokens)) and same_length else matched
        drift = max(
            (
                abs(a - b)
                for a, b in zip(reference.logprobs[i][:matched], gen.logprobs[:matched], strict=False)
            ),
            default=0.0,
        )
        gap = runner_up = None
        if diverged is not None and diverged < len(ref):
            gap = reference.gaps[i][diverged]
            runner_up = diverged < len(tokens) and tokens[diverged] == reference.runner_up[i][diverged]
        report.prompts.append(
            PromptParity(
                prompt=prompts[i],
                reference_tokens=len(ref),
                matched=matched,
                diverged_at=diverged,
                gap=gap if gap is None else (gap if math.isfinite(gap) else float("inf")),
                runner_up=bool(runner_up),
                drift=drift,
                reference_text=reference.texts[i],
                engine_text=gen.text,
            )
        )
    return report


async def run_parity(
    engine: Engine, reference: Reference, configuration: str, prompts: Sequence[str] = PROMPTS
) -> ParityReport:
    """Generate with a started engine and compare it with ``reference``."""
    generations = await engine_generations(engine, reference.prompt_ids, MAX_TOKENS)
    return compare(configuration, reference, generations, prompts)
