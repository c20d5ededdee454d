"""Augmentation of router training queries towards real traffic.

The training set's styles are narrow (short factoid questions, templated writing prompts, tidy
word problems), so training augments it: a query inside unrelated pasted prose, two queries of one
class run together (multi-part requests), shouted or capitalised variants, chatty framing, LaTeX
spelled as people type it, and, when a code chat set is given, code requests followed or preceded
by their code.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Sequence

from forge_plugins.router.train.data import LabelledQuery

__all__ = ["augment"]

_NORM = re.compile(r"\W+")

# Chatty framing seen in real traffic, attached to every class alike so that it carries no signal.
_PREFIXES = (
    "",
    "hey, ",
    "hi! ",
    "quick question: ",
    "can you help me with this? ",
    "I need some help. ",
    "please help: ",
    "ok so ",
    "Hello, I have a question. ",
    "I was wondering: ",
    "Hi there,\n\n",
)
_SUFFIXES = (
    "",
    " thanks!",
    " any ideas?",
    " Please explain.",
    " Thank you in advance.",
    " I'm a bit stuck.",
    " please keep it short.",
    "\n\nThanks",
    " Can you help?",
)
_LATEX = re.compile(r"\$|\\[a-zA-Z]+")
_LATEX_SUBS = (
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"(\1)/(\2)"),
    (re.compile(r"\\sqrt\s*\{([^{}]*)\}"), r"sqrt(\1)"),
    (re.compile(r"\\(?:cdot|times)"), "*"),
    (re.compile(r"\\(?:le|leq)\b"), "<="),
    (re.compile(r"\\(?:ge|geq)\b"), ">="),
    (re.compile(r"\\(?:left|right|displaystyle|,|!|;)"), ""),
    (re.compile(r"\\([a-zA-Z]+)"), r"\1"),
    (re.compile(r"[${}]"), ""),
)


def _plain_math(text: str) -> str:
    """``text`` with its LaTeX spelled the way people type maths in a chat box."""
    for pattern, repl in _LATEX_SUBS:
        text = pattern.sub(repl, text)
    return text


def augment(
    records: Sequence[LabelledQuery],
    rng: random.Random,
    filler: Sequence[str],
    code_pairs: Sequence[tuple[str, str]],
    code_label: str,
) -> list[LabelledQuery]:
    by_label: dict[str, list[str]] = defaultdict(list)
    for query, label in records:
        by_label[label].append(query)
    out: list[LabelledQuery] = []
    for query, label in records:
        roll = rng.random()
        if roll < 0.25 and filler:
            context = rng.choice(filler)
            out.append((f"{context}\n\n{query}" if rng.random() < 0.5 else f"{query}\n\n{context}", label))
        elif roll < 0.5:
            out.append((f"{query}\n{rng.choice(by_label[label])}", label))
        roll = rng.random()
        if roll < 0.05:
            out.append((query.upper(), label))
        elif roll < 0.15:
            out.append((query.lower(), label))
        elif roll < 0.2:
            out.append((query.capitalize(), label))
        if rng.random() < 0.2:
            out.append((rng.choice(_PREFIXES) + query + rng.choice(_SUFFIXES), label))
        if _LATEX.search(query) and rng.random() < 0.6:
            out.append((_plain_math(query), label))
    seen = {_NORM.sub("", q.lower()) for q, _ in records}
    for request, answer in code_pairs:
        if _NORM.sub("", request.lower()) in seen:
            continue
        roll = rng.random()
        if roll < 0.4:
            out.append((request, code_label))
        elif roll < 0.8:
            out.append((f"{request}\n\n```\n{answer}\n```", code_label))
        else:
            out.append((f"{answer}\n\n{request}", code_label))
    return out
