"""Domain text for the router from documentation installed on the machine (``--domain-docs``).

The router's training queries use a narrow vocabulary: its maths is word problems and competition
LaTeX, its code is short task titles. Real users ask about eigenvalues, derivatives, generators
and sockets. The prose of library documentation is real text written in those vocabularies, with
a label that comes from where it was written: SymPy's mathematical modules give ``math``, the
Python standard library gives ``code``. Only prose paragraphs are kept (no doctests, no
parameter tables), and both labels get the same number, so neither class grows in weight.

The harvest is deterministic for a given Python and SymPy version (both are recorded in the
model's metadata).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
import re
import sys
import warnings
from types import ModuleType

from forge_sdk.errors import ConfigurationError

__all__ = ["CODE_MODULES", "MATH_MODULES", "domain_docs", "domain_docs_versions"]

MATH_MODULES = tuple(
    "sympy." + name
    for name in (
        "calculus", "integrals", "series", "solvers", "matrices", "polys", "ntheory", "combinatorics",
        "geometry", "functions", "stats", "sets", "simplify", "discrete", "concrete", "vector",
    )
)  # fmt: skip
"""SymPy subpackages whose documentation is about mathematics (not printing or parsing)."""

CODE_MODULES = tuple(
    """os os.path json re collections itertools functools subprocess socket http urllib email xml
    csv datetime typing pathlib shutil logging argparse asyncio threading multiprocessing unittest
    sqlite3 tarfile zipfile io string textwrap pickle copy heapq bisect queue dataclasses enum
    contextlib inspect ast tokenize difflib html gzip hashlib hmac secrets tempfile glob fnmatch
    select selectors signal ssl uuid weakref abc operator pprint traceback warnings importlib
    configparser getpass platform locale gettext codecs struct array mmap ctypes""".split()
)
"""Standard-library modules about programming (the maths modules are left out on purpose)."""

_SKIP_SUBMODULE = re.compile(r"test|benchmark|__main__|idlelib|turtledemo")
_SECTION = ("Parameters", "Returns", "Examples", "See Also", "References", "Notes", "Raises", "Yields")
_PROSE = re.compile(r"[a-z]{3,} [a-z]{3,} [a-z]{3,}")


def _paragraphs(doc: str | None) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc or "")):
        para = para.strip()
        if not para or ">>>" in para or "====" in para or "----" in para:
            continue
        if para.startswith((":", "..", "=", "-", *_SECTION)):
            continue
        para = " ".join(para.split())
        if 40 <= len(para) <= 400 and _PROSE.search(para):
            out.append(para)
    return out


def _modules(names: tuple[str, ...]) -> list[ModuleType]:
    found: dict[str, ModuleType] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        found[module.__name__] = module
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), name + "."):
            if _SKIP_SUBMODULE.search(info.name):
                continue
            try:
                found[info.name] = importlib.import_module(info.name)
            except Exception:
                continue
    return [found[name] for name in sorted(found)]


def _harvest(names: tuple[str, ...], per_object: int = 6) -> list[str]:
    seen: set[str] = set()
    texts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in _modules(names):
            objects = [module] + [
                value
                for key, value in sorted(vars(module).items())
                if not key.startswith("_")
                and (inspect.isfunction(value) or inspect.isclass(value))
                and getattr(value, "__module__", "") == module.__name__
            ]
            for obj in objects:
                for para in _paragraphs(obj.__doc__)[:per_object]:
                    key = para.lower()
                    if key not in seen:
                        seen.add(key)
                        texts.append(para)
    return texts


def domain_docs_versions() -> dict[str, str]:
    """Versions the harvest depends on."""
    import sympy

    return {"python": sys.version.split()[0], "sympy": sympy.__version__}


def domain_docs(per_label: int, *, seed: int = 20240917) -> list[tuple[str, str]]:
    """``per_label`` math and ``per_label`` code paragraphs from installed documentation.

    Raises:
        ConfigurationError: SymPy is not installed (``pip install sympy``), or it has fewer
            paragraphs than asked for.
    """
    try:
        import sympy  # noqa: F401 - only checks that the maths source exists
    except ImportError as exc:
        raise ConfigurationError("--domain-docs needs sympy: pip install sympy") from exc
    math_texts, code_texts = _harvest(MATH_MODULES), _harvest(CODE_MODULES)
    if min(len(math_texts), len(code_texts)) < per_label:
        raise ConfigurationError(
            f"--domain-docs {per_label}: only {len(math_texts)} math and {len(code_texts)} code paragraphs found"
        )
    rng = random.Random(f"domain-docs:{seed}")
    return [(t, "math") for t in rng.sample(math_texts, per_label)] + [
        (t, "code") for t in rng.sample(code_texts, per_label)
    ]
