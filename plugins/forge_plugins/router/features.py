"""Text features of the neural router: word and char n-grams plus code/math shape tokens.

One pure-Python featurizer serves both training and inference, so the shipped model needs no
sklearn at run time and cannot drift from what it was trained on. Features are chosen to survive a
change of style: everything is lower-cased (mixed case must not matter), digits collapse to ``0``
(numbers are signals, their values are not), and there is deliberately no length feature, because
in the training data length alone separates the classes and real traffic does not work that way.
Long inputs are cut to a head and a tail window, which keeps latency bounded and keeps the
question (usually at one end of pasted context) in view.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter

__all__ = ["HEAD_CHARS", "TAIL_CHARS", "clip", "extract"]

HEAD_CHARS = 1200
"""Characters kept from the start of a long query."""
TAIL_CHARS = 600
"""Characters kept from the end of a long query."""

_WORD = re.compile(r"[a-z_]+|0+|[^\sa-z0-9_]")
_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"[ \t]+")

# Shape tokens: cheap regexes for what code and maths look like, whatever the words around them.
_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("indent", re.compile(r"\n(?: {2,}|\t)\S")),
    ("fence", re.compile(r"```")),
    ("semicolon_eol", re.compile(r";[ \t]*(?:\n|$)")),
    ("brace_eol", re.compile(r"[{}][ \t]*(?:\n|$)")),
    ("call", re.compile(r"\b[A-Za-z_]\w*\([^()\n]{0,40}\)")),
    ("dotted", re.compile(r"\b[A-Za-z_]+\.[A-Za-z_]+\(")),
    ("assign", re.compile(r"\b[A-Za-z_]\w*\s*(?:=|\+=|-=|==|!=|<=|>=|=>|->)\s*\S")),
    ("snake_camel", re.compile(r"\b[a-z]+_[a-z_]+\b|\b[a-z]+[A-Z][a-z]+[A-Za-z]*\b")),
    (
        "keyword_def",
        re.compile(
            r"\b(?:def|return|import|elif|lambda|const|var|let|func|fn|void|public|static|#include|SELECT|FROM)\b"
        ),
    ),
    ("latex", re.compile(r"\\[a-zA-Z]+|\$[^$\n]{1,80}\$")),
    ("arith", re.compile(r"\d\s*[-+*/^\u00d7\u00f7=<>]\s*\(?\s*[\dA-Za-z]")),
    ("power", re.compile(r"\w\s?\^|[\u00b2\u00b3]")),
    ("money_pct", re.compile(r"\$\s?\d|\d\s?%")),
    ("variable_eq", re.compile(r"\b[a-z]\s*[=<>]\s*[-\d(a-z]")),
    ("question", re.compile(r"\?\s*$")),
    ("numbers3", re.compile(r"\d+\D+\d+\D+\d+")),
)


# Domain lexicons: which words belong to a field, written from general knowledge of the fields,
# not from any evaluation set. The training queries name a few languages and topics; a shared
# ``s:lex_*`` feature lets what the model learns from those carry over to the rest of the field
# ("kubectl", "flutter", "villanelle", "eigenvector" that no training query contains).
_LEXICONS: dict[str, str] = {
    word: kind
    for kind, words in (
        (
            "code",
            """python java javascript typescript golang kotlin swift ruby php perl scala haskell
            elixir erlang clojure lua dart matlab fortran cobol bash zsh powershell sql mysql
            postgres postgresql sqlite mongodb redis kafka rabbitmq elasticsearch react reactjs vue
            vuejs angular svelte nextjs nuxt jquery node nodejs npm yarn pip conda django flask
            fastapi rails laravel spring springboot express dotnet unity flutter android ios xcode
            gradle maven webpack vite babel eslint docker dockerfile kubernetes kubectl k8s helm
            terraform ansible jenkins git github gitlab aws azure gcp nginx apache linux ubuntu
            debian regex api apis json yaml xml html css tailwind bootstrap http https graphql grpc
            websocket oauth jwt cors ssl ssh tcp compiler runtime debugger stacktrace traceback
            exception segfault nullpointerexception pandas numpy scipy matplotlib pytorch
            tensorflow keras sklearn jupyter vscode vim emacs intellij repo commit deploy deployment
            backend frontend localhost endpoint database schema orm async await coroutine coroutines
            goroutine goroutines thread threads mutex closure callback promise lambda recursion
            pointer pointers struct enum inheritance polymorphism dependency dependencies library
            framework variable variables function functions method array arrays boolean dict
            hashmap bug debug refactor unittest pytest jest junit container containers pod pods
            microservice serverless firebase heroku vercel cron systemd virtualenv venv cli
            terminal sdk ide compile syntax programming coding developer software frontend typescript
            webassembly wasm cpp rustc cargo crate nginx env config localhost""",
        ),
        (
            "math",
            """equation equations integral integrals derivative derivatives probability permutation
            permutations combinations factorial eigenvalue eigenvalues eigenvector matrix matrices
            determinant vector vectors polynomial polynomials quadratic logarithm logarithms
            exponent exponents theorem prove proof lemma prime primes divisible divisor divisors gcd
            lcm modulo median variance deviation hypothesis distribution binomial poisson
            expectation limit converge converges convergent diverge series calculus algebra
            geometry trigonometry sine cosine tangent angle angles triangle hypotenuse radius
            diameter circumference area perimeter volume fraction fractions decimal percent
            percentage ratio proportion simplify differentiate integrate differentiable continuous
            inequality asymptote parabola ellipse hyperbola slope intercept arithmetic geometric
            compounded interest integer integers rational irrational real complex root roots
            solve solving sqrt infinity infinite sum product quotient remainder multiple
            multiples digit digits probability statistics statistical regression correlation""",
        ),
        (
            "writing",
            """poem poems poetry haiku sonnet limerick villanelle ode verse verses stanza rhyme
            rhyming lyrics song story stories novel novella chapter scene dialogue character
            characters plot essay essays letter letters email emails memo speech toast eulogy
            obituary tribute announcement blog article op-ed caption slogan tagline advertisement
            ad copywriting bio resume cv proposal screenplay monologue fairy tale fable narrative
            prose draft rewrite proofread edit paraphrase summarize summarise rephrase reword
            wordy grammar punctuation paragraph invitation apology greeting tweet headline
            storyline protagonist villain narrator fiction premise sentence""",
        ),
    )
    for word in words.split()
}


def clip(text: str) -> str:
    """The part of ``text`` the router reads: all of it, or a head and a tail window.

    Lone surrogates (JSON allows ``"\\ud800"``) become ``?``: the Rust tokenizer refuses them.
    """
    if len(text) > HEAD_CHARS + TAIL_CHARS:
        text = text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def extract(text: str) -> Counter[str]:
    """Raw feature counts of ``text`` (before tf-idf weighting).

    Keys are prefixed by kind: ``w:`` word, ``b:`` word bigram, ``c:`` char n-gram (3 to 5,
    inside word boundaries), ``s:`` shape token.
    """
    text = clip(text)
    feats: Counter[str] = Counter()
    for name, pattern in _SHAPES:
        hits = len(pattern.findall(text))
        if hits:
            feats["s:" + name] = hits
    lower = _DIGITS.sub("0", text.lower())
    words = _WORD.findall(lower)
    feats.update("w:" + w for w in words)
    feats.update("s:lex_" + kind for kind in map(_LEXICONS.get, words) if kind)
    feats.update("b:" + a + " " + b for a, b in itertools.pairwise(words))
    # Char n-grams per word, memoised across calls because queries share most of their words.
    grams: list[str] = []
    for word in _SPACE.sub(" ", lower).split():
        cached = _GRAMS.get(word)
        if cached is None:
            cached = _char_ngrams(word)
            if len(_GRAMS) >= _GRAMS_MAX:
                _GRAMS.clear()
            _GRAMS[word] = cached
        grams.extend(cached)
    feats.update(grams)  # Counter.update on a list counts in C
    return feats


_GRAMS: dict[str, tuple[str, ...]] = {}
_GRAMS_MAX = 100_000


def _char_ngrams(word: str) -> tuple[str, ...]:
    padded = f" {word} "
    n = len(padded)
    return tuple("c:" + padded[i : i + size] for size in (3, 4, 5) for i in range(n - size + 1))
