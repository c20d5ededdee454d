"""Attack surface hygiene: ``gateway/forge_gateway`` has no import circle, and its layers hold.

Every import counts, including the ones inside functions and under ``TYPE_CHECKING``: a lazy
import that closes a loop is still two modules that cannot be understood (or changed) apart.
The layers: no route module imports another (what they share lives below them); the upstream
client does not import the web framework (it returns bytes, the API layer makes responses); the
run-time router imports neither torch nor its own training code.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "gateway"
PACKAGE = "forge_gateway"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                # ``from pkg import mod`` imports the submodule when there is one.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith(PACKAGE):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_graph_sees_the_package() -> None:
    graph = _graph()
    assert "forge_gateway.app" in graph and "forge_gateway.routing" in graph["forge_gateway.app"] | {
        dep for deps in graph.values() for dep in deps
    }


def test_gateway_has_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


_ROUTE_DECORATORS = frozenset({"get", "post", "put", "patch", "delete", "route"})


def _route_modules() -> set[str]:
    """Modules that define Litestar route handlers (``@get(...)``, ``@post(...)``, ...)."""
    found = set()
    for path in (ROOT / PACKAGE).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and any(
                isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id in _ROUTE_DECORATORS
                for d in node.decorator_list
            ):
                found.add(_module_name(path))
    return found


def test_no_route_module_imports_another() -> None:
    graph = _graph()
    routes = _route_modules()
    assert len(routes) >= 4, routes  # openai, sdd, admin, keys at least
    crossing = {name: sorted(graph[name] & routes) for name in routes if graph[name] & routes}
    assert crossing == {}


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: module level, not under
    ``if TYPE_CHECKING`` and not inside functions (lazy imports run only when called)."""
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return found


def _loaded_on_import(start: str) -> set[str]:
    """Every module name (ours and third-party top-level) importing ``start`` loads, transitively."""
    files = {_module_name(p): p for p in (ROOT / PACKAGE).rglob("*.py")}
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = files[name]
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                if not target.startswith(PACKAGE):
                    seen.add(target.partition(".")[0])
                    continue
                while target and target not in files:
                    target = target.rpartition(".")[0]
                # A package's __init__ runs first but is not what the module needs (the top
                # package re-exports the app): follow the modules themselves.
                if target and target != PACKAGE:
                    todo.append(target)
    return seen


def test_upstream_client_does_not_import_the_web_framework() -> None:
    upstream = [name for name in _graph() if name.startswith(f"{PACKAGE}.upstream")]
    assert upstream, "no upstream modules found"
    for name in upstream:
        assert "litestar" not in _loaded_on_import(name), name


def test_the_import_check_sees_the_web_framework() -> None:
    # The check above can fail: the app module does load Litestar.
    assert "litestar" in _loaded_on_import(f"{PACKAGE}.app")


def test_the_run_time_router_imports_neither_torch_nor_its_training_code() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, forge_plugins.router, forge_plugins.routing\n"
        "from forge_plugins.router import HybridClassifier\n"
        "from forge_sdk import DEFAULT_EXPERTS\n"
        "HybridClassifier(list(DEFAULT_EXPERTS)).classify('integrate x squared')\n"
        "heavy = ('torch', 'sklearn', 'transformers', 'trl', 'peft')\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "training = [m for m in sys.modules if m.startswith('forge_plugins.router.train.')"
        " and m != 'forge_plugins.router.train.methods']\n"
        "print(sorted(loaded + training))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
