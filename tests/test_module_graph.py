"""The package's modules import each other without cycles (TYPE_CHECKING imports too).

A cycle (proxy ⇄ downstream once) forces import-order tricks and hides which module owns
a concept; the request record lives in ``exchange`` so the request path needs none.
"""

from __future__ import annotations

import ast
from pathlib import Path

import llm_router

_ROOT = Path(llm_router.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(_ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["llm_router", *parts])


def _imports(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if node.module is None:  # from . import a, b: each name is a module
                found.update(f"{mod}.{a.name}" for a in node.names)
            found.add(mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_package_has_no_import_cycles() -> None:
    modules = {_module_name(p): p for p in _ROOT.rglob("*.py")}
    graph = {name: {m for m in _imports(path, name) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ importing its own submodules is not a cycle worth refusing.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_downstream_does_not_reach_back_into_proxy() -> None:
    path = _ROOT / "gateway" / "downstream.py"
    assert "llm_router.gateway.proxy" not in _imports(path, "llm_router.gateway.downstream")
