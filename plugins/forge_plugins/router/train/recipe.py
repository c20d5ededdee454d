"""The router's training recipe: which sources, how many examples of each, for which model.

One place decides what ``forge-train router --data FILE`` trains on, so the command, the
benchmark's leave-one-source-out and the tests all use the same recipe. Besides the labelled
queries, the recipe reads three files it finds beside ``--data`` (the documented data files; a
flag names another file, and a missing one is left out and recorded as such):

* ``pretrain_gutenberg_5mb.txt``: prose paragraphs for pasted-context augmentation;
* ``sft_alpaca_2k.jsonl``: Code Alpaca requests and answers (rows whose source says codealpaca);
* ``dpo_hh_1k.jsonl``: 300 opening user turns of hh-rlhf, labelled ``general``.

It also adds 500 math and 500 code documentation paragraphs (:mod:`.corpus`), 300 generated
queries a class in under-covered styles (:mod:`.generated`) and 300 a class of everyday requests
without domain keywords (:mod:`.practical`: practical writing, software problems told by their
symptoms, everyday quantities, and advice in the same framings).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forge_plugins.router.model import RouterModel
from forge_plugins.router.train.augment import augment
from forge_plugins.router.train.data import LabelledQuery, load_chat_prompts, load_code_chat, load_filler

__all__ = ["CALIBRATION", "DEFAULT_FILES", "Recipe", "TrainingSet", "build_training_set", "train"]

CALIBRATION: dict[str, Any] = {
    "tfidf_weight": 0.6,
    "temperature": {"encoder": 0.651, "tfidf": 1.0},
    "abstain": {"encoder": 0.5, "tfidf": 0.3},
    "tuned_on": "leave-one-source-out over router_train.jsonl (4 folds with the encoder, 13 with "
    "tf-idf alone) and the four hand-written sets; tests/performance/bench_router.py --tune",
}
"""How the two models are mixed and calibrated, tuned on the proxy (``bench_router.py --tune``).

``tfidf_weight`` is the tf-idf model's share of the geometric mean of the two models'
probabilities; ``temperature`` divides the mixed log-probabilities (fitted by minimising the
negative log-likelihood of held-out-source predictions); ``abstain`` is the confidence below which
the classifier sends the query to the default expert. Per kind of model: with and without encoder.

The weight and the encoder's threshold maximise the *mean* macro-F1 over five proxies counted
alike: the pooled leave-one-source-out folds and the four hand-written sets (an abstention counts
as ``general``; ties go to the smaller threshold). Weights 0.5-0.7 are within 0.001 of each other;
the folds alone would prefer thresholds up to 0.84 (+0.01) but that costs 0.05 on the
keyword-free set, so 0.5 is where the mean peaks. The temperatures are fitted on the folds (the
encoder's on 4, the tf-idf model's on all 13, whose threshold maximises their macro-F1).
"""

DEFAULT_FILES = {
    "filler": "pretrain_gutenberg_5mb.txt",
    "code_chat": "sft_alpaca_2k.jsonl",
    "chat_prompts": "dpo_hh_1k.jsonl",
}
"""Auxiliary sources looked up beside ``--data`` when no flag names them."""


@dataclass
class Recipe:
    """Settings of the recipe; the defaults are the best found on the proxy (``bench_router.py``)."""

    filler: str | None = None
    """Plain-text file of pasted-context paragraphs (default: beside the data)."""
    code_chat: str | None = None
    """Chat JSONL of code requests and answers (default: beside the data)."""
    code_chat_source: str = "codealpaca"
    """Keep only ``code_chat`` rows whose ``source`` contains this."""
    code_label: str = "code"
    """Label of the code chat requests."""
    chat_prompts: str | None = None
    """Chat/preference JSONL whose opening user turns are ``general`` examples (default: beside the data)."""
    chat_prompts_n: int = 300
    """How many opening turns to sample."""
    chat_prompts_label: str = "general"
    """Label of the opening turns."""
    domain_docs: int = 500
    """Math and code documentation paragraphs per label (0: none)."""
    generated: int = 300
    """Generated queries per class (0: none)."""
    practical: int = 300
    """Generated everyday requests without domain keywords per class (0: none); all of them are
    in the encoder's fine-tuning set."""
    extra: list[str] = field(default_factory=list)
    """More labelled JSONL files added as they are."""
    encoder: bool = True
    """Fine-tune the encoder (``False``: the tf-idf model alone, in seconds)."""
    encoder_examples: int = 4000
    """Examples the encoder is fine-tuned on (all labelled queries, then a sample of the rest)."""
    epochs: int = 2
    """Encoder fine-tuning epochs."""
    max_len: int = 48
    """Tokens the encoder reads (a head and a tail window of longer texts). The encoder's time is
    linear in tokens (~0.15 ms each on one core); 48 reads all of 90% of the queries and cuts
    the long prompts' tail latency by a quarter against 64 (``bench_router.py``)."""
    augment: bool = True
    """Add augmented variants (pasted context, chatty framing, case, code with its code)."""
    c: float = 10.0
    """Inverse L2 regularisation strength of the tf-idf logistic regression."""
    seed: int = 20240917
    """Seed of every sample and augmentation."""


@dataclass
class TrainingSet:
    """What the recipe produced for one set of labelled queries."""

    records: list[LabelledQuery]
    filler: list[str]
    code_pairs: list[tuple[str, str]]
    extra: list[LabelledQuery]
    """Examples added to the tf-idf model's training set, a sample of them to the encoder's."""
    sources: dict[str, str | None]
    """Name of each auxiliary file used (``None``: not found, left out)."""
    core: list[LabelledQuery] = field(default_factory=list)
    """Examples in every training set, the encoder's included (the keyword-free requests)."""

    @property
    def tfidf_extra(self) -> list[LabelledQuery]:
        """What the tf-idf model trains on besides the (augmented) labelled queries."""
        return [*self.core, *self.extra]

    def encoder_examples(self, recipe: Recipe) -> list[LabelledQuery]:
        """The fine-tuning set: every labelled query and core example, then a seeded sample of
        the extra and augmented examples up to ``recipe.encoder_examples``."""
        rng = random.Random(f"encoder-examples:{recipe.seed}")
        pool = list(self.extra)
        if recipe.augment:
            pool += augment(self.records, rng, self.filler, self.code_pairs, recipe.code_label)
        room = max(0, recipe.encoder_examples - len(self.records) - len(self.core))
        picked = rng.sample(pool, min(room, len(pool)))
        return [*self.records, *self.core, *picked]


def _beside(data: Path, given: str | None, key: str) -> Path | None:
    if given:
        return Path(given)
    candidate = data.parent / DEFAULT_FILES[key]
    return candidate if candidate.exists() else None


def build_training_set(
    records: Sequence[LabelledQuery], data_path: str | Path, recipe: Recipe
) -> TrainingSet:
    """Read the auxiliary sources of ``recipe`` and assemble the training set of ``records``.

    Raises:
        forge_sdk.errors.DataError: a named source file is missing or malformed.
        forge_sdk.errors.ConfigurationError: the documentation corpus is unavailable.
    """
    from forge_plugins.router.train.data import load_labelled

    data = Path(data_path)
    filler_path = _beside(data, recipe.filler, "filler")
    code_path = _beside(data, recipe.code_chat, "code_chat")
    chat_path = _beside(data, recipe.chat_prompts, "chat_prompts")
    filler = load_filler(filler_path) if filler_path else []
    pairs = load_code_chat(code_path, source_contains=recipe.code_chat_source) if code_path else []
    extra: list[LabelledQuery] = [r for path in recipe.extra for r in load_labelled(path)]
    if chat_path:
        turns = load_chat_prompts(chat_path, recipe.chat_prompts_n, seed=recipe.seed)
        extra += [(turn, recipe.chat_prompts_label) for turn in turns]
    if recipe.domain_docs:
        from forge_plugins.router.train.corpus import domain_docs

        extra += domain_docs(recipe.domain_docs, seed=recipe.seed)
    if recipe.generated:
        from forge_plugins.router.train.generated import generated_examples

        extra += generated_examples(recipe.generated, seed=recipe.seed)
    core: list[LabelledQuery] = []
    if recipe.practical:
        from forge_plugins.router.train.practical import practical_examples

        core = practical_examples(recipe.practical, filler=filler, seed=recipe.seed)
    sources = {
        "filler": filler_path.name if filler_path else None,
        "code_chat": code_path.name if code_path else None,
        "chat_prompts": chat_path.name if chat_path else None,
    }
    return TrainingSet(list(records), filler, pairs, extra, sources, core)


def train(
    records: Sequence[LabelledQuery],
    data_path: str | Path,
    recipe: Recipe,
    output: str | Path,
    *,
    log: Any = None,
) -> RouterModel:
    """Train the tf-idf model and (with ``recipe.encoder``) the encoder; write the encoder files.

    The returned model's ``meta`` records the recipe, the sources and the calibration; the caller
    saves it (``router.json``, ``router.npz``) into ``output``, where the encoder already is.

    Raises:
        forge_sdk.errors.DataError: fewer than two labels, or a bad source file.
        forge_sdk.errors.ConfigurationError: the encoder needs packages that are not installed.
    """
    from forge_plugins.router.encoder import ENCODER_FILE, TOKENIZER_FILE
    from forge_plugins.router.train.training import train_router

    out = Path(output)
    data = build_training_set(records, data_path, recipe)
    model = train_router(
        data.records,
        filler=data.filler,
        code_pairs=data.code_pairs,
        code_label=recipe.code_label,
        extra=data.tfidf_extra,
        augment=recipe.augment,
        c=recipe.c,
        seed=recipe.seed,
    )
    # File arguments are recorded by name (in "sources"): paths of this machine mean nothing elsewhere.
    model.meta["recipe"] = {
        k: v for k, v in asdict(recipe).items() if k not in ("filler", "code_chat", "chat_prompts", "extra")
    }
    model.meta["sources"] = {**data.sources, "extra": [Path(p).name for p in recipe.extra]}
    if recipe.domain_docs:
        from forge_plugins.router.train.corpus import domain_docs_versions

        model.meta["domain_docs_versions"] = domain_docs_versions()
    model.meta["combine"] = CALIBRATION
    out.mkdir(parents=True, exist_ok=True)
    if recipe.encoder:
        from forge_plugins.router.train.finetune import ENCODER_NAME, export_onnx, finetune

        examples = data.encoder_examples(recipe)
        tuned = finetune(
            examples, model.labels, epochs=recipe.epochs, max_len=recipe.max_len, seed=recipe.seed, log=log
        )
        path = export_onnx(tuned, out)
        model.meta["encoder"] = {
            "base": ENCODER_NAME,
            "file": ENCODER_FILE,
            "max_len": recipe.max_len,
            "n_examples": len(examples),
            "bytes": path.stat().st_size,
        }
    else:
        # An encoder left from an earlier training would be paired with the new tf-idf model.
        for name in (ENCODER_FILE, TOKENIZER_FILE):
            (out / name).unlink(missing_ok=True)
    return model
