"""MkDocs hook: reference pages generated from the code at build time, so they cannot drift.

Two markers, each alone on a line of a page:

- ``<!-- forge-config MODULE:CLASS [env=PREFIX] [env-depth=N] [own] [level=N] -->`` renders a msgspec
  config Struct as tables: every field with its type (constraints included), default, environment
  variable and the docstring written under the field where it is defined. Nested Structs become
  sections of their own (``[engine]``, headings of ``level``, default 3). ``own`` keeps only the fields the class itself defines
  (a method's config beside the shared base). A field without a docstring is a build warning, so
  ``mkdocs build --strict`` fails on it.
- ``<!-- forge-http-routes -->`` renders the gateway's HTTP routes from its own Litestar app (built
  with an engine that is never started): method, path, who may call it, and the handler's docstring.

Anything that cannot be resolved (a moved module, a renamed class) raises, failing the build.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import logging
import re
import shlex
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

log = logging.getLogger("mkdocs.hooks.forge_reference")

_ROOT = Path(__file__).resolve().parents[2]
# Document this checkout's code, whichever copy of the packages the environment has installed.
for _pkg in ("sdk", "gateway", "plugins", "trainers"):
    if str(_ROOT / _pkg) not in sys.path:
        sys.path.insert(0, str(_ROOT / _pkg))

_CONFIG_MARK = re.compile(r"^<!-- forge-config (?P<args>[^>]*?) -->$", re.MULTILINE)
_HTTP_MARK = re.compile(r"^<!-- forge-http-routes -->$", re.MULTILINE)


# --- docstrings and types -------------------------------------------------------------------


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, msgspec.Struct) or klass.__module__ == "builtins":
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        for node, following in zip(body.body, [*body.body[1:], None], strict=True):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _own_fields(cls: type) -> set[str]:
    """Fields written in the body of ``cls`` itself (new or overridden there)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    return {n.target.id for n in body.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def _bounds(t: Any) -> str:
    marks = [("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥")]
    parts = [f"{sign} {getattr(t, attr)}" for attr, sign in marks if getattr(t, attr, None) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _type(t: Any) -> str:
    if isinstance(t, mi.UnionType):
        return " &#124; ".join(_type(x) for x in t.types)
    if isinstance(t, mi.LiteralType):
        return " &#124; ".join(_value(v) for v in t.values)
    if isinstance(t, mi.ListType):
        return f"list[{_type(t.item_type)}]"
    if isinstance(t, mi.DictType):
        return f"dict[{_type(t.key_type)}, {_type(t.value_type)}]"
    if isinstance(t, mi.StructType):
        return t.cls.__name__
    if isinstance(t, mi.NoneType):
        return "null"
    simple = {
        mi.IntType: "int",
        mi.FloatType: "float",
        mi.StrType: "str",
        mi.BoolType: "bool",
        mi.AnyType: "any",
    }
    for kind, name in simple.items():
        if isinstance(t, kind):
            return name + _bounds(t)
    raise TypeError(f"no rendering for msgspec type {t!r}")


def _value(v: Any) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def _default(f: mi.Field) -> str:
    if f.required:
        return "**required**"
    if f.default_factory is not msgspec.NODEFAULT:
        value = f.default_factory()
        return "—" if isinstance(value, msgspec.Struct) else _value(value)
    return _value(f.default)


def _prose(doc: str) -> str:
    """A docstring as one Markdown table cell: RST literals and roles to Markdown, one line."""
    doc = re.sub(r":(?:class|func|meth|mod|data|attr):`~?([^`]+)`", r"`\1`", doc)
    doc = doc.replace("``", "`")
    return " ".join(doc.split()).replace("|", "&#124;")


def _cell_code(text: str) -> str:
    return f"<code>{text}</code>"


# --- config tables --------------------------------------------------------------------------


def _resolve(target: str) -> type:
    module_name, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), name)
    if not (isinstance(cls, type) and issubclass(cls, msgspec.Struct)):
        raise TypeError(f"{target} is not a msgspec Struct")
    return cls


def _config_section(
    cls: type, path: list[str], *, env: str | None, env_depth: int, own: bool, where: str, level: int
) -> str:
    docs = _field_docs(cls)
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    keep = _own_fields(cls) if own else None
    rows, nested = [], []
    for f in info.fields:
        if keep is not None and f.name not in keep:
            continue
        inner = f.type
        if isinstance(inner, mi.StructType):
            nested.append((f.name, inner.cls))
            continue
        doc = docs.get(f.name)
        if not doc:
            log.warning("%s: field %s.%s has no docstring", where, cls.__name__, f.name)
            doc = ""
        key = ".".join([*path, f.encode_name])
        key_cell = f"`{key}`"
        if env and len(path) < env_depth:
            key_cell += f"<br><small>`{env}{'_'.join([*path, f.name]).upper()}`</small>"
        rows.append(f"| {key_cell} | {_cell_code(_type(inner))} | {_default(f)} | {_prose(doc)} |")
    out = []
    if rows:
        out += ["| Key | Type | Default | Description |", "|---|---|---|---|", *rows, ""]
    for name, sub in nested:
        heading = "#" * level + f" `[{'.'.join([*path, name])}]`"
        intro = _prose(inspect.cleandoc(sub.__doc__ or ""))
        out += [heading, "", intro, ""]
        out.append(
            _config_section(
                sub, [*path, name], env=env, env_depth=env_depth, own=False, where=where, level=level + 1
            )
        )
    return "\n".join(out)


def _render_config(args: str, where: str) -> str:
    words = shlex.split(args)
    target, options = words[0], words[1:]
    env: str | None = None
    env_depth, own, level = 99, False, 3
    for option in options:
        name, _, value = option.partition("=")
        if name == "env":
            env = value
        elif name == "env-depth":
            env_depth = int(value)
        elif name == "own":
            own = True
        elif name == "level":
            level = int(value)
        else:
            raise ValueError(f"{where}: unknown forge-config option {option!r}")
    cls = _resolve(target)
    return _config_section(cls, [], env=env, env_depth=env_depth, own=own, where=where, level=level)


# --- HTTP routes ----------------------------------------------------------------------------

_WHO = {"public": "anyone", "key": "API key", "admin": "admin key", "metrics": "admin key (or anyone)"}


def _render_routes(where: str) -> str:
    from forge_gateway.app import create_app
    from forge_gateway.config import GatewayConfig
    from forge_gateway.engines.transformers_engine import TransformersEngine

    # The app is only built to read its route table: the lifespan (engine start) never runs.
    # Litestar's deprecation notes on handler signatures are the gateway's business, not the docs'.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="litestar")
        app = create_app(GatewayConfig(model="unused"), engine=TransformersEngine("unused"))
    rows: list[tuple[str, str, str, str]] = []
    for route in app.routes:
        if route.path.startswith("/openapi/"):
            continue  # the schema's files and viewers, summarised by the /openapi row
        for handler in getattr(route, "route_handlers", []):
            methods = sorted(m for m in handler.http_methods if m not in {"OPTIONS", "HEAD"})
            if not methods:
                continue
            scope = handler.opt.get("forge_scope", "key")
            if scope not in _WHO:
                raise ValueError(f"{where}: route {route.path} has an unknown scope {scope!r}")
            path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
            doc = inspect.getdoc(handler.fn) or ""
            if route.path == "/openapi":
                doc = "The OpenAPI schema (`/openapi/openapi.json`, `.yaml`) and its viewers (`/openapi/swagger`, ...)."
            summary = _prose(doc.split("\n\n")[0])
            if not summary:
                log.warning("%s: handler of %s %s has no docstring", where, methods, path)
            who = _WHO[scope]
            if handler.opt.get("forge_generation"):
                who += ", generation"
            rows += [(m, path, who, summary) for m in methods]
    scopes = {(m, p): w for m, p, w, _ in rows}
    # Sanity checks on the reading itself: if the scope metadata moved, say so instead of
    # printing "API key" for every route.
    if not scopes.get(("GET", "/health"), "").startswith("anyone") or not scopes.get(
        ("POST", "/admin/keys"), ""
    ).startswith("admin"):
        raise ValueError(f"{where}: could not read route scopes (forge_scope opt) from the app")
    rows.sort(key=lambda row: row[1].startswith("/openapi"))  # the schema last, otherwise app order
    out = ["| Method | Path | Who may call it | What it does |", "|---|---|---|---|"]
    out += [f"| `{m}` | `{p}` | {w} | {s} |" for m, p, w, s in rows]
    return "\n".join(out) + "\n"


# --- MkDocs entry points --------------------------------------------------------------------

# The code's docstrings cross-reference Sphinx-style (:class:`X`); mkdocstrings renders the name
# as code and leaves the role's text in front of it.
_SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(?=<code>)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    where = page.file.src_uri
    markdown = _CONFIG_MARK.sub(lambda m: _render_config(m["args"], where), markdown)
    return _HTTP_MARK.sub(lambda m: _render_routes(where), markdown)


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _SPHINX_ROLE.sub("", html)
